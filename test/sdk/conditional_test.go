package sdk

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/testserver"
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
