package sdk

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// getWith is a GET with an optional If-None-Match, returning status, ETag
// and body length.
func getWith(t *testing.T, env *testserver.Env, path, tok, inm string) (int, string, int) {
	t.Helper()
	req, _ := http.NewRequest("GET", strings.TrimSuffix(env.Admin.VaultURL, "/")+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if inm != "" {
		req.Header.Set("If-None-Match", inm)
	}
	resp, err := env.Client.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("ETag"), len(b)
}

// A node that holds a value asks with If-None-Match: an unchanged object
// costs a 304 and no value, but only after the same authorization and
// enabled checks as a full read.
func TestConditionalReads(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	admin := adminToken(t, env, env.Endpoints.Resource())
	raw(t, env, "PUT", "/secrets/s?api-version=7.6", admin, `{"value":"v1"}`)
	raw(t, env, "POST", "/keys/k/create?api-version=7.6", admin, `{"kty":"EC"}`)
	raw(t, env, "POST", "/certificates/c/import?api-version=7.6", admin, `{"value":`+jsonString(testPEM(t, "c"))+`}`)
	for _, path := range []string{"/secrets/s", "/keys/k", "/certificates/c"} {
		p := path + "?api-version=7.6"
		status, etag, n := getWith(t, env, p, admin, "")
		if status != 200 || etag == "" || n == 0 {
			t.Fatalf("%s: %d etag %q", path, status, etag)
		}
		if status, again, n := getWith(t, env, p, admin, etag); status != http.StatusNotModified || again != etag || n != 0 {
			t.Fatalf("%s with If-None-Match: %d, etag %q, %d body bytes", path, status, again, n)
		}
		if status, _, _ := getWith(t, env, p, admin, `"other"`); status != 200 {
			t.Fatalf("%s with a stale tag: %d", path, status)
		}
	}
	_, etag, _ := getWith(t, env, "/secrets/s?api-version=7.6", admin, "")
	// outContentType is another representation, with another tag.
	_, certTag, _ := getWith(t, env, "/secrets/c?api-version=7.6", admin, "")
	if _, pemTag, _ := getWith(t, env, "/secrets/c?api-version=7.6&outContentType=application/x-pem-file", admin, ""); pemTag == certTag {
		t.Fatal("the PEM representation has the PFX's tag")
	}
	// A caller without access gets 403, not 304, even with the right tag.
	_, tok := principal(t, env, "nobody")
	if status, _, _ := getWith(t, env, "/secrets/s?api-version=7.6", tok, etag); status != http.StatusForbidden {
		t.Fatalf("unauthorized conditional read: %d", status)
	}
	// Any update changes the tag, even within the same second.
	raw(t, env, "PATCH", "/secrets/s?api-version=7.6", admin, `{"contentType":"text/plain"}`)
	if status, _, _ := getWith(t, env, "/secrets/s?api-version=7.6", admin, etag); status != 200 {
		t.Fatalf("conditional read after an update: %d", status)
	}
	// A disabled version is refused whatever the tag.
	_, etag, _ = getWith(t, env, "/secrets/s?api-version=7.6", admin, "")
	raw(t, env, "PATCH", "/secrets/s?api-version=7.6", admin, `{"attributes":{"enabled":false}}`)
	if status, _, _ := getWith(t, env, "/secrets/s?api-version=7.6", admin, etag); status != http.StatusForbidden {
		t.Fatalf("conditional read of a disabled secret: %d", status)
	}
}

// heldGet is a conditional GET that asks to be held (Prefer: wait=N).
type heldAnswer struct {
	status  int
	etag    string
	applied string
	body    string
	took    time.Duration
}

func heldGet(env *testserver.Env, path, tok, inm, prefer string) (heldAnswer, error) {
	req, _ := http.NewRequest("GET", strings.TrimSuffix(env.Admin.VaultURL, "/")+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("If-None-Match", inm)
	req.Header.Set("Prefer", prefer)
	start := time.Now()
	resp, err := env.Client.HTTP.Do(req)
	if err != nil {
		return heldAnswer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return heldAnswer{resp.StatusCode, resp.Header.Get("ETag"), resp.Header.Get("Preference-Applied"), string(b), time.Since(start)}, nil
}

// waitHeld waits until the server holds a read of n objects.
func waitHeld(t *testing.T, env *testserver.Env, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for env.Server.Changes().Watching() != n {
		if time.Now().After(deadline) {
			t.Fatalf("the server never held the read: %d objects watched, want %d", env.Server.Changes().Watching(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A conditional read with Prefer: wait=N is held while the object is
// unchanged, answered the moment it changes, and only by a change to that
// object: push rotation's vault side.
func TestHeldConditionalReads(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	admin := adminToken(t, env, env.Endpoints.Resource())
	raw(t, env, "PUT", "/secrets/s?api-version=7.6", admin, `{"value":"v1"}`)
	raw(t, env, "PUT", "/secrets/other?api-version=7.6", admin, `{"value":"o1"}`)
	_, etag, _ := getWith(t, env, "/secrets/s?api-version=7.6", admin, "")

	// Unchanged: held for the wait, then 304, saying it was held.
	a, err := heldGet(env, "/secrets/s?api-version=7.6", admin, etag, "wait=1")
	if err != nil || a.status != http.StatusNotModified || a.applied != "wait=1" || a.took < time.Second {
		t.Fatalf("held read of an unchanged secret: %+v %v", a, err)
	}
	// A malformed preference is ignored (RFC 7240): answered at once.
	if a, err := heldGet(env, "/secrets/s?api-version=7.6", admin, etag, "wait=soon"); err != nil || a.status != http.StatusNotModified || a.applied != "" {
		t.Fatalf("read with a malformed wait: %+v %v", a, err)
	}

	// Another object's change does not end the hold.
	done := make(chan heldAnswer, 1)
	go func() { a, _ := heldGet(env, "/secrets/s?api-version=7.6", admin, etag, "wait=2"); done <- a }()
	waitHeld(t, env, 1)
	raw(t, env, "PUT", "/secrets/other?api-version=7.6", admin, `{"value":"o2"}`)
	if a := <-done; a.status != http.StatusNotModified || a.took < 2*time.Second {
		t.Fatalf("a change to another secret ended the hold: %+v", a)
	}

	// A new version answers the held read with it, long before the wait.
	go func() {
		a, _ := heldGet(env, "/secrets/s?api-version=7.6", admin, etag, "return=minimal, wait=30")
		done <- a
	}()
	waitHeld(t, env, 1)
	raw(t, env, "PUT", "/secrets/s?api-version=7.6", admin, `{"value":"v2"}`)
	a = <-done
	if a.status != http.StatusOK || !strings.Contains(a.body, `"value":"v2"`) || a.etag == etag || a.applied != "" {
		t.Fatalf("held read after a new version: %d %q applied %q", a.status, a.etag, a.applied)
	}
	if env.Server.Changes().Watching() != 0 {
		t.Fatalf("%d objects still watched after the hold", env.Server.Changes().Watching())
	}

	// A caller without access is refused at once, never held.
	_, tok := principal(t, env, "nobody")
	if a, err := heldGet(env, "/secrets/s?api-version=7.6", tok, a.etag, "wait=30"); err != nil || a.status != http.StatusForbidden {
		t.Fatalf("unauthorized held read: %+v %v", a, err)
	}

	// Access revoked while a read is held, then the secret rotated (an
	// incident response): the wake-up finds no access, and refuses.
	oid, reader := principal(t, env, "reader")
	grantSecrets(t, env, oid, "get")
	_, etag, _ = getWith(t, env, "/secrets/s?api-version=7.6", reader, "")
	go func() { a, _ := heldGet(env, "/secrets/s?api-version=7.6", reader, etag, "wait=30"); done <- a }()
	waitHeld(t, env, 1)
	manage(t, env, "POST", "vaults/demo/delete-policy", mgmthttp.PolicyIn{ObjectID: oid}, nil)
	raw(t, env, "PUT", "/secrets/s?api-version=7.6", admin, `{"value":"v3, after the revocation"}`)
	if a := <-done; a.status != http.StatusForbidden || strings.Contains(a.body, "v3") || a.etag != "" {
		t.Fatalf("a held read outlived its caller's access: %d %q etag %q", a.status, a.body, a.etag)
	}
	// Revoked while held with nothing changing: refused at the end too.
	grantSecrets(t, env, oid, "get")
	_, etag, _ = getWith(t, env, "/secrets/s?api-version=7.6", reader, "")
	go func() { a, _ := heldGet(env, "/secrets/s?api-version=7.6", reader, etag, "wait=2"); done <- a }()
	waitHeld(t, env, 1)
	manage(t, env, "POST", "vaults/demo/delete-policy", mgmthttp.PolicyIn{ObjectID: oid}, nil)
	if a := <-done; a.status != http.StatusForbidden {
		t.Fatalf("a held read revoked meanwhile ended with %d, want 403", a.status)
	}
}
