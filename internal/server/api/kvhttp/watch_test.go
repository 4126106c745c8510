package kvhttp_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// watchConn is an open vault watch: its records as they come.
type watchConn struct {
	recs chan vaultwatch.Record
	done chan struct{} // closed when the stream ends
	stop func()
}

// openWatch POSTs a vault watch of objs with tok to the handler, served
// on loopback so the answer streams, and returns its status and, for a
// 200, the stream.
func (e *env) openWatch(t *testing.T, tok string, objs ...vaultwatch.Object) (int, *watchConn) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(e.h.ServeWatch))
	t.Cleanup(srv.Close)
	return e.openWatchOn(t, srv, tok, objs...)
}

// openWatchOn is openWatch on srv.
func (e *env) openWatchOn(t *testing.T, srv *httptest.Server, tok string, objs ...vaultwatch.Object) (int, *watchConn) {
	t.Helper()
	body, _ := json.Marshal(vaultwatch.Request{Objects: objs})
	ctx, cancel := context.WithCancel(context.Background())
	r, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+vaultwatch.Path+"?api-version=7.6", strings.NewReader(string(body)))
	if tok != "-" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := srv.Client().Do(r)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return resp.StatusCode, nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != vaultwatch.ContentType {
		t.Fatalf("a watch answered as %q", ct)
	}
	c := &watchConn{recs: make(chan vaultwatch.Record, 100), done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(c.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var rec vaultwatch.Record
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				panic("a record that is not JSON: " + sc.Text())
			}
			c.recs <- rec
		}
	}()
	t.Cleanup(cancel)
	return http.StatusOK, c
}

// next returns the next record, failing after 10 s.
func (c *watchConn) next(t *testing.T) vaultwatch.Record {
	t.Helper()
	select {
	case rec := <-c.recs:
		return rec
	case <-c.done:
		select {
		case rec := <-c.recs:
			return rec
		default:
		}
		t.Fatal("the watch ended")
	case <-time.After(10 * time.Second):
		t.Fatal("no record for 10 s")
	}
	return vaultwatch.Record{}
}

// until returns the records up to and including the first of type typ.
func (c *watchConn) until(t *testing.T, typ vaultwatch.Type) []vaultwatch.Record {
	t.Helper()
	var out []vaultwatch.Record
	for {
		rec := c.next(t)
		out = append(out, rec)
		if rec.Type == typ {
			return out
		}
	}
}

func (e *env) etag(t *testing.T, vaultName, kind, name string) string {
	t.Helper()
	a := e.do(t, req{vault: vaultName, path: "/" + kind + "/" + name})
	if a.status != 200 {
		t.Fatalf("read %s/%s: %d %s", kind, name, a.status, a.raw)
	}
	return a.header.Get("ETag")
}

func secretAt(vaultName, name, etag string) vaultwatch.Object {
	return vaultwatch.Object{Vault: vaultName, Kind: vaultwatch.Secrets, Name: name, ETag: etag}
}

// The first pass authorizes each object for the caller and says where
// each one stands against the state the caller holds: nothing for one
// it holds, Changed for another state (with the tag a read would answer,
// or none for an object a read would not find), Dropped for one the
// caller may not read, whatever its state; then Ready.
func TestWatchFirstPass(t *testing.T) {
	e := newEnv(t)
	e.setSecret(t, "demo", "s", "one")
	e.setSecret(t, "demo", "t", "two")
	e.setSecret(t, "rbac", "s", "three")
	if a := e.do(t, req{method: "POST", path: "/keys/k/create", body: `{"kty":"EC","crv":"P-256"}`}); a.status != 200 {
		t.Fatalf("create key: %d %s", a.status, a.raw)
	}
	objs := []vaultwatch.Object{
		secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")),
		secretAt("demo", "T", `"old"`), // names compare case-insensitively
		secretAt("demo", "missing", `"x"`),
		secretAt("rbac", "s", `"y"`),                                   // the reader holds no role there
		{Vault: "demo", Kind: vaultwatch.Keys, Name: "k", ETag: `"z"`}, // nor key permissions
		secretAt("nosuch", "s", `"w"`),                                 // a vault that does not exist
	}
	status, c := e.openWatch(t, e.reader, objs...)
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	got := map[int]vaultwatch.Record{}
	for _, rec := range c.until(t, vaultwatch.Ready) {
		if rec.Type == vaultwatch.Ready {
			if rec.Reauthorize != 30 {
				t.Errorf("Ready says passes every %d s, want 30", rec.Reauthorize)
			}
			continue
		}
		if _, dup := got[rec.Object]; dup {
			t.Fatalf("object %d reported twice", rec.Object)
		}
		got[rec.Object] = rec
	}
	want := map[int]vaultwatch.Record{
		1: {Type: vaultwatch.Changed, Object: 1, ETag: e.etag(t, "demo", "secrets", "t")},
		2: {Type: vaultwatch.Changed, Object: 2},
		3: {Type: vaultwatch.Dropped, Object: 3},
		4: {Type: vaultwatch.Dropped, Object: 4},
		5: {Type: vaultwatch.Dropped, Object: 5},
	}
	if len(got) != len(want) {
		t.Fatalf("first pass reported %+v, want %+v", got, want)
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("object %d: %+v, want %+v", i, got[i], w)
		}
	}
}

