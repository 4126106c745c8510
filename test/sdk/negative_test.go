package sdk

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

type kvError struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		InnerError *struct {
			Code string `json:"code"`
		} `json:"innererror"`
	} `json:"error"`
}

// raw sends one request to the demo vault with an optional bearer token.
func raw(t *testing.T, env *testserver.Env, method, path, tok, body string) (*http.Response, kvError) {
	t.Helper()
	resp, e, _ := rawBody(t, env, method, path, tok, body)
	return resp, e
}

// rawBody is raw that also returns the response body.
func rawBody(t *testing.T, env *testserver.Env, method, path, tok, body string) (*http.Response, kvError, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, strings.TrimSuffix(env.Admin.VaultURL, "/")+path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := env.Client.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e kvError
	data, _ := io.ReadAll(resp.Body)
	json.Unmarshal(data, &e)
	return resp, e, data
}

func expect(t *testing.T, resp *http.Response, e kvError, status int, code string) {
	t.Helper()
	if resp.StatusCode != status || e.Error.Code != code {
		t.Fatalf("%s %s: got %d %q (%s), want %d %q", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, e.Error.Code, e.Error.Message, status, code)
	}
	if e.Error.Message == "" {
		t.Fatalf("%d %s has no message", status, code)
	}
}

func adminToken(t *testing.T, env *testserver.Env, resource string) string {
	t.Helper()
	tok, err := env.Client.Token(context.Background(), resource)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestBadRequests(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	tok := adminToken(t, env, env.Endpoints.Resource())
	v := "?api-version=7.6"

	resp, e := raw(t, env, "GET", "/secrets/x?api-version=9.9", tok, "")
	expect(t, resp, e, 400, "BadParameter")
	if !strings.Contains(e.Error.Message, "9.9") {
		t.Fatalf("api-version error %q does not name the version", e.Error.Message)
	}
	resp, e = raw(t, env, "GET", "/secrets/x", tok, "")
	expect(t, resp, e, 400, "BadParameter")
	for _, ver := range []string{"2015-06-01", "2016-10-01", "7.0", "7.4", "7.6", "7.5-preview.1", "2025-07-01", "2026-04-01"} {
		resp, e = raw(t, env, "GET", "/secrets/missing?api-version="+ver, tok, "")
		expect(t, resp, e, 404, "SecretNotFound")
	}
	for _, ver := range []string{"2016-10-02", "6.0", "7.7", "7"} {
		resp, e = raw(t, env, "GET", "/secrets/missing?api-version="+ver, tok, "")
		expect(t, resp, e, 400, "BadParameter")
	}

	// Seed 002's curl: a vault URL joined with "/secrets" (a double slash)
	// and the 2016-10-01 api-version, read as Key Vault serves it, not
	// redirected. A trailing slash still means the latest version.
	if resp, e = raw(t, env, "PUT", "/secrets/password"+v, tok, `{"value":"from seed 002"}`); resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %+v", resp.StatusCode, e)
	}
	for _, p := range []string{"//secrets/password", "/secrets//password", "//secrets/password/"} {
		resp, _, body := rawBody(t, env, "GET", p+"?api-version=2016-10-01", tok, "")
		var got struct{ Value string }
		json.Unmarshal(body, &got)
		// The client follows redirects: the answer must come from the
		// first request.
		if resp.StatusCode != 200 || resp.Request.URL.Path != p || got.Value != "from seed 002" {
			t.Fatalf("GET %s: %d from %s: %s", p, resp.StatusCode, resp.Request.URL.Path, body)
		}
	}
	// An encoded slash stays inside its segment: with the double slash
	// collapsed, password%2F{version} is still one (invalid) name, never
	// the secret password at that version.
	_, _, body := rawBody(t, env, "GET", "/secrets/password"+v, tok, "")
	var bundle struct{ ID string }
	json.Unmarshal(body, &bundle)
	version := bundle.ID[strings.LastIndex(bundle.ID, "/")+1:]
	resp, e = raw(t, env, "GET", "//secrets/password%2F"+version+v, tok, "")
	expect(t, resp, e, 400, "BadParameter")

	resp, e = raw(t, env, "GET", "/secrets/bad_name"+v, tok, "")
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "PUT", "/secrets/"+strings.Repeat("a", 128)+v, tok, `{"value":"x"}`)
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "GET", "/secrets/ok/not-a-version"+v, tok, "")
	expect(t, resp, e, 400, "BadParameter")

	// Value limit: exactly 25 KiB is fine, one byte more is not.
	c := adminClient(t, env)
	if _, err := c.SetSecret(context.Background(), "big", azsecrets.SetSecretParameters{Value: to.Ptr(strings.Repeat("v", 25*1024))}, nil); err != nil {
		t.Fatalf("a 25 KiB value was refused: %v", err)
	}
	_, err := c.SetSecret(context.Background(), "big", azsecrets.SetSecretParameters{Value: to.Ptr(strings.Repeat("v", 25*1024+1))}, nil)
	respErr(t, err, 400, "BadParameter")
	_, err = c.SetSecret(context.Background(), "ct", azsecrets.SetSecretParameters{Value: to.Ptr("x"), ContentType: to.Ptr(strings.Repeat("c", 256))}, nil)
	respErr(t, err, 400, "BadParameter")

	// Bodies are capped before parsing.
	resp, e = raw(t, env, "PUT", "/secrets/huge"+v, tok, `{"value":"`+strings.Repeat("x", 300<<10)+`"}`)
	expect(t, resp, e, 413, "RequestEntityTooLarge")
	resp, e = raw(t, env, "PUT", "/secrets/j"+v, tok, `{"value":`)
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "PUT", "/secrets/j"+v, tok, `{"value":42}`)
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "PUT", "/secrets/j"+v, tok, `{"contentType":"x"}`)
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "GET", "/secrets"+v+"&maxresults=26", tok, "")
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "GET", "/secrets"+v+"&$skiptoken=!!", tok, "")
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "POST", "/secrets/restore"+v, tok, `{"value":"bm90IGEgYmFja3Vw"}`)
	expect(t, resp, e, 400, "BadParameter")
	resp, e = raw(t, env, "GET", "/nothing/here"+v, tok, "")
	expect(t, resp, e, 404, "NotFound")
}

