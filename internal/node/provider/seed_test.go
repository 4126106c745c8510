package provider

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// standIn is a vault of one object on loopback that holds conditional
// reads (Prefer: wait) until the object changes, and counts the answers
// that carried the object: its value transfers.
type standIn struct {
	objType string
	big     bool // answers over kvclient.MaxBody

	mu        sync.Mutex
	version   int
	changed   chan struct{} // closed at the next change
	transfers int
	reads     []read // every read, in order
}

type read struct {
	token, ifNoneMatch string
	status             int
}

func newStandIn(objType string, big bool) *standIn {
	return &standIn{objType: objType, big: big, version: 1, changed: make(chan struct{})}
}

func (v *standIn) change() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.version++
	close(v.changed)
	v.changed = make(chan struct{})
}

func (v *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	inm := r.Header.Get("If-None-Match")
	held := r.Header.Get("Prefer") != ""
	for {
		v.mu.Lock()
		tag := fmt.Sprintf(`"v%d"`, v.version)
		if inm != tag {
			v.transfers++
			v.reads = append(v.reads, read{token, inm, http.StatusOK})
			body := v.body(r.Host)
			v.mu.Unlock()
			w.Header().Set("ETag", tag)
			w.Write([]byte(body))
			return
		}
		changed := v.changed
		if !held {
			v.reads = append(v.reads, read{token, inm, http.StatusNotModified})
			v.mu.Unlock()
			w.Header().Set("ETag", tag)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		v.mu.Unlock()
		select {
		case <-changed:
			continue // answer from the new state
		case <-r.Context().Done():
			return
		}
	}
}

// body is the object at its current version; v.mu is held.
func (v *standIn) body(host string) string {
	id := fmt.Sprintf("https://%s/%s/db/v%d", host, collection(v.objType), v.version)
	value := fmt.Sprintf("value %d", v.version)
	if v.big {
		value += strings.Repeat("x", kvclient.MaxBody)
	}
	switch v.objType {
	case azparams.TypeKey:
		return `{"key":{"kid":"` + id + `","kty":"oct"}}`
	case azparams.TypeCert:
		return `{"id":"` + id + `","cer":"` + base64.StdEncoding.EncodeToString([]byte(value)) + `"}`
	}
	return `{"id":"` + id + `","value":"` + value + `"}`
}

func (v *standIn) snapshot() (int, []read) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.transfers, append([]read(nil), v.reads...)
}

// A held read's answer to a change seeds the object cache under the new
// ETag before the volume is reported, so the follow-up mount's read is a
// conditional one that the vault answers 304: the new value crosses the
// network once. That read still goes to the vault, with the mounting
// volume's own token: the vault authorizes every volume. An answer too
// big to decode is not seeded, and the mount reads the object itself.
func TestHeldReadSeedsTheCache(t *testing.T) {
	tests := map[string]struct {
		objType       string
		big           bool
		wantTransfers int // per change
	}{
		"secret":               {objType: azparams.TypeSecret, wantTransfers: 1},
		"key":                  {objType: azparams.TypeKey, wantTransfers: 1},
		"certificate":          {objType: azparams.TypeCert, wantTransfers: 1},
		"an answer over bound": {objType: azparams.TypeSecret, big: true, wantTransfers: 2},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			vault := newStandIn(test.objType, test.big)
			srv := httptest.NewServer(vault)
			defer srv.Close()
			s, err := New(Config{VaultSuffix: "vault.invalid:1", Vault: &kvclient.Client{HTTP: srv.Client()}, Auth: &authclient.Client{},
				Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			driver := make(chan string, 10)
			s.watch.mu.Lock()
			s.watch.listeners[driver] = struct{}{}
			s.watch.mu.Unlock()

			// The first mount reads the object (an oversized one is read
			// as the error it is) and is watched from its ETag.
			etag := `"v1"`
			if !test.big {
				f, err := s.fetch(ctx, reader{base: srv.URL, token: "token-a"}, test.objType, "db", "")
				if err != nil || f.Version != "v1" {
					t.Fatalf("first read: %v, %+v", err, f)
				}
				etag = f.ETag
			}
			s.watch.register(registration{target: "/pods/a/vol", token: "token-a", expires: time.Now().Add(time.Hour), items: []watchItem{{base: srv.URL, objType: test.objType, name: "db", etag: etag}}})
			before, _ := vault.snapshot()
			// Whether the held read reaches the vault before the change or
			// after, the change is what answers it.
			vault.change()
			select {
			case target := <-driver:
				if target != "/pods/a/vol" {
					t.Fatalf("reported %q", target)
				}
			case <-ctx.Done():
				t.Fatal("the change was not reported")
			}
			// The follow-up mount, as another volume's identity would.
			f, err := s.fetch(ctx, reader{base: srv.URL, token: "token-b"}, test.objType, "db", "")
			switch {
			case test.big && kvclient.Classify(err) != mounterr.Internal:
				t.Fatalf("the follow-up read of an oversized object: %v", err)
			case !test.big && (err != nil || f.Version != "v2" || f.ETag != `"v2"`):
				t.Fatalf("the follow-up read: %v, %+v; want version v2 under its ETag", err, f)
			}
			after, reads := vault.snapshot()
			if got := after - before; got != test.wantTransfers {
				t.Errorf("%d value transfers for one change, want %d; reads: %+v", got, test.wantTransfers, reads)
			}
			if last := reads[len(reads)-1]; last.token != "token-b" {
				t.Errorf("the follow-up read went with %q: each volume's read must go to the vault with its own token", last.token)
			} else if !test.big && (last.ifNoneMatch != `"v2"` || last.status != http.StatusNotModified) {
				t.Errorf("the follow-up read sent If-None-Match %s and was answered %d; want the new ETag, answered 304", last.ifNoneMatch, last.status)
			}
		})
	}
}
