package exhaust

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
)

// bigJWT is an RS256-shaped JWT whose header is about n bytes of base64:
// a kid padded out, then a claims part and a signature.
func bigJWT(n int) string {
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": strings.Repeat("k", n*3/4)})
	enc := base64.RawURLEncoding
	return enc.EncodeToString(header) + "." + enc.EncodeToString([]byte(`{"sub":"x"}`)) + "." + enc.EncodeToString(make([]byte, 256))
}

// TestOversizedInput sends the real server what a hostile client might
// in one request: a JWT with a 1 MB header (as a bearer token, and as a
// client assertion at the authority), one just inside the header limit,
// and oversized and deeply nested JSON bodies. Each is refused fast with a
// clear error in the API's own shape, and nothing stored is lost.
func TestOversizedInput(t *testing.T) {
	d := startDev(t)
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/")
	putSecret(t, hc, tok, base+"/secrets/kept?api-version=7.6", "kept through the flood")
	roots, err := httpclient.RootPool(d.Env.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	// HTTP/1.1: over HTTP/2, Go's client itself refuses to send a header
	// list over the server's advertised limit, and the server never sees
	// it.
	h1 := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext:     hc.Transport.(*http.Transport).DialContext,
		TLSClientConfig: &tls.Config{RootCAs: roots},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	type answer struct {
		status  int
		body    string
		elapsed time.Duration
	}
	do := func(req *http.Request) answer {
		t.Helper()
		start := time.Now()
		resp, err := h1.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return answer{resp.StatusCode, string(b), time.Since(start)}
	}
	azureError := func(a answer) (code, msg string) {
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal([]byte(a.body), &e)
		return e.Error.Code, e.Error.Message
	}
	oauthError := func(a answer) (code, desc string) {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		json.Unmarshal([]byte(a.body), &e)
		return e.Error, e.Description
	}
	secretURL := base + "/secrets/kept?api-version=7.6"

	// A 1 MB bearer token: over the server's 64 KiB header limit, refused
	// by net/http before any handler, let alone a base64 or JSON parser.
	huge := bigJWT(1 << 20)
	req, _ := http.NewRequest("GET", secretURL, nil)
	req.Header.Set("Authorization", "Bearer "+huge)
	a := do(req)
	t.Logf("a bearer token with a 1 MB header: %d in %s", a.status, a.elapsed.Round(time.Microsecond))
	if a.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 1 MB bearer token: %d %s, want 431", a.status, a.body)
	}

	// Inside the header limit but over the verifier's 16 KiB: 401 in
	// Key Vault's shape, naming the limit, before the token is parsed.
	req, _ = http.NewRequest("GET", secretURL, nil)
	req.Header.Set("Authorization", "Bearer "+bigJWT(48<<10))
	a = do(req)
	code, msg := azureError(a)
	t.Logf("a bearer token with a 48 KiB header: %d in %s: %s", a.status, a.elapsed.Round(time.Microsecond), msg)
	if a.status != http.StatusUnauthorized || code != "Unauthorized" || !strings.Contains(msg, "16384-byte limit") {
		t.Errorf("a 48 KiB bearer token: %d %s", a.status, a.body)
	}

	// At the authority, as a client assertion: the 1 MB one is over the
	// form's 64 KiB limit (413); a 48 KiB one over the assertion's 16 KiB
	// (401 invalid_client). Both in AAD's error shape.
	au, _ := url.Parse(d.Env.AuthorityHost)
	tokenURL := au.JoinPath(d.Env.TenantID, "oauth2/v2.0/token").String()
	for _, c := range []struct {
		size   int
		status int
		code   string
		says   string
	}{
		{1 << 20, http.StatusRequestEntityTooLarge, "invalid_request", "65536-byte limit"},
		{48 << 10, http.StatusUnauthorized, "invalid_client", "16384-byte limit"},
	} {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {d.Env.ClientID}, "scope": {strings.TrimSuffix(d.Env.AuthorityHost, "/") + "/.default"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {bigJWT(c.size)}}
		req, _ := http.NewRequest("POST", tokenURL, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		a := do(req)
		code, desc := oauthError(a)
		t.Logf("a client assertion with a %d KiB header: %d in %s: %s", c.size>>10, a.status, a.elapsed.Round(time.Microsecond), desc)
		if a.status != c.status || code != c.code || !strings.Contains(desc, c.says) {
			t.Errorf("a %d-byte client assertion: %d %s", c.size, a.status, a.body)
		}
	}

	// Bodies: 1 MB of JSON, and JSON nested 100,000 deep inside the limit.
	for _, c := range []struct {
		name, body string
		status     int
		code, says string
	}{
		{"a 1 MB body", `{"value":"` + strings.Repeat("x", 1<<20) + `"}`, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "262144-byte limit"},
		{"a body nested 100,000 deep", `{"value":"v","tags":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`, http.StatusBadRequest, "BadParameter", "exceeded max depth"},
	} {
		req, _ := http.NewRequest("PUT", base+"/secrets/kept?api-version=7.6", bytes.NewReader([]byte(c.body)))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		a := do(req)
		code, msg := azureError(a)
		t.Logf("%s: %d in %s: %s", c.name, a.status, a.elapsed.Round(time.Microsecond), msg)
		if a.status != c.status || code != c.code || !strings.Contains(msg, c.says) {
			t.Errorf("%s: %d %s", c.name, a.status, a.body)
		}
	}

	// Nothing was lost, and the server still serves.
	req, _ = http.NewRequest("GET", secretURL, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	a = do(req)
	var s struct{ Value string }
	json.Unmarshal([]byte(a.body), &s)
	if a.status != 200 || s.Value != "kept through the flood" {
		t.Fatalf("the secret after the oversized requests: %d %s", a.status, a.body)
	}
}