func TestChallengeAndTokenRejections(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	env := testserver.Start(t, testserver.Options{Now: clock})
	ctx := context.Background()
	v := "?api-version=7.6"

	// No token: the exact challenge, answered before the body is read.
	resp, e := raw(t, env, "PUT", "/secrets/x"+v, "", `{"value":"x"}`)
	expect(t, resp, e, 401, "Unauthorized")
	want := `Bearer authorization="` + env.Endpoints.AuthorityURL() + "/" + env.State.TenantID + `", resource="` + env.Endpoints.Resource() + `"`
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Fatalf("challenge = %s\nwant        %s", got, want)
	}

	good := adminToken(t, env, env.Endpoints.Resource())
	if resp, e := raw(t, env, "GET", "/secrets/none"+v, good, ""); resp.StatusCode != 404 {
		t.Fatalf("a valid token got %d %s", resp.StatusCode, e.Error.Message)
	}
	parts := strings.Split(good, ".")

	// Wrong audience: a management token.
	mgmt := adminToken(t, env, endpoint.ManagementResource)
	// Wrong issuer: a token of another tenant of the same authority.
	other, err := env.Server.Authority.CreateTenant(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	sp, secret, err := env.Server.Authority.CreateServicePrincipal(ctx, other.ID, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	otherTok, err := env.Server.Authority.Token(ctx, authority.TokenRequest{Tenant: other.ID, GrantType: "client_credentials", ClientID: sp.AppID, ClientSecret: secret, Scope: env.Endpoints.Resource() + "/.default"})
	if err != nil {
		t.Fatal(err)
	}
	// Wrong key: a token from another Coffer installation.
	foreign := testserver.Start(t, testserver.Options{})
	foreignTok := adminToken(t, foreign, foreign.Endpoints.Resource())
	// alg none, with the real payload.
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	none := hdr + "." + parts[1] + "."

	cases := map[string]struct{ tok, msg string }{
		"wrong audience": {mgmt, "Invalid audience"},
		"other tenant":   {otherTok.AccessToken, "Invalid issuer"},
		"foreign key":    {foreignTok, "not one of the authority's signing keys"},
		"alg none":       {none, "RS256"},
		"garbage":        {"abc", "RS256"},
	}
	for name, c := range cases {
		resp, e := raw(t, env, "GET", "/secrets/none"+v, c.tok, "")
		if resp.StatusCode != 401 || e.Error.Code != "Unauthorized" || !strings.Contains(e.Error.Message, c.msg) {
			t.Errorf("%s: got %d %s %q, want 401 Unauthorized mentioning %q", name, resp.StatusCode, e.Error.Code, e.Error.Message, c.msg)
		}
		if resp.Header.Get("WWW-Authenticate") != want {
			t.Errorf("%s: 401 without the challenge", name)
		}
	}

	// Expired: the same token two hours later.
	now.Add(2 * 3600)
	resp, e = raw(t, env, "GET", "/secrets/none"+v, good, "")
	if resp.StatusCode != 401 || !strings.Contains(e.Error.Message, "expired") {
		t.Fatalf("expired token: got %d %q", resp.StatusCode, e.Error.Message)
	}
}
