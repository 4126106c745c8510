package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// Forged bearer tokens: each is refused by the vault with 401 and the
// Bearer challenge, and by the management plane with 401.
func TestForgedBearerTokens(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	good := adminToken(t, env, env.Endpoints.Resource())
	parts := strings.Split(good, ".")
	var hdr, body map[string]any
	b, _ := base64.RawURLEncoding.DecodeString(parts[0])
	json.Unmarshal(b, &hdr)
	b, _ = base64.RawURLEncoding.DecodeString(parts[1])
	json.Unmarshal(b, &body)
	kid := hdr["kid"].(string)
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	withHeader := func(h map[string]any) string {
		nh := map[string]any{}
		for k, v := range hdr {
			nh[k] = v
		}
		for k, v := range h {
			nh[k] = v
		}
		return enc(nh) + "." + parts[1] + "." + parts[2]
	}
	withClaims := func(c map[string]any) string {
		nc := map[string]any{}
		for k, v := range body {
			nc[k] = v
		}
		for k, v := range c {
			nc[k] = v
		}
		return parts[0] + "." + enc(nc) + "." + parts[2]
	}
	// The authority's published key, as an attacker fetches it.
	var set jose.JSONWebKeySet
	if code, _, raw := call(t, env, "GET", env.Endpoints.AuthorityURL()+"/"+env.State.TenantID+"/discovery/v2.0/keys", "", ""); code != 200 {
		t.Fatalf("JWKS: %d", code)
	} else if err := json.Unmarshal([]byte(raw), &set); err != nil {
		t.Fatal(err)
	}
	pub := set.Keys[0].Key.(*rsa.PublicKey)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	pemPub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	sign := func(alg jose.SignatureAlgorithm, key any, kid string, c map[string]any) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Signed(s).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	evil, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	cases := map[string]string{
		// CVE-2015-9235 class (node-jsonwebtoken), RFC 8725 §2.1: "none".
		"alg confusion: alg none":            enc(map[string]string{"alg": "none", "typ": "JWT", "kid": kid}) + "." + parts[1] + ".",
		"alg confusion: alg None mixed case": enc(map[string]string{"alg": "None", "typ": "JWT", "kid": kid}) + "." + parts[1] + ".",
		// CVE-2016-10555 class: HMAC keyed with the published RSA key.
		"alg confusion: HS256 keyed with the public key (DER)": sign(jose.HS256, der, kid, body),
		"alg confusion: HS256 keyed with the public key (PEM)": sign(jose.HS256, pemPub, kid, body),
		// RFC 8725 §2.1: only RS256 is issued, so only RS256 verifies.
		"alg confusion: PS256 by another key under the real kid": sign(jose.PS256, evil, kid, body),
		"alg confusion: header alg rewritten to RS512":           withHeader(map[string]any{"alg": "RS512"}),
		"alg confusion: ES256 by an attacker's EC key":           sign(jose.ES256, ecKey, kid, body),
		"kid: the real kid, signed by an attacker's key":         sign(jose.RS256, evil, kid, body),
		"kid: oversized (4 KiB)":                                 sign(jose.RS256, evil, strings.Repeat("k", 4<<10), body),
		"kid: path traversal":                                    sign(jose.RS256, evil, "../../../../dev/null", body),
		"kid: SQL-style injection":                               sign(jose.RS256, evil, "x' OR '1'='1", body),
		"kid: absent":                                            withHeader(map[string]any{"kid": nil}),
		"kid: embedded jwk header (CVE-2018-0114 class)": func() string {
			s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: evil}, (&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
			tok, _ := jwt.Signed(s).Claims(body).Serialize()
			return tok
		}(),
		"tampered payload: another object id":         withClaims(map[string]any{"oid": "00000000-0000-0000-0000-000000000001"}),
		"tenant confusion: tid rewritten":             withClaims(map[string]any{"tid": "00000000-0000-0000-0000-00000000beef"}),
		"signature stripped":                          parts[0] + "." + parts[1] + ".",
		"JWE-shaped token (five parts)":               parts[0] + "." + parts[1] + ".." + parts[2] + ".x",
		"audience confusion: other tenant's forged":   sign(jose.RS256, evil, kid, map[string]any{"aud": body["aud"], "iss": "https://login.example.com/other/v2.0", "exp": body["exp"]}),
		"expired: exp in the past, re-signed by evil": sign(jose.RS256, evil, kid, map[string]any{"aud": body["aud"], "iss": body["iss"], "exp": time.Now().Add(-time.Hour).Unix()}),
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			code, e, _ := vaultCall(t, env, "GET", "/secrets/x?api-version=7.6", tok, "")
			if code != 401 || e.Error.Code != "Unauthorized" {
				t.Fatalf("data plane: %d %s %q", code, e.Error.Code, e.Error.Message)
			}
			if code, _, _ := mgmtCall(t, env, "GET", "vaults", tok, ""); code != 401 {
				t.Fatalf("management plane: %d", code)
			}
		})
	}
	// The good token still works: the refusals above prove the checks,
	// not a broken setup.
	if code, _, _ := vaultCall(t, env, "GET", "/secrets?api-version=7.6", good, ""); code != 200 {
		t.Fatalf("the unmodified token: %d", code)
	}
}

