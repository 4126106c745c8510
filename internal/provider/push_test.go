package provider

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/kvclient"
)

// A volume whose token nears expiry is reported, so the driver mounts it
// again with a fresh token, rather than left unwatched until its interval;
// one registered with such a token is not watched at all (no loop).
func TestWatchRenewsExpiringTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	w := newWatcher(&kvclient.Client{}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	w.now = func() time.Time { return now }
	driver := make(chan string, 10)
	w.listeners[driver] = struct{}{}
	// Its held reads go to a closed loopback port and only back off.
	item := watchItem{base: "https://127.0.0.1:1", coll: "secrets", name: "db", etag: `"v1"`}

	w.register("/pods/a/vol", "token-a", now.Add(tokenSlack-time.Second), []watchItem{item})
	if len(w.objects) != 0 {
		t.Fatal("a volume whose token expires within a held read is watched")
	}
	w.register("/pods/a/vol", "token-a", now.Add(time.Hour), []watchItem{item})
	w.register("/pods/b/vol", "token-b", now.Add(2*time.Hour), []watchItem{item})
	o := w.objects[item.key()]
	if len(w.objects) != 1 || o == nil || len(o.subs) != 2 {
		t.Fatalf("two volumes of one object: %d objects watched", len(w.objects))
	}
	defer w.Forget("/pods/b/vol")
	// A remount of the same objects keeps the held read.
	w.register("/pods/a/vol", "token-a", now.Add(time.Hour), []watchItem{{base: item.base, coll: item.coll, name: item.name, etag: `"v2"`}})
	if w.objects[item.key()] != o || o.item.etag != `"v2"` {
		t.Fatal("a remount restarted the object's held read, or did not record the newer state")
	}
	w.mu.Lock()
	if tok := w.tokenLocked(o); tok != "token-b" {
		t.Fatalf("held with %q, want the token that lasts longest", tok)
	}
	now = now.Add(time.Hour - tokenSlack + time.Second) // a's token is nearly gone
	tok := w.tokenLocked(o)
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
