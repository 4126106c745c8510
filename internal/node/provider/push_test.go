package provider

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// A volume whose token nears expiry is reported, so the driver mounts it
// again with a fresh token, rather than left unwatched until its interval;
// one registered with such a token is not watched at all (no loop).
func TestWatchRenewsExpiringTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	w := newWatcher(&kvclient.Client{}, newCache(1<<20), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	w.now = func() time.Time { return now }
	driver := make(chan string, 10)
	w.listeners[driver] = struct{}{}
	// Its held reads go to a closed loopback port and only back off.
	item := watchItem{base: "https://127.0.0.1:1", objType: azparams.TypeSecret, name: "db", etag: `"v1"`}

	w.register(registration{target: "/pods/a/vol", token: "token-a", expires: now.Add(tokenSlack - time.Second), items: []watchItem{item}})
	if len(w.objects) != 0 {
		t.Fatal("a volume whose token expires within a held read is watched")
	}
	w.register(registration{target: "/pods/a/vol", token: "token-a", expires: now.Add(time.Hour), items: []watchItem{item}})
	w.register(registration{target: "/pods/b/vol", token: "token-b", expires: now.Add(2 * time.Hour), items: []watchItem{item}})
	o := w.objects[item.key()]
	if len(w.objects) != 1 || o == nil || len(o.subs) != 2 {
		t.Fatalf("two volumes of one object: %d objects watched", len(w.objects))
	}
	defer w.Forget("/pods/b/vol")
	// A remount of the same objects keeps the held read.
	w.register(registration{target: "/pods/a/vol", token: "token-a", expires: now.Add(time.Hour), items: []watchItem{{base: item.base, objType: item.objType, name: item.name, etag: `"v2"`}}})
	if w.objects[item.key()] != o || o.item.etag != `"v2"` {
		t.Fatal("a remount restarted the object's held read, or did not record the newer state")
	}
	w.mu.Lock()
	if _, tok := w.tokenLocked(o); tok != "token-b" {
		t.Fatalf("held with %q, want the token that lasts longest", tok)
	}
	now = now.Add(time.Hour - tokenSlack + time.Second) // a's token is nearly gone
	_, tok := w.tokenLocked(o)
	w.mu.Unlock()
	if tok != "token-b" {
		t.Fatalf("held with %q after a's token neared expiry", tok)
	}
	select {
	case target := <-driver:
		if target != "/pods/a/vol" {
			t.Fatalf("reported %q", target)
		}
	default:
		t.Fatal("the volume with the expiring token was not reported")
	}
	if _, ok := o.subs["/pods/a/vol"]; ok {
		t.Fatal("the expiring subscriber is still there")
	}
}

// A held read refused with one volume's token drops that volume (its
// refresh reports why) and goes on with another's at once: one identity
// losing access does not stop the pushes of every volume holding the
// object. The vault here is a stand-in on loopback that refuses token-a
// and answers token-b with a new version.
func TestWatchSurvivesARefusedToken(t *testing.T) {
	var mu sync.Mutex
	tokens := []string{}
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		tokens = append(tokens, tok)
		mu.Unlock()
		if tok == "token-a" {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error":{"code":"Forbidden","message":"no"}}`))
			return
		}
		w.Header().Set("ETag", `"v2"`)
		w.Write([]byte(`{"value":"new"}`))
	}))
	defer vault.Close()
	now := time.Now()
	w := newWatcher(&kvclient.Client{HTTP: vault.Client()}, newCache(1<<20), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	defer w.close()
	driver := make(chan string, 10)
	w.listeners[driver] = struct{}{}
	item := watchItem{base: vault.URL, objType: azparams.TypeSecret, name: "db", etag: `"v1"`}
	// a's token lasts longer, so it is tried first.
	w.mu.Lock()
	w.objects[item.key()] = &watchedObject{item: item, cancel: func() {}, subs: map[string]subscriber{
		"/pods/a/vol": {etag: `"v1"`, token: "token-a", expires: now.Add(2 * time.Hour)},
		"/pods/b/vol": {etag: `"v1"`, token: "token-b", expires: now.Add(time.Hour)},
	}}
	o := w.objects[item.key()]
	w.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.poll(ctx, item.key(), o) }()
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case target := <-driver:
			got[target] = true
		case <-time.After(time.Minute):
			t.Fatalf("reported %v; want both volumes (a refused, b changed)", got)
		}
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(tokens) < 2 || tokens[0] != "token-a" || tokens[1] != "token-b" {
		t.Fatalf("held reads with %v, want token-a, then token-b at once", tokens)
	}
}

// close ends the driver's Watch stream, so a graceful stop of the
// provider's gRPC server does not wait on it.
func TestCloseEndsWatch(t *testing.T) {
	w := newWatcher(&kvclient.Client{}, newCache(1<<20), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ended := make(chan error, 1)
	go func() { ended <- w.Watch(context.Background(), func(string) error { return nil }) }()
	w.close()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Watch did not end on close")
	}
}