// Audience and tenant confusion: a token for one plane or tenant is never
// accepted by another.
func TestAudienceAndTenantConfusion(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	data := adminToken(t, env, env.Endpoints.Resource())
	mgmt := adminToken(t, env, mgmtResource)
	t.Run("audience confusion: a management token on the data plane", func(t *testing.T) {
		code, e, _ := vaultCall(t, env, "GET", "/secrets?api-version=7.6", mgmt, "")
		if code != 401 || !strings.Contains(e.Error.Message, "audience") {
			t.Fatalf("%d %q", code, e.Error.Message)
		}
	})
	t.Run("audience confusion: a data-plane token on the management plane", func(t *testing.T) {
		if code, _, _ := mgmtCall(t, env, "GET", "vaults", data, ""); code != 401 {
			t.Fatalf("%d", code)
		}
	})
	t.Run("audience confusion: no token for a resource the authority does not serve", func(t *testing.T) {
		status, body := tokenFor(t, env, env.State.TenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {env.Admin.ClientID},
			"client_secret": {env.Admin.ClientSecret}, "scope": {"https://vault.azure.net/.default"}})
		if status == 200 {
			t.Fatalf("a token for Azure's vault resource was issued: %v", claims(t, body["access_token"].(string))["aud"])
		}
	})
	t.Run("tenant confusion: the tenant's credentials at another tenant's endpoint", func(t *testing.T) {
		for _, tenant := range []string{"00000000-0000-0000-0000-00000000beef", "common", "organizations", "..%2F" + env.State.TenantID} {
			status, body := tokenFor(t, env, tenant, url.Values{"grant_type": {"client_credentials"}, "client_id": {env.Admin.ClientID},
				"client_secret": {env.Admin.ClientSecret}, "scope": {env.Endpoints.Resource() + "/.default"}})
			if status == 200 {
				tid := claims(t, body["access_token"].(string))["tid"]
				if tid != env.State.TenantID {
					t.Fatalf("tenant %s issued a token with tid %v", tenant, tid)
				}
			}
		}
	})
}

