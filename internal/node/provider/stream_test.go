package provider

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
	"github.com/cofferhq/coffer/internal/testing/poll"
)

// watchStandIn is a vault server's watch on loopback whose answers each
// test scripts: the real one (internal/server/api/kvhttp, tested there
// and end to end in test/csi) cannot be made to break a stream, go
// silent, or refuse the route on cue. Each request gets the records
// script returns for it, then the stream stays open (hold) or ends.
type watchStandIn struct {
	mu       sync.Mutex
	requests []vaultwatch.Request
	script   func(n int) (status int, recs []vaultwatch.Record, hold bool)
	gets     int // other requests: held reads
}

func (s *watchStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != vaultwatch.Path {
		s.mu.Lock()
		s.gets++
		s.mu.Unlock()
		// A held read that never changes: 304 with Preference-Applied.
		select {
		case <-r.Context().Done():
		case <-time.After(200 * time.Millisecond):
		}
		w.Header().Set("Preference-Applied", "wait=25")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	var req vaultwatch.Request
	json.NewDecoder(r.Body).Decode(&req)
	s.mu.Lock()
	s.requests = append(s.requests, req)
	n := len(s.requests)
	s.mu.Unlock()
	status, recs, hold := s.script(n)
	if status != http.StatusOK {
		w.WriteHeader(status)
		w.Write([]byte(`{"error":{"code":"NotFound","message":"no"}}`))
		return
	}
	w.Header().Set("Content-Type", vaultwatch.ContentType)
	w.WriteHeader(http.StatusOK)
	for _, rec := range recs {
		b, _ := json.Marshal(rec)
		w.Write(append(b, '\n'))
	}
	w.(http.Flusher).Flush()
	if hold {
		<-r.Context().Done()
	}
}

func (s *watchStandIn) seen() ([]vaultwatch.Request, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]vaultwatch.Request(nil), s.requests...), s.gets
}

// watchFixture is a watcher with a listening driver, registered volume
// a (principal p) holding one object of the stand-in's server at "v1".
type watchFixture struct {
	w      *watcher
	srv    *httptest.Server
	driver chan string
	key    string // the object's key
	watch  string // the volume's vault watch
	mu     sync.Mutex
	now    time.Time
}

func newWatchFixture(t *testing.T, standIn *watchStandIn) *watchFixture {
	t.Helper()
	srv := httptest.NewServer(standIn)
	t.Cleanup(srv.Close)
	f := &watchFixture{srv: srv, driver: make(chan string, 100), now: time.Now()}
	f.w = newWatcher(&kvclient.Client{HTTP: srv.Client()}, newCache(1<<20), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	f.w.now = func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.now
	}
	t.Cleanup(f.w.close)
	f.w.listeners[f.driver] = struct{}{}
	item := watchItem{base: srv.URL, objType: azparams.TypeSecret, name: "db", etag: `"v1"`}
	f.key, f.watch = item.key(), streamKey(srv.URL, "tenant/p")
	f.w.register(registration{target: "/pods/a/vol", token: "token-a", expires: time.Now().Add(time.Hour), resource: srv.URL, principal: "tenant/p", items: []watchItem{item}})
	return f
}

