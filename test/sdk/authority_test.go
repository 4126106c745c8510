package sdk

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func getJSON(t *testing.T, env *testserver.Env, u string, out any) int {
	t.Helper()
	resp, err := env.Client.HTTP.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(out)
	return resp.StatusCode
}

func jwks(t *testing.T, env *testserver.Env) jose.JSONWebKeySet {
	var set jose.JSONWebKeySet
	if s := getJSON(t, env, env.Endpoints.AuthorityURL()+"/"+env.State.TenantID+"/discovery/v2.0/keys", &set); s != 200 {
		t.Fatalf("JWKS: %d", s)
	}
	return set
}

// Every forged token is refused by the vault with 401 and the challenge.
func TestTokenForgerySuite(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	good := adminToken(t, env, env.Endpoints.Resource())
	parts := strings.Split(good, ".")
	var hdr map[string]any
	b, _ := base64.RawURLEncoding.DecodeString(parts[0])
	json.Unmarshal(b, &hdr)
	var claims map[string]any
	b, _ = base64.RawURLEncoding.DecodeString(parts[1])
	json.Unmarshal(b, &claims)
	kid := hdr["kid"].(string)
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }

	// HS256 keyed with the published RSA public key (algorithm confusion).
	pub := jwks(t, env).Keys[0].Key.(*rsa.PublicKey)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: der}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
	hsTok, _ := jwt.Signed(hs).Claims(claims).Serialize()
	// The real kid, signed by an attacker's key.
	evil, _ := rsa.GenerateKey(rand.Reader, 2048)
	swap, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: evil, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	swapTok, _ := jwt.Signed(swap).Claims(claims).Serialize()
	// The payload changed to someone else's object id, signature kept.
	other := map[string]any{}
	for k, v := range claims {
		other[k] = v
	}
	other["oid"] = "00000000-0000-0000-0000-000000000001"
	tampered := parts[0] + "." + enc(other) + "." + parts[2]

	for name, tok := range map[string]string{
		"alg none":      enc(map[string]string{"alg": "none", "typ": "JWT"}) + "." + parts[1] + ".",
		"HS256 pub key": hsTok,
		"kid swap":      swapTok,
		"tampered":      tampered,
		"truncated sig": parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-4],
	} {
		resp, e := raw(t, env, "GET", "/secrets/x?api-version=7.6", tok, "")
		if resp.StatusCode != 401 || e.Error.Code != "Unauthorized" || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %s %q", name, resp.StatusCode, e.Error.Code, e.Error.Message)
		}
	}
}

// A token is bound to the identity it was issued for: identity B's token
// does not act as identity A, and A's federated assertion does not log in as B.
func TestTokenForOneIdentityIsNotAnother(t *testing.T) {
	env, iss, a := federatedEnv(t)
	var b mgmthttp.IdentityOut
	manage(t, env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "other-identity", ResourceGroup: "apps"}, &b)
	manage(t, env, "PUT", "identities/apps/other-identity/federated-credentials/k8s", map[string]any{
		"issuer": iss.URL, "subject": "system:serviceaccount:default:other", "audiences": []string{"api://AzureADTokenExchange"}}, nil)
	assertA := iss.Token(t, "system:serviceaccount:default:app", []string{"api://AzureADTokenExchange"}, time.Time{}, time.Time{})
	form := func(clientID, assertion string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "scope": {env.Endpoints.Resource() + "/.default"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
	}
	// A's assertion with B's client id: refused, naming the presented subject
	// but not the one B trusts.
	status, body, _ := tokenFor(t, env, form(b.ClientID, assertA))
	desc, _ := body["error_description"].(string)
	if status != 401 || !strings.Contains(desc, "subject") || !strings.Contains(desc, "default:app") || strings.Contains(desc, "default:other") || strings.Contains(desc, assertA[20:60]) {
		t.Fatalf("A's assertion as B: %d %s", status, desc)
	}
	// B's own token carries B's object id and is denied A's secret.
	assertB := iss.Token(t, "system:serviceaccount:default:other", []string{"api://AzureADTokenExchange"}, time.Time{}, time.Time{})
	status, body, _ = tokenFor(t, env, form(b.ClientID, assertB))
	if status != 200 {
		t.Fatalf("B's own exchange: %d %v", status, body)
	}
	tokB := body["access_token"].(string)
	if c := claimsOf(t, tokB); c["oid"] != b.PrincipalID {
		t.Fatalf("B's token has oid %v", c["oid"])
	}
	resp, e := raw(t, env, "GET", "/secrets/wi-secret?api-version=7.6", tokB, "")
	if resp.StatusCode != 403 || !strings.Contains(e.Error.Message, b.PrincipalID) {
		t.Fatalf("B read A's secret: %d %s", resp.StatusCode, e.Error.Message)
	}
	_ = a
}

