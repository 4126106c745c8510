// Package security is Coffer's security regression suite. Each case is
// named after the advisory or the bug class it keeps fixed (a CVE of the
// projects Coffer replaces, or a class such as "SSRF" or "alg confusion"),
// and runs against real components: the server from testserver, the node
// agent from agenttest with a real kube-apiserver, real tmpfs mounts, and
// real HTTP and SDK clients. Resource exhaustion and fuzzing live in their
// own suites.
package security

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// azErr is Azure's error body.
type azErr struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// call sends method url with a bearer token and body, and returns the
// status, the decoded error (if any) and the raw body.
func call(t testing.TB, env *testserver.Env, method, u, tok, body string) (int, azErr, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := env.Client.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e azErr
	json.Unmarshal(b, &e)
	return resp.StatusCode, e, string(b)
}

// vaultCall is call on vault demo's data plane, path relative to the vault.
func vaultCall(t testing.TB, env *testserver.Env, method, path, tok, body string) (int, azErr, string) {
	t.Helper()
	return call(t, env, method, strings.TrimSuffix(env.Admin.VaultURL, "/")+path, tok, body)
}

// mgmtCall is call on the management plane, path below /coffer/v1/.
func mgmtCall(t testing.TB, env *testserver.Env, method, path, tok, body string) (int, azErr, string) {
	t.Helper()
	return call(t, env, method, env.Endpoints.AuthorityURL()+"/coffer/v1/"+path, tok, body)
}

func adminToken(t testing.TB, env *testserver.Env, resource string) string {
	t.Helper()
	tok, err := env.Client.Token(context.Background(), resource)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func manage(t testing.TB, env *testserver.Env, method, path string, in, out any) {
	t.Helper()
	if err := env.Client.Manage(context.Background(), method, path, in, out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
}

// tokenFor posts a token request to the tenant's v2 endpoint.
func tokenFor(t testing.TB, env *testserver.Env, tenant string, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := env.Client.HTTP.PostForm(env.Endpoints.AuthorityURL()+"/"+tenant+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// servicePrincipal creates a service principal and returns it.
func servicePrincipal(t testing.TB, env *testserver.Env, name string) mgmthttp.SPOut {
	t.Helper()
	var sp mgmthttp.SPOut
	manage(t, env, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &sp)
	return sp
}

// spToken gets sp a token for resource with its client secret.
func spToken(t testing.TB, env *testserver.Env, sp mgmthttp.SPOut, resource string) string {
	t.Helper()
	status, body := tokenFor(t, env, env.State.TenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {sp.AppID},
		"client_secret": {sp.Password}, "scope": {resource + "/.default"}})
	tok, _ := body["access_token"].(string)
	if status != 200 || tok == "" {
		t.Fatalf("token for %s: %d %v", sp.DisplayName, status, body["error_description"])
	}
	return tok
}

var mgmtResource = endpoint.ManagementResource

// claims decodes a JWT's payload without verifying it.
func claims(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond until it holds, for a minute.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
