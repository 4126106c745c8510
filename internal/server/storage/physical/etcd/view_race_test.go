package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// hookKV lets a test act on a Get of one key: fail it before, or pause after.
type hookKV struct {
	clientv3.KV
	mu     sync.Mutex
	before map[string]func() error // one-shot, by full key
	after  map[string]func()       // one-shot, by full key
}

func (h *hookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	h.mu.Lock()
	bf := h.before[key]
	delete(h.before, key)
	h.mu.Unlock()
	if bf != nil {
		if err := bf(); err != nil {
			return nil, err
		}
	}
	resp, err := h.KV.Get(ctx, key, opts...)
	h.mu.Lock()
	af := h.after[key]
	delete(h.after, key)
	h.mu.Unlock()
	if af != nil {
		af()
	}
	return resp, err
}

// gatedWatcher forwards watch responses while open; limit > 0 lets that many
// more through and then closes.
type gatedWatcher struct {
	clientv3.Watcher
	mu      sync.Mutex
	cond    *sync.Cond
	open    bool
	limit   int
	started chan struct{}
	once    sync.Once
}

func newGatedWatcher(cli *clientv3.Client) *gatedWatcher {
	g := &gatedWatcher{Watcher: clientv3.NewWatcher(cli), open: true, started: make(chan struct{})}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gatedWatcher) set(open bool, limit int) {
	g.mu.Lock()
	g.open, g.limit = open, limit
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gatedWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	in := g.Watcher.Watch(ctx, key, opts...)
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		for resp := range in {
			g.mu.Lock()
			for !g.open {
				g.cond.Wait()
			}
			if g.limit > 0 {
				g.limit--
				if g.limit == 0 {
					g.open = false
				}
			}
			g.mu.Unlock()
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	g.once.Do(func() { close(g.started) })
	return out
}

// instrument swaps b's KV for a hookKV and, by ending the running watch,
// makes the watch loop follow again through a gatedWatcher.
func instrument(t *testing.T, b *Backend, failRestart bool) (*hookKV, *gatedWatcher) {
	t.Helper()
	waitWatching(t, b)
	b.mu.Lock() // orders the swap before the watch goroutine's next use
	h := &hookKV{KV: b.cli.KV, before: map[string]func() error{}, after: map[string]func(){}}
	b.cli.KV = h
	if failRestart {
		// restart's quorum read of the current revision (key == prefix) fails once.
		h.before[b.prefix] = func() error { return errors.New("injected: no leader") }
	}
	g := newGatedWatcher(b.cli)
	orig := b.cli.Watcher
	b.cli.Watcher = g
	b.mu.Unlock()
	orig.Close() // the watch stream closes: the loop restarts
	await(t, g.started, "the watch to follow again")
	waitWatching(t, b)
	return h, g
}

// waitDeadline bounds every wait of these tests on the engine's goroutines:
// generous, for a loaded machine, and still a failure rather than a hang.
const waitDeadline = time.Minute

// waitWatching waits until b's watch is established.
func waitWatching(t *testing.T, b *Backend) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for {
		b.mu.Lock()
		ok := b.watchOK
		b.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch was not established within %v", waitDeadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// await receives from ch within waitDeadline.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitDeadline):
		t.Fatalf("waited %v for %s", waitDeadline, what)
		panic("unreachable")
	}
}

// A synced scan and a synced get of one request agree, while the view
// lags behind a write another process has made: the scan reads the
// cluster at the view's revision, not ahead of it.
func TestSyncedScanAndGetAgree(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	w := newBackend(t, c, "")
	r := newBackendWith(t, c, Options{Prefix: w.Prefix()})
	_, g := instrument(t, r, false)
	sctx, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(sctx, "k"); err != physical.ErrNotFound {
		t.Fatal(err)
	}
	g.set(false, 0) // r's watch lags from here
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k", Value: []byte("v1")}}); err != nil {
		t.Fatal(err)
	}
	es, err := r.Scan(sctx, "k", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, gerr := r.Get(sctx, "k")
	if len(es) == 1 && gerr == physical.ErrNotFound {
		t.Errorf("a synced Scan listed k=%s, then a synced Get of k answered not found", es[0].Value)
	}
	g.set(true, 0)
}