func TestSigningKeyRotationOverlap(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	env := testserver.Start(t, testserver.Options{Now: func() time.Time { return time.Unix(now.Load(), 0) }})
	seed(t, env, "k", "v")
	old := adminToken(t, env, env.Endpoints.Resource())
	if n := len(jwks(t, env).Keys); n != 1 {
		t.Fatalf("JWKS has %d keys before rotation", n)
	}
	var out struct{ KID string }
	manage(t, env, "POST", "operator/rotate-signing-key", nil, &out)
	set := jwks(t, env)
	if len(set.Keys) != 2 || set.Keys[1].KeyID != out.KID {
		t.Fatalf("JWKS after rotation: %d keys", len(set.Keys))
	}
	// Tokens signed by the old key keep working until they expire.
	if resp, e := raw(t, env, "GET", "/secrets/k?api-version=7.6", old, ""); resp.StatusCode != 200 {
		t.Fatalf("old token after rotation: %d %s", resp.StatusCode, e.Error.Message)
	}
	// New tokens use the new key.
	status, body, _ := tokenFor(t, env, url.Values{"grant_type": {"client_credentials"}, "client_id": {env.Admin.ClientID},
		"client_secret": {env.Admin.ClientSecret}, "scope": {env.Endpoints.Resource() + "/.default"}})
	if status != 200 {
		t.Fatal(status)
	}
	var hdr struct{ Kid string }
	b, _ := base64.RawURLEncoding.DecodeString(strings.Split(body["access_token"].(string), ".")[0])
	json.Unmarshal(b, &hdr)
	if hdr.Kid != out.KID {
		t.Fatalf("new token signed with %s, want %s", hdr.Kid, out.KID)
	}
	// Once every token of the old key has expired, the key leaves the JWKS.
	now.Add(2 * 3600)
	if n := len(jwks(t, env).Keys); n != 1 {
		t.Fatalf("JWKS still has %d keys after the old tokens expired", n)
	}
}

func TestTokenRateLimit(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: 0.5})
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {env.Admin.ClientID},
		"client_secret": {env.Admin.ClientSecret}, "scope": {env.Endpoints.Resource() + "/.default"}}
	var last int
	var hdr http.Header
	var body map[string]any
	for range 5 {
		last, body, hdr = tokenFor(t, env, form)
		if last == 429 {
			break
		}
	}
	if last != 429 || hdr.Get("Retry-After") == "" || !strings.Contains(body["error_description"].(string), env.Admin.ClientID) {
		t.Fatalf("no 429 with Retry-After: %d %v %v", last, hdr, body)
	}
}

func TestInstanceDiscovery(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	var out struct {
		TenantDiscoveryEndpoint string `json:"tenant_discovery_endpoint"`
		Metadata                []struct {
			PreferredNetwork string `json:"preferred_network"`
		} `json:"metadata"`
	}
	q := url.Values{"api-version": {"1.1"}, "authorization_endpoint": {env.Endpoints.AuthorityURL() + "/" + env.State.TenantID + "/oauth2/v2.0/authorize"}}
	if s := getJSON(t, env, env.Endpoints.AuthorityURL()+"/common/discovery/instance?"+q.Encode(), &out); s != 200 {
		t.Fatal(s)
	}
	want := env.Endpoints.AuthorityURL() + "/" + env.State.TenantID + "/v2.0/.well-known/openid-configuration"
	if out.TenantDiscoveryEndpoint != want || len(out.Metadata) != 1 || out.Metadata[0].PreferredNetwork != env.Endpoints.Apex() {
		t.Fatalf("instance discovery = %+v", out)
	}
	var doc struct{ Issuer, TokenEndpoint string }
	getJSON(t, env, want, &doc)
	if doc.Issuer != env.Endpoints.AuthorityURL()+"/"+env.State.TenantID+"/v2.0" {
		t.Fatalf("issuer %s", doc.Issuer)
	}
}

// The ADFS-style discovery document, at the path MSAL derives from the
// login endpoint {authority}/adfs that the Azure CLI is given: the default
// tenant's endpoints, from which MSAL takes the tenant (the token
// endpoint's first path segment).
func TestADFSDiscovery(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	var doc struct {
		Issuer                string `json:"issuer"`
		TokenEndpoint         string `json:"token_endpoint"`
		AuthorizationEndpoint string `json:"authorization_endpoint"`
		JWKSURI               string `json:"jwks_uri"`
	}
	if s := getJSON(t, env, env.Endpoints.AuthorityURL()+"/adfs/.well-known/openid-configuration", &doc); s != 200 {
		t.Fatal(s)
	}
	base := env.Endpoints.AuthorityURL() + "/" + env.State.TenantID
	if doc.Issuer != base+"/v2.0" || doc.TokenEndpoint != base+"/oauth2/v2.0/token" || doc.AuthorizationEndpoint != base+"/oauth2/v2.0/authorize" || doc.JWKSURI != base+"/discovery/v2.0/keys" {
		t.Fatalf("the ADFS discovery document = %+v, want the default tenant %s's endpoints", doc, env.State.TenantID)
	}
}