func (f *watchFixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func (f *watchFixture) pushed(t *testing.T, target string) {
	t.Helper()
	select {
	case got := <-f.driver:
		if got != target {
			t.Fatalf("pushed %q, want %q", got, target)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s was not pushed", target)
	}
}

// A watch vouches for what it asked for from its Ready on, for as long
// as the server confirms it: once the server goes silent past 1.5 of its
// re-authorization period, the mounts read the vault again.
func TestVaultWatchVouchesWhileConfirmed(t *testing.T) {
	standIn := &watchStandIn{script: func(int) (int, []vaultwatch.Record, bool) {
		return 200, []vaultwatch.Record{{Type: vaultwatch.Ready, Reauthorize: 30}}, true
	}}
	f := newWatchFixture(t, standIn)
	poll.Until(t, "the watch to vouch for the object", func() bool { return f.w.fresh(f.watch, f.key) == `"v1"` })
	reqs, _ := standIn.seen()
	if got := reqs[0].Objects; len(got) != 1 || got[0] != (vaultwatch.Object{Vault: vaultOf(f.srv.URL), Kind: "secrets", Name: "db", ETag: `"v1"`}) {
		t.Fatalf("the watch asked for %+v", got)
	}
	if f.w.fresh(streamKey(f.srv.URL, "tenant/other"), f.key) != "" {
		t.Fatal("one identity's watch vouched for another identity's mount")
	}
	f.advance(44 * time.Second)
	if f.w.fresh(f.watch, f.key) != `"v1"` {
		t.Fatal("not vouched for within 1.5 periods of the last confirmation")
	}
	f.advance(2 * time.Second)
	if f.w.fresh(f.watch, f.key) != "" {
		t.Fatal("still vouched for after the server went silent for over 1.5 periods")
	}
}

// Changed reports the volumes that hold another state and vouches for the
// new one; Dropped reports them too (their refresh reads the object and
// says why it cannot) and vouches for nothing, and the next watch leaves
// the object out.
func TestVaultWatchRecords(t *testing.T) {
	standIn := &watchStandIn{script: func(n int) (int, []vaultwatch.Record, bool) {
		if n == 1 {
			return 200, []vaultwatch.Record{{Type: vaultwatch.Ready}, {Type: vaultwatch.Changed, Object: 0, ETag: `"v2"`}, {Type: vaultwatch.Dropped, Object: 0}}, false
		}
		return 200, []vaultwatch.Record{{Type: vaultwatch.Ready}}, true
	}}
	f := newWatchFixture(t, standIn)
	f.pushed(t, "/pods/a/vol") // Changed
	f.pushed(t, "/pods/a/vol") // Dropped
	if f.w.fresh(f.watch, f.key) != "" {
		t.Fatal("a dropped object is vouched for")
	}
	// A mount that reads it again (access restored) watches it again:
	// the next watch asks for it at the state that mount read, and none
	// asked for it while it was dropped.
	f.w.register(registration{target: "/pods/a/vol", token: "token-a", expires: time.Now().Add(time.Hour), resource: f.srv.URL, principal: "tenant/p",
		items: []watchItem{{base: f.srv.URL, objType: azparams.TypeSecret, name: "db", etag: `"v3"`}}})
	poll.Until(t, "the object to be watched again", func() bool { return f.w.fresh(f.watch, f.key) == `"v3"` })
	if reqs, _ := standIn.seen(); len(reqs) != 2 || reqs[1].Objects[0].ETag != `"v3"` {
		t.Fatalf("watches asked for %+v; want the second to ask for the state the mount read", reqs)
	}
}

// A watch that fails is opened again, after a backoff, from the states
// known: here the server ends two streams at once, then holds one.
func TestVaultWatchReopens(t *testing.T) {
	standIn := &watchStandIn{script: func(n int) (int, []vaultwatch.Record, bool) {
		switch n {
		case 1:
			return 200, []vaultwatch.Record{{Type: vaultwatch.Ready}, {Type: vaultwatch.Changed, Object: 0, ETag: `"v2"`}}, false
		case 2:
			return http.StatusServiceUnavailable, nil, false
		}
		return 200, []vaultwatch.Record{{Type: vaultwatch.Ready}}, true
	}}
	f := newWatchFixture(t, standIn)
	poll.Until(t, "a third watch", func() bool { reqs, _ := standIn.seen(); return len(reqs) >= 3 })
	reqs, _ := standIn.seen()
	if got := reqs[2].Objects[0].ETag; got != `"v2"` {
		t.Fatalf("the watch was opened again from %s, want the state the last one reported", got)
	}
	poll.Until(t, "the new watch to vouch", func() bool { return f.w.fresh(f.watch, f.key) == `"v2"` })
}

// A server without the vault watch (404) is watched with held reads
// instead, for every volume of the watch.
func TestVaultWatchFallsBackToHeldReads(t *testing.T) {
	standIn := &watchStandIn{script: func(int) (int, []vaultwatch.Record, bool) { return http.StatusNotFound, nil, false }}
	f := newWatchFixture(t, standIn)
	poll.Until(t, "held reads", func() bool { _, gets := standIn.seen(); return gets > 0 })
	f.w.mu.Lock()
	_, held := f.w.objects[f.key]
	_, streaming := f.w.watches[f.watch]
	target := f.w.targets["/pods/a/vol"]
	f.w.mu.Unlock()
	if !held || streaming || target == nil || target.stream != "" {
		t.Fatalf("held %v, vault watch still there %v, volume %+v", held, streaming, target)
	}
	// A later mount of the same server does not ask for the watch again.
	f.w.register(registration{target: "/pods/b/vol", token: "token-b", expires: time.Now().Add(time.Hour), resource: f.srv.URL, principal: "tenant/q",
		items: []watchItem{{base: f.srv.URL, objType: azparams.TypeSecret, name: "db", etag: `"v1"`}}})
	if reqs, _ := standIn.seen(); len(reqs) != 1 {
		t.Fatalf("%d watches asked for after a 404", len(reqs))
	}
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if o := f.w.objects[f.key]; o == nil || len(o.subs) != 2 {
		t.Fatal("the second volume is not held with the first")
	}
}