// After Ready, each write to a watched object is reported with the tag a
// read answers now; a write to another object is not; a deleted object
// is reported with no tag.
func TestWatchReportsChanges(t *testing.T) {
	e := newEnv(t)
	e.setSecret(t, "demo", "s", "one")
	e.setSecret(t, "demo", "t", "two")
	_, c := e.openWatch(t, e.admin, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")), secretAt("demo", "t", e.etag(t, "demo", "secrets", "t")))
	if recs := c.until(t, vaultwatch.Ready); len(recs) != 1 {
		t.Fatalf("first pass: %+v, want Ready alone", recs)
	}
	steps := []struct {
		name   string
		change func()
		want   func() vaultwatch.Record
	}{
		{"a new version", func() { e.setSecret(t, "demo", "s", "one, again") },
			func() vaultwatch.Record {
				return vaultwatch.Record{Type: vaultwatch.Changed, Object: 0, ETag: e.etag(t, "demo", "secrets", "s")}
			}},
		{"an update of its tags, after a write to an unwatched object", func() {
			e.setSecret(t, "demo", "u", "unwatched")
			e.do(t, req{method: "PATCH", path: "/secrets/t", body: `{"tags":{"k":"v"}}`})
		}, func() vaultwatch.Record {
			return vaultwatch.Record{Type: vaultwatch.Changed, Object: 1, ETag: e.etag(t, "demo", "secrets", "t")}
		}},
		{"a deletion", func() { e.do(t, req{method: "DELETE", path: "/secrets/s"}) },
			func() vaultwatch.Record { return vaultwatch.Record{Type: vaultwatch.Changed, Object: 0} }},
	}
	for _, step := range steps {
		step.change()
		if got, want := c.next(t), step.want(); got != want {
			t.Fatalf("%s: %+v, want %+v", step.name, got, want)
		}
	}
}

// A caller whose access ends while it watches learns nothing more of the
// object, not even that it changed: the writes that follow the revocation
// are never reported, and the object is reported Dropped, by the pass
// that an access change starts or, if the server missed that, by the next
// timed pass. Every later pass still says Authorized for the rest.
func TestWatchRevokedCallerLearnsNothing(t *testing.T) {
	tests := map[string]envOptions{
		"the access change starts a pass": {reauthorize: time.Hour},
		"a timed pass finds it":           {reauthorize: 300 * time.Millisecond, missAccessChanges: true},
	}
	for name, opts := range tests {
		t.Run(name, func(t *testing.T) {
			e := newEnvWith(t, opts)
			e.setSecret(t, "demo", "s", "one")
			_, c := e.openWatch(t, e.reader, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")))
			if recs := c.until(t, vaultwatch.Ready); len(recs) != 1 {
				t.Fatalf("first pass: %+v", recs)
			}
			if _, err := e.vaults.Update(context.Background(), "demo", func(v *vault.Vault) error {
				v.AccessPolicies = v.AccessPolicies[:1] // the administrator's alone
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			e.setSecret(t, "demo", "s", "two")
			e.setSecret(t, "demo", "s", "three")
			for rec := c.next(t); rec.Type != vaultwatch.Dropped; rec = c.next(t) {
				if rec.Type != vaultwatch.Authorized {
					t.Fatalf("after the revocation: %+v, want only Dropped (and Authorized)", rec)
				}
			}
			e.setSecret(t, "demo", "s", "four")
			if opts.missAccessChanges {
				// Passes go on, and say nothing of the dropped object.
				for range 2 {
					if rec := c.next(t); rec.Type != vaultwatch.Authorized {
						t.Fatalf("after the drop: %+v, want Authorized", rec)
					}
				}
			}
			select {
			case rec := <-c.recs:
				if rec.Type != vaultwatch.Authorized {
					t.Fatalf("after the drop: %+v", rec)
				}
			default:
			}
		})
	}
}

// Timed passes confirm the stream: Authorized, every period.
func TestWatchPassesConfirm(t *testing.T) {
	e := newEnvWith(t, envOptions{reauthorize: 200 * time.Millisecond})
	e.setSecret(t, "demo", "s", "one")
	_, c := e.openWatch(t, e.reader, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")))
	c.until(t, vaultwatch.Ready)
	for range 3 {
		if rec := c.next(t); rec.Type != vaultwatch.Authorized {
			t.Fatalf("%+v, want Authorized", rec)
		}
	}
}

// A stream that stays quiet for longer than the write timeout lasts, over
// HTTP/2 as over HTTP/1: the deadline of a write does not outlive it (an
// HTTP/2 stream's write deadline resets the stream when it fires, being
// written to or not).
func TestWatchQuietStreamLasts(t *testing.T) {
	tests := map[string]struct{ http2 bool }{"HTTP/1.1": {}, "HTTP/2": {http2: true}}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			e := newEnvWith(t, envOptions{reauthorize: time.Second, writeTimeout: 100 * time.Millisecond})
			e.setSecret(t, "demo", "s", "one")
			srv := httptest.NewUnstartedServer(http.HandlerFunc(e.h.ServeWatch))
			srv.EnableHTTP2 = test.http2
			srv.StartTLS()
			t.Cleanup(srv.Close)
			_, c := e.openWatchOn(t, srv, e.reader, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")))
			c.until(t, vaultwatch.Ready)
			// Passes come every second, ten write timeouts apart.
			for range 2 {
				if rec := c.next(t); rec.Type != vaultwatch.Authorized {
					t.Fatalf("%+v, want Authorized", rec)
				}
			}
		})
	}
}

// A stream ends when its token expires, and when the server stops, each
// time saying why.
func TestWatchEnds(t *testing.T) {
	t.Run("the token expires", func(t *testing.T) {
		// The authority's clock is nearly a token's lifetime behind: its
		// tokens expire 3 s from now.
		e := newEnvWith(t, envOptions{authorityNow: func() time.Time { return time.Now().Add(-time.Hour + 3*time.Second) }})
		e.setSecret(t, "demo", "s", "one")
		_, c := e.openWatch(t, e.reader, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")))
		recs := c.until(t, vaultwatch.End)
		if end := recs[len(recs)-1]; end.Reason != vaultwatch.ReasonExpired {
			t.Fatalf("ended with %+v", end)
		}
	})
	t.Run("the server stops", func(t *testing.T) {
		e := newEnv(t)
		e.setSecret(t, "demo", "s", "one")
		_, c := e.openWatch(t, e.reader, secretAt("demo", "s", e.etag(t, "demo", "secrets", "s")))
		c.until(t, vaultwatch.Ready)
		e.feed.Close()
		if rec := c.next(t); rec.Type != vaultwatch.End || rec.Reason != vaultwatch.ReasonShutdown {
			t.Fatalf("%+v, want End shutdown", rec)
		}
		<-c.done
	})
}

// Requests that are not a watch are refused before anything is watched.
func TestWatchRefusals(t *testing.T) {
	e := newEnv(t)
	off := newEnvWith(t, envOptions{noWatch: true})
	ok := secretAt("demo", "s", `"x"`)
	tests := map[string]struct {
		e      *env
		method string
		tok    string
		objs   []vaultwatch.Object
		status int
	}{
		"no token":               {tok: "-", objs: []vaultwatch.Object{ok}, status: 401},
		"another audience":       {tok: "mgmt", objs: []vaultwatch.Object{ok}, status: 401},
		"a GET":                  {method: "GET", objs: []vaultwatch.Object{ok}, status: 405},
		"no objects":             {status: 400},
		"an object twice":        {objs: []vaultwatch.Object{ok, secretAt("DEMO", "S", `"y"`)}, status: 400},
		"an unknown kind":        {objs: []vaultwatch.Object{{Vault: "demo", Kind: "storage", Name: "s"}}, status: 400},
		"an invalid name":        {objs: []vaultwatch.Object{secretAt("demo", "a/b", "")}, status: 400},
		"a server without watch": {e: off, objs: []vaultwatch.Object{ok}, status: 404},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			ee := cmpOrEnv(test.e, e)
			tok := ee.reader
			switch test.tok {
			case "-":
				tok = "-"
			case "mgmt":
				tok = ee.mgmt
			}
			if test.method != "" {
				srv := httptest.NewServer(http.HandlerFunc(ee.h.ServeWatch))
				defer srv.Close()
				r, _ := http.NewRequest(test.method, srv.URL+vaultwatch.Path+"?api-version=7.6", nil)
				r.Header.Set("Authorization", "Bearer "+tok)
				resp, err := srv.Client().Do(r)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != test.status {
					t.Fatalf("status %d, want %d", resp.StatusCode, test.status)
				}
				return
			}
			if status, _ := ee.openWatch(t, tok, test.objs...); status != test.status {
				t.Fatalf("status %d, want %d", status, test.status)
			}
		})
	}
}

func cmpOrEnv(a, b *env) *env {
	if a != nil {
		return a
	}
	return b
}