// Two reads of one key from the cluster race, while the view lags; the
// later one's answer is pushed out of the view before the earlier one
// holds its own. No read may then answer older than one already answered.
func TestRacingFetchesNeverGoBack(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	w := newBackend(t, c, "")
	val := func(s string) []byte { return append([]byte(s), make([]byte, 40)...) }
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k", Value: val("old")}, {Key: "e1", Value: val("e")}, {Key: "e2", Value: val("e")}, {Key: "e3", Value: val("e")}}); err != nil {
		t.Fatal(err)
	}
	// Room for two residents of about 106 bytes.
	r := newBackendWith(t, c, Options{Prefix: w.Prefix(), ViewBytes: 230})
	h, g := instrument(t, r, false)
	sctx, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g.set(false, 0) // r's view stays where it is: the watch lags
	paused, release := make(chan struct{}), make(chan struct{})
	h.mu.Lock()
	h.after[r.prefix+"k"] = func() { close(paused); <-release }
	h.mu.Unlock()
	f1 := make(chan string)
	go func() {
		v, _ := r.Get(sctx, "k") // F1: reads k=old, then stalls before holding
		f1 <- string(v[:3])
	}()
	await(t, paused, "the first read to reach its pause")
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k", Value: val("new")}}); err != nil {
		t.Fatal(err)
	}
	v, err := r.Get(sctx, "k") // F2
	if err != nil {
		t.Fatal(err)
	}
	second := string(v[:3])
	for _, k := range []string{"e1", "e2", "e3"} { // push k out
		if _, err := r.Get(sctx, k); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	await(t, f1, "the first read to return")
	v, err = r.Get(sctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if second == "new" && string(v[:3]) == "old" {
		t.Errorf("a synced read answered k=old after one had answered k=new")
	}
	g.set(true, 0)
}

// The watch ends and the restart's quorum read fails (a lost leader does
// both). The engine must not watch again from its old revision, which
// would replay history over the view and to the subscribers: it restarts
// until that succeeds, then reads are current and subscribers heard each
// write once, and a Reset.
func TestFailedRestartDoesNotReplay(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	w := newBackend(t, c, "")
	r := newBackendWith(t, c, Options{Prefix: w.Prefix(), ViewBytes: 40 * 80})
	var heardK, resets atomic.Int64
	r.Subscribe(func(ch physical.Change) {
		if ch.Reset {
			resets.Add(1)
		}
		for _, k := range ch.Keys {
			if k == "k" {
				heardK.Add(1)
			}
		}
	})
	put := func(k, v string) {
		if _, err := w.cli.Put(ctx, w.prefix+k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("k", "v1")
	for i := range 100 {
		put(fmt.Sprintf("g%05d", i), "x")
	}
	if err := w.Apply(ctx, nil, []physical.Op{{Key: "k", Value: []byte("v2")}}); err != nil {
		t.Fatal(err)
	}
	sctx, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(sctx, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("Get(k) = %q, %v", v, err)
	}
	// Push k out of r's view.
	for i := range 60 {
		if _, err := r.Get(sctx, fmt.Sprintf("g%05d", i)); err != nil {
			t.Fatal(err)
		}
	}
	instrument(t, r, true)
	deadline := time.Now().Add(waitDeadline)
	for resets.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not restart after the failed one")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sctx2, err := r.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(sctx2, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("after the restart, a synced Get(k) = %q, %v; want v2", v, err)
	}
	if n := heardK.Load(); n != 2 {
		t.Fatalf("subscribers heard k %d times for 2 writes", n)
	}
}
