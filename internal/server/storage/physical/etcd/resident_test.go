package etcd

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

func held(vs *values, key string, rev int64) bool {
	r, ok := vs.get(key)
	return ok && r.rev == rev
}

func TestValuesBound(t *testing.T) {
	vs := newValues(3 * (64 + 2 + 10))
	for i := range 5 {
		vs.put(&resident{key: fmt.Sprintf("k%d", i), rev: int64(i + 1), exists: true, value: make([]byte, 10)})
	}
	if vs.bytes > vs.max {
		t.Fatalf("holds %d bytes, over its bound of %d", vs.bytes, vs.max)
	}
	if _, ok := vs.get("k1"); ok {
		t.Fatal("k1, among the least recently used, is still held")
	}
	if !held(vs, "k4", 5) {
		t.Fatal("k4, the last put, is not held")
	}
	// k2 is used, so k3 is the next out.
	if !held(vs, "k2", 3) {
		t.Fatal("k2 is not held")
	}
	vs.put(&resident{key: "k5", rev: 6, exists: true, value: make([]byte, 10)})
	if _, ok := vs.get("k3"); ok {
		t.Fatal("k3 was used least recently but is still held")
	}
	if !held(vs, "k2", 3) {
		t.Fatal("k2, used recently, was pushed out")
	}
	vs.put(&resident{key: "huge", rev: 7, exists: true, value: make([]byte, vs.max)})
	if _, ok := vs.get("huge"); ok || vs.bytes > vs.max {
		t.Fatalf("a value larger than the bound is held (%d of %d bytes)", vs.bytes, vs.max)
	}
	for _, k := range []string{"k2", "k4", "k5"} {
		vs.drop(k)
	}
	if vs.bytes != 0 || vs.order.Len() != 0 || len(vs.byKey) != 0 {
		t.Fatalf("after dropping everything: %d bytes, %d in order, %d by key", vs.bytes, vs.order.Len(), len(vs.byKey))
	}
}

// An event older than what a read already holds is not applied: the read
// saw a later state.
func TestValuesObserveKeepsTheLater(t *testing.T) {
	vs := newValues(1 << 20)
	vs.observe(&resident{key: "k", rev: 12, exists: true, value: []byte("B")})
	vs.observe(&resident{key: "k", rev: 10, exists: true, value: []byte("A")})
	if r, _ := vs.get("k"); string(r.value) != "B" {
		t.Fatalf("an older event replaced a later read: %q", r.value)
	}
	// Absent at 20: a write at 15, and its delete, are older.
	vs.observe(&resident{key: "gone", rev: 20})
	vs.observe(&resident{key: "gone", rev: 15, exists: true, value: []byte("x")})
	if r, _ := vs.get("gone"); r.exists {
		t.Fatal("an older write replaced a later absence")
	}
	vs.observe(&resident{key: "gone", rev: 21, exists: true, value: []byte("y")})
	if r, _ := vs.get("gone"); !r.exists || string(r.value) != "y" {
		t.Fatal("a later write was not applied")
	}
}

// TestViewStartsEmpty checks that a process starting on a store lists
// nothing, reads what it is asked for from the cluster once and then from
// its view (an absent key too), follows other processes' writes, and
// forgets everything when it must follow again after a gap.
func TestViewStartsEmpty(t *testing.T) {
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
	reg := prometheus.NewRegistry()
	r := newBackendWith(t, c, Options{Prefix: w.Prefix(), Registerer: reg})
	reads := func(held, fetched float64) {
		t.Helper()
		if h, f := testutil.ToFloat64(r.metrics.held), testutil.ToFloat64(r.metrics.fetched); h != held || f != fetched {
			t.Fatalf("reads counted %v held and %v fetched, want %v and %v", h, f, held, fetched)
		}
	}
	var mu sync.Mutex
	var resets int
	r.Subscribe(func(ch physical.Change) {
		if ch.Reset {
			mu.Lock()
			resets++
			mu.Unlock()
		}
	})
	holds := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.vals.byKey)
	}
	if n := holds(); n != 0 {
		t.Fatalf("a fresh process holds %d keys; it should list nothing", n)
	}
	read := func(key, want string) {
		t.Helper()
		sctx, err := r.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v, err := r.Get(sctx, key)
		if want == "" {
			if err != physical.ErrNotFound {
				t.Fatalf("synced read of absent %s = %q, %v", key, v, err)
			}
			return
		}
		if err != nil || string(v) != want {
			t.Fatalf("synced read of %s = %q, %v; want %q", key, v, err, want)
		}
	}
	read("k03", "v03")
	read("k04", "v04")
	read("absent", "")
	if n := holds(); n != 3 {
		t.Fatalf("after reading three keys the view holds %d", n)
	}
	reads(0, 3)
	// Another process writes k03, deletes k04 and creates the absent key.
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k03", Value: []byte("new")}, {Key: "k04", Delete: true}, {Key: "absent", Value: []byte("here")}}); err != nil {
		t.Fatal(err)
	}
	read("k03", "new")
	read("k04", "")
	read("absent", "here")
	reads(3, 3) // the watch brought all three
	sctx, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	es, err := r.Scan(sctx, "k", "", 0)
	if err != nil || len(es) != 19 {
		t.Fatalf("synced scan: %d entries, %v; want 19", len(es), err)
	}
	for _, e := range es {
		want := "v" + e.Key[1:]
		if e.Key == "k03" {
			want = "new"
		}
		if string(e.Value) != want {
			t.Fatalf("synced scan: %s = %q, want %q", e.Key, e.Value, want)
		}
	}
	if _, err := r.restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n := holds(); n != 0 {
		t.Fatalf("after following again the view still holds %d keys", n)
	}
	read("k03", "new")
	reads(3, 4)
	if n, err := testutil.GatherAndCount(reg, "coffer_etcd_view_bytes"); err != nil || n != 1 {
		t.Fatalf("coffer_etcd_view_bytes: %d series, %v", n, err)
	}
	if _, err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if resets != 1 {
		t.Fatalf("subscribers heard %d resets, want 1", resets)
	}
}
