package transfer

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func TestCopy(t *testing.T) {
	en := newEngines(t)
	ctx := context.Background()

	// Every direction, etcd to etcd included (two prefixes of one cluster).
	t.Run("BetweenEngines", func(t *testing.T) {
		for _, from := range engineNames {
			for _, to := range engineNames {
				t.Run(from+"To"+to, func(t *testing.T) {
					src, dst := en.open(t, from), en.open(t, to)
					fill(t, src, rootkey.Generate(), 300, 100)
					rep, err := Copy(ctx, Store{B: src, Label: from + ":src"}, dst, CopyOptions{})
					if err != nil {
						t.Fatal(err)
					}
					if rep.Copied != 301 || rep.Replaced+rep.Removed+rep.Unchanged != 0 || rep.Resumed || rep.AlreadyDone {
						t.Fatalf("report %+v, want 301 entries copied (300 values and the keyring) into an empty target", rep)
					}
					if rep.Batches < 3 || !rep.Source.Same(rep.Target) || rep.Target.Entries != 301 || rep.Target.RootKeyID == "" {
						t.Fatalf("report %+v: want 3 or more batches and equal summaries with the root key id", rep)
					}
					sameEntries(t, src, dst)
					if err := RefuseUnfinished(ctx, dst); err != nil {
						t.Fatalf("the target is still marked after a finished copy: %v", err)
					}
					// A second run finds its work done.
					again, err := Copy(ctx, Store{B: src, Label: from + ":src"}, dst, CopyOptions{})
					if err != nil || !again.AlreadyDone || again.Batches != 0 {
						t.Fatalf("second run: %+v, %v; want AlreadyDone and nothing written", again, err)
					}
				})
			}
		}
	})

	// A copy stopped after any batch, run again (after the source changed,
	// in some cases), ends with the source's content exactly.
	t.Run("Resumes", func(t *testing.T) {
		// 400 values in batches of 50: the marker, 8 batches, the
		// keyring, the unmarking: 11 writes.
		const writes = 11
		type step struct {
			engine      string
			crashAfter  int
			changeFirst bool
		}
		var steps []step
		for n := range writes {
			steps = append(steps, step{"inmem", n, n%2 == 1})
		}
		for _, n := range []int{1, 4, 9, 10} {
			steps = append(steps, step{"bolt", n, n == 4}, step{"etcd", n, n == 9})
		}
		for _, s := range steps {
			t.Run(fmt.Sprintf("%sAfter%dWrites/changed=%v", s.engine, s.crashAfter, s.changeFirst), func(t *testing.T) {
				src, dst := inmem.New(), en.open(t, s.engine)
				br := fill(t, src, rootkey.Generate(), 400, 64)
				o := CopyOptions{MaxBatchOps: 50}
				_, err := Copy(ctx, Store{B: src, Label: "src"}, &crashAfter{Backend: dst, n: s.crashAfter}, o)
				if !errors.Is(err, errCrash) {
					t.Fatalf("interrupted copy: %v, want the crash", err)
				}
				var ue *UnfinishedError
				if err := RefuseUnfinished(ctx, dst); s.crashAfter > 0 && !errors.As(err, &ue) {
					t.Fatalf("after the crash, RefuseUnfinished = %v; want an *UnfinishedError (a server must not open this store)", err)
				}
				if _, err := dst.Get(ctx, barrier.KeyringKey); s.crashAfter < writes-1 && !errors.Is(err, physical.ErrNotFound) {
					t.Fatalf("after %d writes the target has a keyring (%v): it must come last, after every value", s.crashAfter, err)
				}
				if s.changeFirst {
					// The source changed between the runs: a value
					// replaced, one deleted, one added.
					if err := br.Apply(ctx, nil, []barrier.Op{
						{Key: "o/demo/secrets/v/s00000/x", Value: []byte("changed")},
						{Key: "o/demo/secrets/v/s00001/x", Delete: true},
						{Key: "o/demo/secrets/v/s00399/y", Value: []byte("added")},
					}); err != nil {
						t.Fatal(err)
					}
				}
				rep, err := Copy(ctx, Store{B: src, Label: "src"}, dst, o)
				if err != nil {
					t.Fatal(err)
				}
				if s.crashAfter > 0 && !rep.Resumed {
					t.Fatalf("report %+v: want Resumed", rep)
				}
				if s.changeFirst && s.crashAfter > 1 && rep.Replaced+rep.Removed == 0 {
					t.Fatalf("report %+v: the changed source should have replaced or removed entries already copied", rep)
				}
				sameEntries(t, src, dst)
				if err := RefuseUnfinished(ctx, dst); err != nil {
					t.Fatal(err)
				}
			})
		}
	})

	t.Run("Refuses", func(t *testing.T) {
		markedBy := func(source string) func(physical.Backend) {
			return func(b physical.Backend) {
				raw := fmt.Appendf(nil, `{"op":"migrate","source":%q,"started":"2026-01-02T03:04:05Z"}`, source)
				mustApply(t, b, physical.Op{Key: MarkerKey, Value: raw})
			}
		}
		for name, tc := range map[string]struct {
			engine   string
			src, dst func(physical.Backend)
			want     any   // a pointer to the error type expected
			wantIs   error // or the sentinel
		}{
			"aTargetThatHoldsAnotherStore": {
				engine: "etcd",
				dst:    func(b physical.Backend) { mustApply(t, b, physical.Op{Key: "vaults/other", Value: []byte("x")}) },
				want:   new(*NotEmptyError),
			},
			"aTargetMidwayThroughACopyFromElsewhere": {
				engine: "bolt",
				dst:    markedBy("bolt:/elsewhere/coffer.db"),
				want:   new(*OtherSourceError),
			},
			"aSourceThatIsItselfHalfCopied": {
				engine: "inmem",
				src:    markedBy("etcd:somewhere"),
				want:   new(*UnfinishedError),
			},
			"aTargetAServerUses": {
				engine: "etcd",
				dst: func(b physical.Backend) {
					// A real election, as a server's purge job holds.
					lctx, cancel := context.WithCancel(ctx)
					t.Cleanup(cancel)
					if _, err := b.(*etcd.Backend).Lead(lctx, "purge"); err != nil {
						t.Fatal(err)
					}
				},
				want: new(*InUseError),
			},
		} {
			t.Run(name, func(t *testing.T) {
				src, dst := en.open(t, "inmem"), en.open(t, tc.engine)
				fill(t, src, rootkey.Generate(), 10, 10)
				if tc.src != nil {
					tc.src(src)
				}
				if tc.dst != nil {
					tc.dst(dst)
				}
				before := entries(t, dst)
				_, err := Copy(ctx, Store{B: src, Label: "src"}, dst, CopyOptions{})
				if err == nil || !errors.As(err, tc.want) {
					t.Fatalf("Copy = %v, want a %T", err, tc.want)
				}
				t.Log(err)
				if after := entries(t, dst); len(after) != len(before) {
					t.Fatalf("the refused copy wrote to the target: %d entries before, %d after", len(before), len(after))
				}
			})
		}
		for name, tc := range map[string]struct {
			fill func(physical.Backend)
			want error
		}{
			"anEmptySource":         {func(physical.Backend) {}, ErrEmptySource},
			"aSourceWithoutKeyring": {func(b physical.Backend) { mustApply(t, b, physical.Op{Key: "vaults/demo", Value: []byte("x")}) }, ErrNoKeyring},
		} {
			t.Run(name, func(t *testing.T) {
				src, dst := inmem.New(), inmem.New()
				tc.fill(src)
				if _, err := Copy(ctx, Store{B: src, Label: "src"}, dst, CopyOptions{}); !errors.Is(err, tc.want) {
					t.Fatalf("Copy = %v, want %v", err, tc.want)
				}
				if n := len(entries(t, dst)); n != 0 {
					t.Fatalf("the refused copy wrote %d entries", n)
				}
			})
		}
	})

	// etcd takes at most 128 writes and 1.5 MiB in one transaction: large
	// values are split by size, small ones by count.
	t.Run("BatchesWithinEtcdLimits", func(t *testing.T) {
		src := inmem.New()
		br := fill(t, src, rootkey.Generate(), 200, 20<<10)
		for i := range 5 {
			var ops []barrier.Op
			for j := range 120 {
				ops = append(ops, barrier.Op{Key: fmt.Sprintf("rbac/t/%d-%d", i, j), Value: []byte("small")})
			}
			if err := br.Apply(ctx, nil, ops); err != nil {
				t.Fatal(err)
			}
		}
		dst := &recorder{Backend: en.open(t, "etcd")}
		rep, err := Copy(ctx, Store{B: src, Label: "src"}, dst, CopyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range dst.ops {
			if dst.ops[i] > etcd.DefaultMaxTxnOps || dst.bytes[i] > etcd.DefaultMaxRequestBytes {
				t.Fatalf("batch %d wrote %d keys, %d bytes: over etcd's limits", i, dst.ops[i], dst.bytes[i])
			}
		}
		if rep.Target.Entries != 801 || rep.Batches < 9 {
			t.Fatalf("report %+v: want 801 entries in 9 or more batches (4 MiB of large values, 600 small ones)", rep)
		}
		t.Logf("%d entries, %s, in %d batches", rep.Target.Entries, size(rep.Target.Bytes), rep.Batches)
	})

	t.Run("NamesAnEntryTooLargeForEtcd", func(t *testing.T) {
		src := inmem.New()
		br := fill(t, src, rootkey.Generate(), 3, 10)
		if err := br.Apply(ctx, nil, []barrier.Op{{Key: "o/demo/secrets/v/huge/x", Value: make([]byte, 2<<20)}}); err != nil {
			t.Fatal(err)
		}
		_, err := Copy(ctx, Store{B: src, Label: "src"}, en.open(t, "etcd"), CopyOptions{})
		var tl *EntryTooLargeError
		if !errors.As(err, &tl) || tl.Key != "o/demo/secrets/v/huge/x" {
			t.Fatalf("Copy = %v, want an *EntryTooLargeError naming the key", err)
		}
		t.Log(err)
	})

	// A writer on the target during the copy (a server started too early)
	// stops it: no write of the copy replaces one it did not read.
	t.Run("StopsWhenTheTargetChangesUnderIt", func(t *testing.T) {
		src := inmem.New()
		fill(t, src, rootkey.Generate(), 300, 10)
		dst := &intruder{Backend: en.open(t, "etcd"), at: 2, key: "o/demo/secrets/v/s00299/x"}
		_, err := Copy(ctx, Store{B: src, Label: "src"}, dst, CopyOptions{MaxBatchOps: 50})
		var ce *ChangedError
		if !errors.As(err, &ce) || ce.Key != dst.key {
			t.Fatalf("Copy = %v, want a *ChangedError at %s", err, dst.key)
		}
		if got, _ := dst.Get(ctx, dst.key); string(got) != "the intruder's" {
			t.Fatalf("the intruder's write was replaced with %q", got)
		}
	})
}

// intruder is a real engine that another process also writes: after the
// copy's at-th batch, it writes key.
type intruder struct {
	physical.Backend
	at, n int
	key   string
}

func (w *intruder) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	if err := w.Backend.Apply(ctx, conds, ops); err != nil {
		return err
	}
	if w.n++; w.n == w.at {
		return w.Backend.Apply(ctx, nil, []physical.Op{{Key: w.key, Value: []byte("the intruder's")}})
	}
	return nil
}

func mustApply(t *testing.T, b physical.Backend, ops ...physical.Op) {
	t.Helper()
	if err := b.Apply(context.Background(), nil, ops); err != nil {
		t.Fatal(err)
	}
}

// The marker is under the barrier's reserved prefix: no component above
// the barrier can write it, or see it in a scan.
func TestMarkerIsOutOfTheBarriersReach(t *testing.T) {
	ctx := context.Background()
	br := fill(t, inmem.New(), rootkey.Generate(), 1, 1)
	if err := br.Apply(ctx, nil, []barrier.Op{{Key: MarkerKey, Value: []byte("x")}}); !errors.Is(err, barrier.ErrReservedPath) {
		t.Fatalf("a barrier write to %s = %v, want ErrReservedPath", MarkerKey, err)
	}
}
