package object

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// manyVersions creates name in vault with n versions and soft-deletes it.
func manyVersions(t *testing.T, c *Collection[data], name string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, _, err := c.Create(ctx, "demo", name, set(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := c.Delete(ctx, "demo", name, time.Hour); err != nil {
		t.Fatal(err)
	}
}

// gone checks that nothing of name is left: no deleted record and no
// version, and that a new object of the name starts with one version.
func gone(t *testing.T, c *Collection[data], name string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := c.GetDeleted(ctx, "demo", name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetDeleted after purge = %v, want not found", err)
	}
	if left, err := c.st.Scan(ctx, c.versionPrefix("demo", name), "", 0); err != nil || len(left) != 0 {
		t.Fatalf("purge left %d versions (%v)", len(left), err)
	}
	if _, _, err := c.Create(ctx, "demo", name, set("fresh")); err != nil {
		t.Fatal(err)
	}
	if vers, _, _ := c.ListVersions(ctx, "demo", name, "", 25); len(vers) != 1 {
		t.Fatalf("a new %s lists %d versions, want 1", name, len(vers))
	}
}

// An object of more versions than one etcd transaction may delete (128
// operations by default) is purged on a real etcd member started with
// etcd's defaults.
func TestPurgeManyVersionsOnEtcd(t *testing.T) {
	ctx := context.Background()
	cl := etcdtest.Start(t, 1)
	eng, err := etcd.New(ctx, etcd.Options{Endpoints: cl.Endpoints(), Prefix: "/purge/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	b, err := barrier.Open(ctx, eng, rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	c := New[data](b, "secrets", nil)
	n := 2*etcd.DefaultMaxTxnOps + 30
	manyVersions(t, c, "big", n)
	// The purge as one batch is what etcd refuses.
	ch, err := c.StagePurge(ctx, "demo", "big")
	if err != nil {
		t.Fatal(err)
	}
	var tl *physical.TooLargeError
	if err := Apply(ctx, b, ch); !errors.As(err, &tl) {
		t.Fatalf("one batch of %d deletions = %v, want etcd's limit refused", len(ch.Ops), err)
	}
	if err := c.Purge(ctx, "demo", "big"); err != nil {
		t.Fatalf("Purge of %d versions on etcd: %v", n, err)
	}
	gone(t, c, "big")

	// Restores: of many versions, and of versions too large together
	// for one etcd request (1.5 MiB).
	for name, shape := range map[string]struct{ n, size int }{"many": {n, 10}, "wide": {70, 24 << 10}} {
		e := exported(t, c, name, shape.n, shape.size)
		ch, _, _, err := c.StageImport(ctx, "demo", e)
		if err != nil {
			t.Fatal(err)
		}
		if err := Apply(ctx, b, ch); !errors.As(err, &tl) {
			t.Fatalf("%s: one batch of %d writes = %v, want etcd's limit refused", name, len(ch.Ops), err)
		}
		if _, _, err := c.Import(ctx, "demo", e); err != nil {
			t.Fatalf("%s: Import of %d versions on etcd: %v", name, shape.n, err)
		}
		restored(t, c, e)
	}
}

// exported creates name with n versions of size bytes, exports it, and
// purges it, so that the export can be imported again.
func exported(t *testing.T, c *Collection[data], name string, n, size int) Export[data] {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		v := fmt.Sprintf("%d-%s", i, strings.Repeat("x", size))
		if _, _, err := c.Create(ctx, "demo", name, set(v)); err != nil {
			t.Fatal(err)
		}
	}
	e, err := c.Export(ctx, "demo", name)
	if err != nil || len(e.Versions) != n {
		t.Fatalf("Export of %s: %d versions, %v", name, len(e.Versions), err)
	}
	if _, _, err := c.Delete(ctx, "demo", name, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := c.Purge(ctx, "demo", name); err != nil {
		t.Fatal(err)
	}
	return e
}

// restored checks that e's object is live with every version.
func restored(t *testing.T, c *Collection[data], e Export[data]) {
	t.Helper()
	ctx := context.Background()
	name := e.Head.Name
	cur, h, err := c.Get(ctx, "demo", name, "")
	if err != nil || h.Current != e.Head.Current || h.Purging != "" || h.DeletedDate != 0 {
		t.Fatalf("%s after import: %+v, %v", name, h, err)
	}
	i := slices.IndexFunc(e.Versions, func(v Version[data]) bool { return v.ID == e.Head.Current })
	if i < 0 || cur.Data.Value != e.Versions[i].Data.Value || cur.ID != e.Head.Current {
		t.Fatalf("%s's current version is not the export's", name)
	}
	got := 0
	for after := ""; ; {
		vers, next, err := c.ListVersions(ctx, "demo", name, after, 25)
		if err != nil {
			t.Fatal(err)
		}
		got += len(vers)
		if next == "" {
			break
		}
		after = next
	}
	if got != len(e.Versions) {
		t.Fatalf("%s lists %d versions after import, want %d", name, got, len(e.Versions))
	}
	if _, _, err := c.GetDeleted(ctx, "demo", name); !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDeleted) {
		t.Fatalf("%s is still deleted after import: %v", name, err)
	}
}

// Limits of the wrapped stores below, as an etcd engine reports its own.
const testOps, testBytes = 100, 1 << 20

// failingStore fails every Apply after the first ok ones, as a purge cut
// off by a crash or an outage between two of its batches would; with only
// set, it fails that one Apply alone.
type failingStore struct {
	Store
	ok, n int
	only  bool
}

var errCut = errors.New("cut off")

func (f *failingStore) BatchLimits() (int, int, bool) { return testOps, testBytes, true }

func (f *failingStore) Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error {
	if f.n++; f.n > f.ok && (!f.only || f.n == f.ok+1) {
		return errCut
	}
	return f.Store.Apply(ctx, conds, ops)
}

func TestPurgeInBatchesResumes(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	b := c.st
	n := 3*testOps + 7
	manyVersions(t, c, "big", n)
	var largest int
	counting := &countingStore{Store: b, largest: &largest}
	// Cut off after the mark and one batch of deletions.
	cut := New[data](&failingStore{Store: counting, ok: 2}, "secrets", nil)
	if err := cut.Purge(ctx, "demo", "big"); !errors.Is(err, errCut) {
		t.Fatalf("cut-off Purge = %v", err)
	}
	h, cur, err := c.GetDeleted(ctx, "demo", "big")
	if err != nil || h.Purging == "" || cur.Data.Value != fmt.Sprint(n-1) {
		t.Fatalf("half-purged object: %+v %v, %v; want it Purging with its current version", h, cur.Data, err)
	}
	if left, _ := c.st.Scan(ctx, c.versionPrefix("demo", "big"), "", 0); len(left) != n-testOps {
		t.Fatalf("%d versions left after one batch, want %d", len(left), n-testOps)
	}
	_, _, err = c.Recover(ctx, "demo", "big")
	var oe *Error
	if !errors.Is(err, ErrDeleted) || !errors.As(err, &oe) || !strings.Contains(oe.Message, "Purge it again") {
		t.Fatalf("Recover of a half-purged object = %v, want refused naming the fix", err)
	}
	if err := New[data](counting, "secrets", nil).Purge(ctx, "demo", "big"); err != nil {
		t.Fatal(err)
	}
	if largest > testOps {
		t.Fatalf("a batch of %d operations, over testOps (%d)", largest, testOps)
	}
	gone(t, c, "big")
	// A purge of few versions is still one batch, and needs no mark.
	manyVersions(t, c, "small", 3)
	one := &failingStore{Store: b, ok: 1}
	if err := New[data](one, "secrets", nil).Purge(ctx, "demo", "small"); err != nil || one.n != 1 {
		t.Fatalf("Purge of 3 versions: %v after %d batches, want 1", err, one.n)
	}
	gone(t, c, "small")
}

func TestImportInBatchesCutOff(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	b := c.st
	e := exported(t, c, "big", 2*testOps+5, 10)
	// Cut off for good after the first batch: what was written is a
	// deleted object being purged, with its current version, which lists
	// and reads of deleted objects show, and which a purge removes.
	if _, _, err := New[data](&failingStore{Store: b, ok: 1}, "secrets", nil).Import(ctx, "demo", e); !errors.Is(err, errCut) {
		t.Fatalf("cut-off Import = %v", err)
	}
	if _, _, err := c.Get(ctx, "demo", "big", ""); !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDeleted) {
		t.Fatalf("a half-imported object reads as %v", err)
	}
	if items, _, err := c.ListDeleted(ctx, "demo", "", 25); err != nil || len(items) != 1 || items[0].Head.Purging == "" {
		t.Fatalf("ListDeleted with a half-imported object: %+v, %v", items, err)
	}
	if _, _, err := c.Import(ctx, "demo", e); !errors.Is(err, ErrExists) {
		t.Fatalf("Import over a half-imported object = %v, want ErrExists", err)
	}
	if err := c.Purge(ctx, "demo", "big"); err != nil {
		t.Fatal(err)
	}
	if left, _ := c.st.Scan(ctx, c.versionPrefix("demo", "big"), "", 0); len(left) != 0 {
		t.Fatalf("purge left %d versions of the half-imported object", len(left))
	}
	// One failed batch: the import removes what it wrote.
	if _, _, err := New[data](&failingStore{Store: b, ok: 2, only: true}, "secrets", nil).Import(ctx, "demo", e); !errors.Is(err, errCut) {
		t.Fatalf("Import with one failed batch = %v", err)
	}
	if _, _, err := c.GetDeleted(ctx, "demo", "big"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed import left its deleted record: %v", err)
	}
	if left, _ := c.st.Scan(ctx, c.versionPrefix("demo", "big"), "", 0); len(left) != 0 {
		t.Fatalf("a failed import left %d versions", len(left))
	}
	if _, _, err := c.Import(ctx, "demo", e); err != nil {
		t.Fatal(err)
	}
	restored(t, c, e)
}

// countingStore records the largest batch applied through it, and
// refuses one over its limits as the etcd engine does, counting the
// conditions, and a leader's fence, as operations. Before the Apply
// numbered at, it calls before.
type countingStore struct {
	Store
	largest *int
	n, at   int
	before  func()
}

func (s *countingStore) BatchLimits() (int, int, bool) { return testOps, testBytes, true }

func (s *countingStore) Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error {
	if s.n++; s.n == s.at && s.before != nil {
		s.before()
	}
	n := max(len(ops), len(conds)+1)
	if s.largest != nil {
		*s.largest = max(*s.largest, n)
	}
	if n > testOps || opBytes(ops) > testBytes {
		return &physical.TooLargeError{Ops: n, MaxOps: testOps, Bytes: opBytes(ops), MaxBytes: testBytes}
	}
	return s.Store.Apply(ctx, conds, ops)
}

// Imports at the edge of one batch: testOps-2 versions is the largest
// that fits (with its head, two conditions for the name and one a
// version, and the fence), and the one above it is written in batches.
func TestImportAtTheBatchLimit(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	b := c.st
	for _, n := range []int{testOps - 3, testOps - 2, testOps - 1, testOps, testOps + 1} {
		name := fmt.Sprintf("edge-%d", n)
		e := exported(t, c, name, n, 10)
		var largest int
		limited := New[data](&countingStore{Store: b, largest: &largest}, "secrets", nil)
		if _, _, err := limited.Import(ctx, "demo", e); err != nil {
			t.Fatalf("Import of %d versions: %v", n, err)
		}
		restored(t, c, e)
		if _, _, err := c.Delete(ctx, "demo", name, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := limited.Purge(ctx, "demo", name); err != nil {
			t.Fatalf("Purge of %d versions: %v", n, err)
		}
		gone(t, c, name)
		if largest > testOps {
			t.Fatalf("%d versions: a batch of %d operations", n, largest)
		}
	}
}

// A purge on another replica (a Collection of its own, whose lock this
// one does not share) in the middle of an import in batches takes the
// object over: the import fails, and nothing of it is left, neither the
// versions written before the purge nor after.
func TestPurgeDuringImportInBatches(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	b := c.st
	e := exported(t, c, "big", 2*testOps+5, 10)
	// The import's batches: 1 the record and the current version, 2 and
	// 3 the other versions, 4 the live head.
	for at := 2; at <= 4; at++ {
		other := New[data](&countingStore{Store: b}, "secrets", nil)
		var purged error
		st := &countingStore{Store: b, at: at, before: func() { purged = other.Purge(ctx, "demo", "big") }}
		_, _, err := New[data](st, "secrets", nil).Import(ctx, "demo", e)
		if purged != nil {
			t.Fatalf("purge before batch %d of the import: %v", at, purged)
		}
		if !errors.Is(err, ErrExists) {
			t.Fatalf("an import purged before its batch %d = %v, want it refused", at, err)
		}
		if !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("an import purged before its batch %d says %q; it should say it was interrupted, not that the name is in use", at, err)
		}
		gone(t, c, "big")
		if _, _, err := c.Delete(ctx, "demo", "big", time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := c.Purge(ctx, "demo", "big"); err != nil {
			t.Fatal(err)
		}
	}
}

// A purge on another replica whose batches interleave with an import's:
// the purge lists the versions, then the import writes more before the
// purge deletes them. The purge's claim must fail the import's later
// batches, or the import would go on and leave versions the purge never
// saw, or end live with some of its versions deleted.
func TestPurgeInterleavedWithImport(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	b := c.st
	e := exported(t, c, "big", 2*testOps+5, 10)
	scanned, resume := make(chan struct{}), make(chan struct{})
	purged := make(chan error, 1)
	// The purge's first Apply is its claim; before its second, the
	// versions are listed: it waits there for the import's next batch.
	other := New[data](&countingStore{Store: b, at: 2, before: func() {
		close(scanned)
		<-resume
	}}, "secrets", nil)
	st := &countingStore{Store: b, at: 2, before: func() {
		go func() { purged <- other.Purge(ctx, "demo", "big") }()
		select {
		case <-scanned:
		case <-time.After(time.Minute):
			t.Error("the purge did not reach its first deletion")
		}
	}}
	_, _, err := New[data](st, "secrets", nil).Import(ctx, "demo", e)
	close(resume)
	var perr error
	select {
	case perr = <-purged:
	case <-time.After(time.Minute):
		t.Fatal("the purge did not finish")
	}
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("an import whose object a purge claimed = %v, want it refused as interrupted", err)
	}
	if perr != nil && !errors.Is(perr, ErrNotFound) {
		t.Fatalf("the purge: %v", perr)
	}
	gone(t, c, "big")
}
