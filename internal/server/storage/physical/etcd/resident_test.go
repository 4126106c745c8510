package etcd

import (
	"context"
	"fmt"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

func TestValuesBound(t *testing.T) {
	vs := newValues(3 * (64 + 2 + 10))
	for i := range 5 {
		vs.put(fmt.Sprintf("k%d", i), int64(i+1), make([]byte, 10))
	}
	if vs.bytes > vs.max {
		t.Fatalf("holds %d bytes, over its bound of %d", vs.bytes, vs.max)
	}
	if _, ok := vs.get("k1", 2); ok {
		t.Fatal("k1, among the least recently used, is still held")
	}
	if _, ok := vs.get("k4", 5); !ok {
		t.Fatal("k4, the last put, is not held")
	}
	if _, ok := vs.get("k4", 4); ok {
		t.Fatal("k4 is answered at a revision it was not held at")
	}
	// k2 is used, so k3 is the next out.
	if _, ok := vs.get("k2", 3); !ok {
		t.Fatal("k2 is not held")
	}
	vs.put("k5", 6, make([]byte, 10))
	if _, ok := vs.get("k3", 4); ok {
		t.Fatal("k3 was used least recently but is still held")
	}
	if _, ok := vs.get("k2", 3); !ok {
		t.Fatal("k2, used recently, was pushed out")
	}
	vs.put("huge", 7, make([]byte, vs.max))
	if _, ok := vs.get("huge", 7); ok || vs.bytes > vs.max {
		t.Fatalf("a value larger than the bound is held (%d of %d bytes)", vs.bytes, vs.max)
	}
	vs.drop("k2")
	vs.drop("k4")
	vs.drop("k5")
	if vs.bytes != 0 || vs.order.Len() != 0 || len(vs.byKey) != 0 {
		t.Fatalf("after dropping everything: %d bytes, %d in order, %d by key", vs.bytes, vs.order.Len(), len(vs.byKey))
	}
}

// TestViewHoldsKeysNotValues checks that a process starting on a store
// lists keys only, reads a value from the cluster the first time it is
// asked for, and that a list again after a lost watch keeps the values of
// keys that did not change and drops the others.
func TestViewHoldsKeysNotValues(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	w := newBackend(t, c, "")
	var ops []physical.Op
	for i := range 20 {
		ops = append(ops, physical.Op{Key: fmt.Sprintf("k%02d", i), Value: []byte(fmt.Sprintf("v%02d", i))})
	}
	if err := w.Apply(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
	r := newBackendWith(t, c, Options{Prefix: w.Prefix()})
	held := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.vals.byKey)
	}
	if n := held(); n != 0 {
		t.Fatalf("a fresh process holds %d values; it should list keys only", n)
	}
	read := func(key, want string) {
		t.Helper()
		sctx, err := r.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := r.Get(sctx, key); err != nil || string(v) != want {
			t.Fatalf("synced read of %s = %q, %v; want %q", key, v, err, want)
		}
	}
	read("k03", "v03")
	read("k04", "v04")
	if n := held(); n != 2 {
		t.Fatalf("after reading two values the view holds %d", n)
	}
	// k04 changes and k05 is deleted; then r's view is set back to what
	// it held before, as if its watch had missed both events.
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k04", Value: []byte("new")}, {Key: "k05", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if err := r.waitView(ctx, mustRev(t, w)); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.view.ReplaceOrInsert(entry{key: "k04", rev: 1})
	r.vals.put("k04", 1, []byte("v04"))
	r.view.ReplaceOrInsert(entry{key: "k05", rev: 1})
	r.mu.Unlock()
	if _, err := r.relist(ctx); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	_, kept := r.vals.byKey["k03"]
	_, stale := r.vals.byKey["k04"]
	r.mu.Unlock()
	if !kept {
		t.Fatal("the list again dropped k03, which did not change")
	}
	if stale {
		t.Fatal("the list again kept k04's old value")
	}
	read("k04", "new")
	sctx, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(sctx, "k05"); err != physical.ErrNotFound {
		t.Fatalf("deleted k05 read as %v", err)
	}
	es, err := r.Scan(sctx, "k", "", 0)
	if err != nil || len(es) != 19 {
		t.Fatalf("synced scan: %d entries, %v; want 19", len(es), err)
	}
	for _, e := range es {
		want := "v" + e.Key[1:]
		if e.Key == "k04" {
			want = "new"
		}
		if string(e.Value) != want {
			t.Fatalf("synced scan: %s = %q, want %q", e.Key, e.Value, want)
		}
	}
}

func mustRev(t *testing.T, b *Backend) int64 {
	t.Helper()
	rev, err := b.currentRevision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}
