package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

var prefixes atomic.Int64

// newBackend opens an engine on its own prefix of c, so that tests sharing
// one cluster never see each other's keys.
func newBackend(t *testing.T, c *etcdtest.Cluster, prefix string) *Backend {
	t.Helper()
	return newBackendWith(t, c, Options{Prefix: prefix})
}

// newBackendWith opens an engine with o on c, on its own prefix unless o
// names one.
func newBackendWith(t *testing.T, c *etcdtest.Cluster, o Options) *Backend {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("/test/%s/%d/", t.Name(), prefixes.Add(1))
	}
	o.Endpoints = c.Endpoints()
	b, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestBackend(t *testing.T) {
	c := etcdtest.Start(t, 1)
	physicaltest.Exercise(t, func(t *testing.T) physical.Backend { return newBackend(t, c, "") })
	// The same suite with every read from the local view, after a Sync.
	t.Run("Synced", func(t *testing.T) {
		physicaltest.Exercise(t, func(t *testing.T) physical.Backend { return syncedReads{newBackend(t, c, "")} })
	})
	// Again with a view that holds no value, so that every synced read
	// goes to the cluster, and with one that holds a few, so that values
	// are pushed out as others are read and written.
	for _, n := range []int{1, 400} {
		t.Run(fmt.Sprintf("SyncedViewBytes=%d", n), func(t *testing.T) {
			physicaltest.Exercise(t, func(t *testing.T) physical.Backend {
				return syncedReads{newBackendWith(t, c, Options{ViewBytes: n})}
			})
		})
	}
}

// syncedReads reads through Sync, as a request does.
type syncedReads struct{ *Backend }

func (s syncedReads) Get(ctx context.Context, key string) ([]byte, error) {
	ctx, err := s.Sync(ctx)
	if err != nil {
		return nil, err
	}
	return s.Backend.Get(ctx, key)
}

func (s syncedReads) Scan(ctx context.Context, prefix, after string, limit int) ([]physical.Entry, error) {
	ctx, err := s.Sync(ctx)
	if err != nil {
		return nil, err
	}
	return s.Backend.Scan(ctx, prefix, after, limit)
}

// TestReplicas checks what several processes on one prefix see of each
// other: a write acknowledged by one is read by the next synced read of
// the other, and every subscriber hears of it in commit order.
func TestReplicas(t *testing.T) {
	c := etcdtest.Start(t, 1)
	// The reader holds every value, then none: each synced read then
	// goes to the cluster.
	for i, n := range []int{0, 1} {
		t.Run(fmt.Sprintf("ViewBytes=%d", n), func(t *testing.T) {
			prefix := fmt.Sprintf("/replicas-%d/", i)
			testReplicas(t, newBackend(t, c, prefix), newBackendWith(t, c, Options{Prefix: prefix, ViewBytes: n}),
				newBackend(t, c, fmt.Sprintf("/other-installation-%d/", i)))
		})
	}
}