// Tenant confusion with real credentials: another tenant's administrator,
// holding Owner and Key Vault Administrator at its own tenant's root, gets
// valid tokens from its own tenant, and none of them opens this tenant's
// vault or management plane.
func TestCrossTenantAdministrator(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	ctx := context.Background()
	other, err := env.Server.Authority.CreateTenant(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	sp, secret, err := env.Server.Authority.CreateServicePrincipal(ctx, other.ID, "outsider")
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{rbac.OwnerID, rbac.KeyVaultAdministratorID} {
		if _, err := env.Server.Roles.Create(ctx, rbac.Assignment{TenantID: other.ID, RoleID: role, PrincipalID: sp.ObjectID,
			PrincipalType: authority.TypeServicePrincipal, Scope: rbac.Root, CreatedBy: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	token := func(tenant, resource string) (int, string) {
		status, body := tokenFor(t, env, tenant, url.Values{"grant_type": {"client_credentials"}, "client_id": {sp.AppID},
			"client_secret": {secret}, "scope": {resource + "/.default"}})
		tok, _ := body["access_token"].(string)
		return status, tok
	}
	status, data := token(other.ID, env.Endpoints.Resource())
	if status != 200 {
		t.Fatalf("the outsider's own tenant: %d", status)
	}
	if claims(t, data)["tid"] != other.ID {
		t.Fatalf("tid %v, want %s", claims(t, data)["tid"], other.ID)
	}
	_, mgmt := token(other.ID, mgmtResource)
	admin := adminToken(t, env, env.Endpoints.Resource())
	if code, e, _ := vaultCall(t, env, "PUT", "/secrets/home?api-version=7.6", admin, `{"value":"home-tenant"}`); code != 200 {
		t.Fatalf("seed: %d %s", code, e.Error.Message)
	}
	t.Run("tenant confusion: another tenant's data-plane token on this tenant's vault", func(t *testing.T) {
		for _, path := range []string{"/secrets/home", "/secrets"} {
			if code, _, body := vaultCall(t, env, "GET", path+"?api-version=7.6", data, ""); (code != 401 && code != 403) || strings.Contains(body, "home-tenant") {
				t.Fatalf("%s: %d", path, code)
			}
		}
	})
	t.Run("tenant confusion: another tenant's management token on this tenant's vault", func(t *testing.T) {
		b, _ := json.Marshal(mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &[]string{"get", "list"}})
		policy := string(b)
		for _, c := range []struct{ method, path, body string }{{"GET", "vaults/demo", ""}, {"POST", "vaults/demo/set-policy", policy}} {
			if code, _, _ := mgmtCall(t, env, c.method, c.path, mgmt, c.body); code < 400 {
				t.Fatalf("%s %s: %d", c.method, c.path, code)
			}
		}
		var vaults struct {
			Value []struct {
				Name string `json:"name"`
			} `json:"value"`
		}
		if code, _, body := mgmtCall(t, env, "GET", "vaults", mgmt, ""); code == 200 {
			json.Unmarshal([]byte(body), &vaults)
			for _, v := range vaults.Value {
				if v.Name == "demo" {
					t.Fatal("the other tenant lists this tenant's vault")
				}
			}
		}
	})
	t.Run("tenant confusion: another tenant's credentials at this tenant's token endpoint", func(t *testing.T) {
		if status, tok := token(env.State.TenantID, env.Endpoints.Resource()); status == 200 {
			t.Fatalf("issued, tid %v", claims(t, tok)["tid"])
		}
	})
}

// jti replay (RFC 7523 §3, Entra ID's single-use client assertions): a
// certificate-signed client assertion is accepted once.
func TestClientAssertionReplay(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	sp := servicePrincipal(t, env, "cert-app")
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cert-app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	manage(t, env, "POST", "service-principals/"+sp.AppID+"/credentials",
		mgmthttp.CredentialsIn{CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}, nil)
	sum := sha256.Sum256(der)
	aud := env.Endpoints.AuthorityURL() + "/" + env.State.TenantID + "/oauth2/v2.0/token"
	assertion := func(jti string) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.PS256, Key: key},
			(&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t#S256", base64.RawURLEncoding.EncodeToString(sum[:])))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		c := jwt.Claims{Issuer: sp.AppID, Subject: sp.AppID, Audience: jwt.Audience{aud}, ID: jti,
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}
		tok, err := jwt.Signed(s).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	exchange := func(a string) (int, string) {
		status, body := tokenFor(t, env, env.State.TenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {sp.AppID},
			"scope": {env.Endpoints.Resource() + "/.default"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}})
		d, _ := body["error_description"].(string)
		return status, d
	}
	t.Run("jti replay: the same assertion twice", func(t *testing.T) {
		a := assertion("jti-1")
		if code, d := exchange(a); code != 200 {
			t.Fatalf("first use: %d %s", code, d)
		}
		if code, d := exchange(a); code != 401 || !strings.Contains(d, "already used") {
			t.Fatalf("replay: %d %s", code, d)
		}
	})
	t.Run("jti replay: a new assertion reusing the jti", func(t *testing.T) {
		if code, d := exchange(assertion("jti-1")); code != 401 || !strings.Contains(d, "already used") {
			t.Fatalf("%d %s", code, d)
		}
	})
	t.Run("jti replay: an assertion without a jti", func(t *testing.T) {
		if code, d := exchange(assertion("")); code != 401 || !strings.Contains(d, "jti") {
			t.Fatalf("%d %s", code, d)
		}
	})
}
