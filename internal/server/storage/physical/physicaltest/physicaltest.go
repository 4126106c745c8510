// Package physicaltest is the one behavioural test suite that every storage
// engine must pass.
package physicaltest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// Exercise runs the shared suite against a fresh backend from newBackend.
func Exercise(t *testing.T, newBackend func(t *testing.T) physical.Backend) {
	t.Run("GetMissing", func(t *testing.T) {
		b := newBackend(t)
		if _, err := b.Get(context.Background(), "nope"); !errors.Is(err, physical.ErrNotFound) {
			t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
		}
	})
	t.Run("PutGetDelete", func(t *testing.T) {
		b := newBackend(t)
		ctx := context.Background()
		mustApply(t, b, nil, []physical.Op{{Key: "a", Value: []byte("1")}})
		got, err := b.Get(ctx, "a")
		if err != nil || string(got) != "1" {
			t.Fatalf("Get(a) = %q, %v; want 1", got, err)
		}
		got[0] = 'x' // the caller owns the slice; the store must not change
		if again, _ := b.Get(ctx, "a"); string(again) != "1" {
			t.Fatalf("stored value changed through a returned slice: %q", again)
		}
		mustApply(t, b, nil, []physical.Op{{Key: "a", Delete: true}})
		if _, err := b.Get(ctx, "a"); !errors.Is(err, physical.ErrNotFound) {
			t.Fatalf("Get after delete = %v, want ErrNotFound", err)
		}
	})
	t.Run("Holds", func(t *testing.T) {
		b := newBackend(t)
		ctx := context.Background()
		holds := func(key, value string) bool {
			t.Helper()
			ctx := ctx
			if sh, ok := b.(physical.Shared); ok {
				// A shared engine compares synced reads in its own view.
				var err error
				if ctx, err = sh.Sync(ctx); err != nil {
					t.Fatalf("Sync: %v", err)
				}
			}
			ok, err := physical.Holds(ctx, b, key, []byte(value))
			if err != nil {
				t.Fatalf("Holds(%s, %q): %v", key, value, err)
			}
			return ok
		}
		if holds("h", "") || holds("h", "1") {
			t.Fatal("Holds is true for a key that holds nothing")
		}
		mustApply(t, b, nil, []physical.Op{{Key: "h", Value: []byte("1")}})
		b.Get(ctx, "h") // an engine that keeps hot reads now holds it
		holds("h", "1") // and a shared one, in its view, after this
		if !holds("h", "1") || holds("h", "2") || holds("h", "11") || holds("h", "") {
			t.Fatal("Holds disagrees with the value stored")
		}
		mustApply(t, b, nil, []physical.Op{{Key: "h", Value: []byte("2")}})
		if holds("h", "1") || !holds("h", "2") {
			t.Fatal("Holds still matches the value a write replaced")
		}
		mustApply(t, b, nil, []physical.Op{{Key: "h", Delete: true}})
		if holds("h", "2") {
			t.Fatal("Holds matches a deleted key")
		}
	})
	t.Run("EmptyKeyRejected", func(t *testing.T) {
		b := newBackend(t)
		if err := b.Apply(context.Background(), nil, []physical.Op{{Key: "", Value: []byte("x")}}); err == nil {
			t.Fatal("Apply with an empty key succeeded")
		}
	})
	t.Run("ScanPrefixAfterLimit", func(t *testing.T) {
		b := newBackend(t)
		ctx := context.Background()
		var ops []physical.Op
		for _, k := range []string{"p/c", "p/a", "p/b", "q/a", "o/z", "p/d"} {
			ops = append(ops, physical.Op{Key: k, Value: []byte("v" + k)})
		}
		mustApply(t, b, nil, ops)
		all, err := b.Scan(ctx, "p/", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := keys(all); fmt.Sprint(got) != "[p/a p/b p/c p/d]" {
			t.Fatalf("Scan(p/) = %v", got)
		}
		if string(all[0].Value) != "vp/a" {
			t.Fatalf("Scan value = %q", all[0].Value)
		}
		page, err := b.Scan(ctx, "p/", "p/a", 2)
		if err != nil {
			t.Fatal(err)
		}
		if got := keys(page); fmt.Sprint(got) != "[p/b p/c]" {
			t.Fatalf("Scan(p/, after p/a, 2) = %v", got)
		}
		rest, _ := b.Scan(ctx, "p/", "p/c", 10)
		if got := keys(rest); fmt.Sprint(got) != "[p/d]" {
			t.Fatalf("Scan(p/, after p/c) = %v", got)
		}
		none, _ := b.Scan(ctx, "r/", "", 10)
		if len(none) != 0 {
			t.Fatalf("Scan(r/) = %v, want nothing", keys(none))
		}
	})
	t.Run("AtomicBatchWithConditions", func(t *testing.T) {
		b := newBackend(t)
		ctx := context.Background()
		mustApply(t, b, []physical.Cond{{Key: "k"}}, []physical.Op{{Key: "k", Value: []byte("1")}, {Key: "j", Value: []byte("x")}})
		// Absent-condition on an existing key fails, and nothing in the batch is written.
		err := b.Apply(ctx, []physical.Cond{{Key: "k"}}, []physical.Op{{Key: "k", Value: []byte("2")}, {Key: "m", Value: []byte("y")}})
		if !errors.Is(err, physical.ErrConflict) {
			t.Fatalf("Apply with a false condition = %v, want ErrConflict", err)
		}
		var ce *physical.ConflictError
		if !errors.As(err, &ce) || ce.Key != "k" {
			t.Fatalf("conflict error %v does not name key k", err)
		}
		if _, err := b.Get(ctx, "m"); !errors.Is(err, physical.ErrNotFound) {
			t.Fatal("a failed batch wrote part of its ops")
		}
		// Value-condition: wrong value fails, right value commits.
		if err := b.Apply(ctx, []physical.Cond{{Key: "k", Value: []byte("0")}}, []physical.Op{{Key: "k", Value: []byte("2")}}); !errors.Is(err, physical.ErrConflict) {
			t.Fatalf("Apply with a stale value = %v, want ErrConflict", err)
		}
		mustApply(t, b, []physical.Cond{{Key: "k", Value: []byte("1")}}, []physical.Op{{Key: "k", Value: []byte("2")}})
		if got, _ := b.Get(ctx, "k"); string(got) != "2" {
			t.Fatalf("k = %q after a passing condition, want 2", got)
		}
	})
	t.Run("ConcurrentCompareAndSwap", func(t *testing.T) {
		// Many writers increment one counter with compare-and-swap; every
		// successful swap must count exactly once.
		b := newBackend(t)
		ctx := context.Background()
		mustApply(t, b, nil, []physical.Op{{Key: "n", Value: []byte("0")}})
		const workers, each = 8, 25
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; {
					cur, err := b.Get(ctx, "n")
					if err != nil {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscan(string(cur), &n)
					err = b.Apply(ctx, []physical.Cond{{Key: "n", Value: cur}}, []physical.Op{{Key: "n", Value: fmt.Appendf(nil, "%d", n+1)}})
					if errors.Is(err, physical.ErrConflict) {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					i++
				}
			}()
		}
		wg.Wait()
		if got, _ := b.Get(ctx, "n"); string(got) != fmt.Sprint(workers*each) {
			t.Fatalf("counter = %s, want %d", got, workers*each)
		}
	})
	t.Run("LinearizableCompareAndSwap", func(t *testing.T) {
		linearizableCAS(t, newBackend(t))
	})
	t.Run("WalkAtOnePointInTime", func(t *testing.T) {
		walkAtOnePointInTime(t, newBackend(t))
	})
	t.Run("Closed", func(t *testing.T) {
		b := newBackend(t)
		b.Close()
		if _, err := b.Get(context.Background(), "a"); !errors.Is(err, physical.ErrClosed) {
			t.Fatalf("Get after Close = %v, want ErrClosed", err)
		}
	})
}

func mustApply(t *testing.T, b physical.Backend, conds []physical.Cond, ops []physical.Op) {
	t.Helper()
	if err := b.Apply(context.Background(), conds, ops); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func keys(es []physical.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Key
	}
	return out
}

// casInput is one operation on a register: a read, or a compare-and-swap
// from old to new.
type casInput struct {
	cas      bool
	old, new string
}

// casOutput is what it returned: the value read, or whether the swap took.
type casOutput struct {
	value string
	ok    bool
}

// casModel is a register read and written by compare-and-swap.
var casModel = porcupine.Model{
	Init: func() any { return "0" },
	Step: func(state, in, out any) (bool, any) {
		st, i, o := state.(string), in.(casInput), out.(casOutput)
		if !i.cas {
			return o.value == st, st
		}
		if st == i.old {
			return o.ok, i.new
		}
		return !o.ok, st
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(casInput), out.(casOutput)
		if !i.cas {
			return "read() -> " + o.value
		}
		return fmt.Sprintf("cas(%s, %s) -> %v", i.old, i.new, o.ok)
	},
}

// linearizableCAS has several clients read a register and swap it from
// what they read, concurrently, records every call and return, and checks
// the history with porcupine, the checker etcd's robustness tests use.
func linearizableCAS(t *testing.T, b physical.Backend) {
	ctx := context.Background()
	mustApply(t, b, nil, []physical.Op{{Key: "reg", Value: []byte("0")}})
	const clients, each = 6, 40
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var mu sync.Mutex
	var history []porcupine.Operation
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := "0"
			for i := range each {
				var op porcupine.Operation
				op.ClientId = c
				if i%2 == 0 {
					op.Input, op.Call = casInput{}, now()
					v, err := b.Get(ctx, "reg")
					op.Return = now()
					if err != nil {
						t.Error(err)
						return
					}
					last = string(v)
					op.Output = casOutput{value: last}
				} else {
					next := fmt.Sprintf("%d.%d", c, i)
					op.Input, op.Call = casInput{cas: true, old: last, new: next}, now()
					err := b.Apply(ctx, []physical.Cond{{Key: "reg", Value: []byte(last)}}, []physical.Op{{Key: "reg", Value: []byte(next)}})
					op.Return = now()
					if err != nil && !errors.Is(err, physical.ErrConflict) {
						t.Error(err)
						return
					}
					op.Output = casOutput{ok: err == nil}
				}
				mu.Lock()
				history = append(history, op)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	swaps := 0
	for _, op := range history {
		if op.Output.(casOutput).ok {
			swaps++
		}
	}
	if swaps == 0 {
		t.Fatal("no swap succeeded: the history tests nothing")
	}
	if res := porcupine.CheckOperationsTimeout(casModel, history, time.Minute); res != porcupine.Ok {
		t.Fatalf("the history of %d operations (%d swaps) is %s, not linearizable", len(history), swaps, res)
	}
}