func testReplicas(t *testing.T, a, b, other *Backend) {
	var mu sync.Mutex
	var heard []string
	b.Subscribe(func(ch physical.Change) {
		mu.Lock()
		heard = append(heard, ch.Keys...)
		mu.Unlock()
	})
	ctx := context.Background()
	for i := range 50 {
		key := fmt.Sprintf("k%02d", i)
		if err := a.Apply(ctx, nil, []physical.Op{{Key: key, Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
		// Another installation's write moves the revision, with no event
		// on this prefix: Sync must still return.
		if err := other.Apply(ctx, nil, []physical.Op{{Key: key, Value: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
		sctx, err := b.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := b.Get(sctx, key); err != nil || string(v) != "v" {
			t.Fatalf("replica b read %s = %q, %v after a's write was acknowledged", key, v, err)
		}
		mu.Lock()
		n := len(heard)
		mu.Unlock()
		if n != i+1 {
			t.Fatalf("after Sync, b's subscriber heard %d changes, want %d", n, i+1)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, k := range heard {
		if k != fmt.Sprintf("k%02d", i) {
			t.Fatalf("changes out of order: %v", heard)
		}
	}
	if keys, _ := other.Scan(ctx, "", "", 0); len(keys) != 50 {
		t.Fatalf("the other installation's prefix holds %d keys, want 50", len(keys))
	}
}

// TestBatchLimits checks that a batch over etcd's limits is refused here,
// naming the limit, and that a certificate's batch fits.
func TestBatchLimits(t *testing.T) {
	c := etcdtest.Start(t, 1)
	b := newBackend(t, c, "")
	ctx := context.Background()
	big := make([]byte, DefaultMaxRequestBytes)
	err := b.Apply(ctx, nil, []physical.Op{{Key: "big", Value: big}})
	var tl *physical.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(err.Error(), fmt.Sprint(DefaultMaxRequestBytes)) {
		t.Fatalf("an oversized batch: %v, want a TooLargeError naming the limit", err)
	}
	var many []physical.Op
	for i := range DefaultMaxTxnOps + 1 {
		many = append(many, physical.Op{Key: fmt.Sprint(i), Value: []byte("v")})
	}
	if err := b.Apply(ctx, nil, many); !errors.As(err, &tl) || !strings.Contains(err.Error(), fmt.Sprint(DefaultMaxTxnOps)) {
		t.Fatalf("a batch of too many keys: %v, want a TooLargeError naming the limit", err)
	}
	// etcd counts a transaction's comparisons against the same limit.
	var conds []physical.Cond
	for i := range DefaultMaxTxnOps + 1 {
		conds = append(conds, physical.Cond{Key: fmt.Sprint("absent-", i)})
	}
	if err := b.Apply(ctx, conds, many[:1]); !errors.As(err, &tl) || !strings.Contains(err.Error(), "conditions") {
		t.Fatalf("a batch of too many conditions: %v, want a TooLargeError naming them", err)
	}
	// A certificate version writes the certificate, its managed key and
	// its managed secret (a PFX with a chain) with their heads: well
	// under the limit, even with large values.
	var cert []physical.Op
	for _, k := range []string{"cert/v", "cert/head", "key/v", "key/head", "secret/v", "secret/head"} {
		cert = append(cert, physical.Op{Key: k, Value: make([]byte, 64<<10)})
	}
	if err := b.Apply(ctx, nil, cert); err != nil {
		t.Fatalf("a certificate-sized batch: %v", err)
	}
}

// TestLeadFences checks that leadership moves when the leader's lease ends
// and that the old leader's fenced writes then fail.
func TestLeadFences(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := newBackend(t, c, "/lead/"), newBackend(t, c, "/lead/")
	ctx := context.Background()
	actx, err := a.Lead(ctx, "purge")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(actx, nil, []physical.Op{{Key: "job", Value: []byte("a")}}); err != nil {
		t.Fatalf("the leader's fenced write: %v", err)
	}
	won := make(chan context.Context, 1)
	go func() {
		bctx, err := b.Lead(ctx, "purge")
		if err != nil {
			t.Error(err)
		}
		won <- bctx
	}()
	select {
	case <-won:
		t.Fatal("two processes lead at once")
	case <-time.After(200 * time.Millisecond):
	}
	// The leader's lease is revoked behind its back, as when it is paused
	// past its TTL: its fenced writes must fail from then on.
	if _, err := a.Client().Revoke(ctx, leaseOf(t, a, "purge")); err != nil {
		t.Fatal(err)
	}
	var bctx context.Context
	select {
	case bctx = <-won:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not take over")
	}
	if err := a.Apply(actx, nil, []physical.Op{{Key: "job", Value: []byte("stale")}}); !errors.Is(err, physical.ErrConflict) {
		t.Fatalf("the old leader's fenced write: %v, want ErrConflict", err)
	}
	if err := b.Apply(bctx, nil, []physical.Op{{Key: "job", Value: []byte("b")}}); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	if v, _ := b.Get(ctx, "job"); string(v) != "b" {
		t.Fatalf("job = %q", v)
	}
}

// leaseOf finds the lease of the election key a holds for job.
func leaseOf(t *testing.T, a *Backend, job string) clientv3.LeaseID {
	t.Helper()
	resp, err := a.Client().Get(context.Background(), a.Prefix()+"leader/"+job+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no election key: %v", err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// A process that gives up a job and closes at once (operator init, a
// server shutting down) hands the job over then, not when its lease runs
// out: Close waits for the resignation.
func TestCloseHandsOverEndedLeaderships(t *testing.T) {
	c := etcdtest.Start(t, 1)
	for i := range 3 {
		a := newBackend(t, c, "/handover/")
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := a.Lead(ctx, "bootstrap"); err != nil {
			t.Fatal(err)
		}
		cancel()
		a.Close()
		b := newBackend(t, c, "/handover/")
		start := time.Now()
		wctx, wcancel := context.WithTimeout(context.Background(), leaseTTL*time.Second/2)
		_, err := b.Lead(wctx, "bootstrap")
		wcancel()
		if err != nil {
			t.Fatalf("round %d: the next process did not lead within half a lease (%v): %v", i, time.Since(start), err)
		}
		b.Close()
	}
}
