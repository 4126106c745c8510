package authority

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// The fuzz target's directory, under fixed ids so that seeds can name
// them: one tenant, an application with a client secret and a
// certificate, a managed identity the application may act as, and an
// application with a federated credential.
const (
	fzHost     = "https://login.coffer.example:8443"
	fzVault    = "https://vault.coffer.example:8443"
	fzTenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	fzSub      = "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
	fzApp      = "5e3f2c1a-9b8d-4c7e-a6f5-1d2c3b4a5e6f"
	fzAppOID   = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
	fzSecret   = "Qx8~Zr.V3nLp_2sT9yWc-4hJkM6bNdF1aGe7uIo"
	fzMI       = "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b"
	fzMIOID    = "9c6b4f2e-1d3a-4e5b-8c7d-6f5e4d3c2b1a"
	fzFed      = "3a2b1c0d-9e8f-4a7b-b6c5-d4e3f2a1b0c9"
	fzFedOID   = "6d5c4b3a-2f1e-4d0c-9b8a-7f6e5d4c3b2a"
	fzEndpoint = fzHost + "/" + fzTenant + "/oauth2/v2.0/token"
)

var fzNow = time.Date(2027, 1, 4, 12, 0, 0, 0, time.UTC)

var fzMIResource = rbac.IdentityID(fzSub, "apps", "bound")

// fuzzClientCert is the application's certificate and key, committed test
// material (openssl req -x509, valid to 2036).
func fuzzClientCert(t testing.TB) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		return blk.Bytes
	}
	c, err := x509.ParseCertificate(read("fuzz-client-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(read("fuzz-client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return c, k.(*rsa.PrivateKey)
}

// fuzzDirectory opens an authority over the in-memory engine holding the
// fuzz directory. Federated issuers are unreachable: the target is the
// authority's own checks, and federation has its own.
func fuzzDirectory(t testing.TB) *Authority {
	t.Helper()
	ctx := context.Background()
	now := func() time.Time { return fzNow }
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.Open(ctx, b, now)
	if err != nil {
		t.Fatal(err)
	}
	offline := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no network in the fuzz target")
	}}}
	a, err := Open(ctx, b, Config{Host: fzHost, Resources: []string{fzVault, "https://management.coffer.example"}, Roles: roles, RateLimit: -1,
		Federation: federation.New(federation.Config{Client: offline, Now: now})}, now)
	if err != nil {
		t.Fatal(err)
	}
	tn, _ := json.Marshal(Tenant{ID: fzTenant, DisplayName: "fuzz", SubscriptionID: fzSub, Created: fzNow.Unix()})
	if err := b.Apply(ctx, nil, []barrier.Op{{Key: tenantPrefix + fzTenant, Value: tn}}); err != nil {
		t.Fatal(err)
	}
	salt := []byte("0123456789abcdef")
	cert, _ := fuzzClientCert(t)
	s1, s256 := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw)
	for _, p := range []Principal{
		{Type: TypeServicePrincipal, TenantID: fzTenant, AppID: fzApp, ObjectID: fzAppOID, DisplayName: "app", Created: fzNow.Unix(),
			Secrets: []SecretCredential{{KeyID: NewGUID(), Hint: fzSecret[:3], Salt: salt, Hash: hashSecret(salt, fzSecret), Created: fzNow.Unix()}},
			Certificates: []CertCredential{{KeyID: NewGUID(), DER: cert.Raw, SHA1: hex.EncodeToString(s1[:]), SHA256: hex.EncodeToString(s256[:]),
				Subject: cert.Subject.String(), NotBefore: cert.NotBefore.Unix(), NotAfter: cert.NotAfter.Unix(), Registered: fzNow.Unix()}}},
		{Type: TypeManagedIdentity, TenantID: fzTenant, AppID: fzMI, ObjectID: fzMIOID, DisplayName: "bound", Name: "bound", Created: fzNow.Unix(),
			SubscriptionID: fzSub, ResourceGroup: "apps", ResourceID: fzMIResource},
		{Type: TypeServicePrincipal, TenantID: fzTenant, AppID: fzFed, ObjectID: fzFedOID, DisplayName: "federated", Created: fzNow.Unix()},
	} {
		if err := a.createPrincipal(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AddFederatedCredential(ctx, fzTenant, fzFed, federation.Credential{Name: "aks", Issuer: "https://oidc.example.com/9e1a7b2c-4d5e-4f60-8a1b-2c3d4e5f6a7b/",
		Subject: "system:serviceaccount:default:workload", Audiences: []string{federation.DefaultAudience}}); err != nil {
		t.Fatal(err)
	}
	if _, err := roles.Create(ctx, rbac.Assignment{ID: NewGUID(), TenantID: fzTenant, RoleID: rbac.ManagedIdentityOperatorID,
		PrincipalID: fzAppOID, PrincipalType: TypeServicePrincipal, Scope: fzMIResource}); err != nil {
		t.Fatal(err)
	}
	return a
}

const (
	signRS256 = iota
	signPS256
	signForeign
	signNone
	signRaw
	signModes
)

func b64s(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// fuzzAssertion builds an assertion from a header and claims: signed as
// mode says, or the header itself when mode is signRaw; none if both are
// empty.
func fuzzAssertion(header, claims string, mode byte, key, foreign *rsa.PrivateKey) string {
	if header == "" && claims == "" {
		return ""
	}
	input := b64s(header) + "." + b64s(claims)
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	switch mode % signModes {
	case signRS256:
		sig, _ = rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:])
	case signPS256:
		sig, _ = rsa.SignPSS(rand.Reader, key, crypto.SHA256, digest[:], nil)
	case signForeign:
		sig, _ = rsa.SignPKCS1v15(nil, foreign, crypto.SHA256, digest[:])
	case signRaw:
		return header
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// assertionClaims are a client assertion's claims as MSAL sends them.
type assertionClaims struct {
	Aud any    `json:"aud"`
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Jti string `json:"jti"`
	Nbf *int64 `json:"nbf,omitempty"`
	Iat *int64 `json:"iat,omitempty"`
	Exp *int64 `json:"exp,omitempty"`
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzToken", func(t *testing.T) []fuzzseed.Seed {
		cert, _ := fuzzClientCert(t)
		s1, s256 := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw)
		x5t := base64.RawURLEncoding.EncodeToString(s1[:])
		hdr := `{"alg":"PS256","typ":"JWT","x5t":"` + x5t + `"}`
		hdr256 := `{"alg":"RS256","typ":"JWT","x5t#S256":"` + base64.StdEncoding.EncodeToString(s256[:]) + `"}`
		n := func(d time.Duration) *int64 { v := fzNow.Add(d).Unix(); return &v }
		js := func(c assertionClaims) string { b, _ := json.Marshal(c); return string(b) }
		msal := func(jti string) assertionClaims {
			return assertionClaims{Aud: fzEndpoint, Iss: fzApp, Sub: fzApp, Jti: jti, Nbf: n(-time.Minute), Iat: n(-time.Minute), Exp: n(9 * time.Minute)}
		}
		with := func(c assertionClaims, f func(*assertionClaims)) assertionClaims { f(&c); return c }
		scope := fzVault + "/.default"
		const (
			none = byte(signRS256)
			ps   = byte(signPS256)
		)
		return []fuzzseed.Seed{
			// (client_id, client_secret, assertion header, claims, mode, scope, mi_client_id)
			fuzzseed.S("secret", fzApp, fzSecret, "", "", none, scope, ""),
			fuzzseed.S("secret-msal-scopes", fzApp, fzSecret, "", "", none, "https://vault.coffer.example:8443/.default openid profile offline_access", ""),
			fuzzseed.S("secret-upper-client", strings.ToUpper(fzApp), fzSecret, "", "", none, scope, ""),
			fuzzseed.S("secret-act-for", fzApp, fzSecret, "", "", none, scope, fzMI),
			fuzzseed.S("secret-act-for-unknown", fzApp, fzSecret, "", "", none, scope, "00000000-0000-0000-0000-000000000000"),
			fuzzseed.S("secret-wrong", fzApp, fzSecret[:len(fzSecret)-1]+"X", "", "", none, scope, ""),
			fuzzseed.S("secret-of-managed-identity", fzMI, fzSecret, "", "", none, scope, ""),
			fuzzseed.S("secret-and-assertion", fzApp, fzSecret, hdr, js(msal("d3b07384-d113-4ec8-a0a2-7f1b2c3d4e5f")), ps, scope, ""),
			fuzzseed.S("assertion-msal", fzApp, "", hdr, js(msal("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")), ps, scope, ""),
			fuzzseed.S("assertion-x5t-s256", fzApp, "", hdr256, js(msal("b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e")), none, scope, ""),
			fuzzseed.S("assertion-v1-audience", fzApp, "", hdr, js(with(msal("c3d4e5f6-a7b8-4c9d-0e1f-2a3b4c5d6e7f"), func(c *assertionClaims) { c.Aud = fzHost + "/" + fzTenant + "/oauth2/token" })), ps, scope, ""),
			fuzzseed.S("assertion-aud-array", fzApp, "", hdr, js(with(msal("d4e5f6a7-b8c9-4d0e-1f2a-3b4c5d6e7f80"), func(c *assertionClaims) { c.Aud = []string{"https://elsewhere/token", fzEndpoint} })), ps, scope, fzMI),
			fuzzseed.S("assertion-replayed", fzApp, "", hdr, js(msal("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")), ps, scope, ""),
			fuzzseed.S("assertion-no-jti", fzApp, "", hdr, js(msal("")), ps, scope, ""),
			fuzzseed.S("assertion-long-lived", fzApp, "", hdr, js(with(msal("e5f6a7b8-c9d0-4e1f-2a3b-4c5d6e7f8091"), func(c *assertionClaims) { c.Exp = n(48 * time.Hour) })), ps, scope, ""),
			fuzzseed.S("assertion-expired", fzApp, "", hdr, js(with(msal("f6a7b8c9-d0e1-4f2a-3b4c-5d6e7f809102"), func(c *assertionClaims) { c.Exp = n(-2 * time.Minute) })), ps, scope, ""),
			fuzzseed.S("assertion-no-exp", fzApp, "", hdr, js(with(msal("0718293a-4b5c-4d6e-7f80-91a2b3c4d5e6"), func(c *assertionClaims) { c.Exp = nil })), ps, scope, ""),
			fuzzseed.S("assertion-sub-other", fzApp, "", hdr, js(with(msal("18293a4b-5c6d-4e7f-8091-a2b3c4d5e6f7"), func(c *assertionClaims) { c.Sub = fzMI })), ps, scope, ""),
			fuzzseed.S("assertion-foreign-key", fzApp, "", hdr, js(msal("293a4b5c-6d7e-4f80-91a2-b3c4d5e6f708")), byte(signForeign), scope, ""),
			fuzzseed.S("assertion-alg-none", fzApp, "", `{"alg":"none","typ":"JWT"}`, js(msal("3a4b5c6d-7e8f-4091-a2b3-c4d5e6f70819")), byte(signNone), scope, ""),
			fuzzseed.S("assertion-hs256", fzApp, "", `{"alg":"HS256","typ":"JWT","x5t":"`+x5t+`"}`, js(msal("4b5c6d7e-8f90-41a2-b3c4-d5e6f708192a")), none, scope, ""),
			fuzzseed.S("assertion-unknown-thumbprint", fzApp, "", `{"alg":"PS256","typ":"JWT","x5t":"AAAAAAAAAAAAAAAAAAAAAAAAAAA"}`, js(msal("5c6d7e8f-9001-42b3-c4d5-e6f708192a3b")), ps, scope, ""),
			fuzzseed.S("assertion-bad-thumbprint", fzApp, "", `{"alg":"PS256","typ":"JWT","x5t":"%%%"}`, js(msal("6d7e8f90-0112-43c4-d5e6-f708192a3b4c")), ps, scope, ""),
			fuzzseed.S("federated-unreachable", fzFed, "", `{"alg":"RS256","kid":"k1"}`, `{"iss":"https://oidc.example.com/9e1a7b2c-4d5e-4f60-8a1b-2c3d4e5f6a7b/","sub":"system:serviceaccount:default:workload","aud":["api://AzureADTokenExchange"],"exp":1799000000}`, none, scope, ""),
			fuzzseed.S("raw-garbage", fzApp, "", "eyJhbGciOiJub25lIn0.e30.", "", byte(signRaw), scope, ""),
			fuzzseed.S("bad-scope", fzApp, fzSecret, "", "", none, "https://vault.coffer.example:8443", ""),
			fuzzseed.S("two-scopes", fzApp, fzSecret, "", "", none, scope+" https://management.coffer.example/.default", ""),
			fuzzseed.S("unknown-resource", fzApp, fzSecret, "", "", none, "https://graph.microsoft.com/.default", ""),
			fuzzseed.S("unknown-client", "00000000-0000-0000-0000-000000000000", fzSecret, "", "", none, scope, ""),
		}
	})
}

// FuzzToken runs client-credentials grants against the fuzz directory:
// any client id, secret, client assertion (any JWT header and claims,
// signed in every way), scope and managed identity to act for. A refusal
// is an *OAuthError with an OAuth status, which never carries the secret
// or the assertion's signature; a grant is issued only to a client that
// proved itself with its exact secret or with an assertion its
// certificate signed for this token endpoint, within an hour, under a jti
// not seen before; a token for a managed identity only to a client that
// holds Managed Identity Operator on it; and the token verifies for the
// resource asked for.
func FuzzToken(f *testing.F) {
	a := fuzzDirectory(f)
	_, key := fuzzClientCert(f)
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	seen := map[string]bool{} // jtis of accepted assertions
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, clientID, secret, header, claims string, mode byte, scope, actFor string) {
		raw := fuzzAssertion(header, claims, mode, key, foreign)
		req := TokenRequest{Tenant: fzTenant, GrantType: "client_credentials", ClientID: clientID, ClientSecret: secret, Scope: scope,
			ClientAssertion: raw, ActFor: Selector{ClientID: actFor}}
		if raw != "" {
			req.ClientAssertionType = ClientAssertionType
		}
		resp, err := a.Token(ctx, req)
		if err != nil {
			var oe *OAuthError
			if !errors.As(err, &oe) || !slices.Contains([]int{400, 401, 403, 429, 503}, oe.Status) || oe.Code == "" {
				t.Fatalf("refusal %v is not an OAuth error", err)
			}
			echoed := func(s string) bool {
				return len(s) >= 8 && strings.Contains(oe.Description, s) &&
					!strings.Contains(clientID+actFor+scope+header+claims, s) // the fuzzer may put it in a field that is named back
			}
			if echoed(secret) {
				t.Fatalf("the refusal carries the client secret: %s", oe.Description)
			}
			if parts := strings.Split(raw, "."); len(parts) == 3 && echoed(parts[2]) {
				t.Fatalf("the refusal carries the assertion: %s", oe.Description)
			}
			return
		}
		c, err := a.Verifier().Verify(resp.AccessToken, token.Expect{Issuer: a.Issuer(fzTenant), Audiences: []string{resp.Resource}, TenantID: fzTenant})
		if err != nil {
			t.Fatalf("the issued token does not verify: %v", err)
		}
		if !slices.Contains(a.Resources(), resp.Resource) || resp.Resource != c.Audience {
			t.Fatalf("token for %q (audience %q)", resp.Resource, c.Audience)
		}
		if !strings.EqualFold(clientID, fzApp) && !strings.EqualFold(clientID, fzFed) {
			t.Fatalf("a grant to client %q", clientID)
		}
		switch {
		case secret != "" && raw == "":
			if secret != fzSecret || !strings.EqualFold(clientID, fzApp) {
				t.Fatalf("a grant for secret %q to %q", secret, clientID)
			}
		case raw != "" && secret == "":
			checkAssertion(t, raw, mode, seen)
		default:
			t.Fatalf("a grant with secret %q and assertion %q", secret, raw)
		}
		if actFor != "" {
			if !strings.EqualFold(actFor, fzMI) || resp.Subject.AppID != fzMI || !strings.EqualFold(clientID, fzApp) {
				t.Fatalf("%q got a token for %q acting for %q", clientID, resp.Subject.AppID, actFor)
			}
		} else if !strings.EqualFold(resp.Subject.AppID, clientID) || c.AppID != resp.Subject.AppID {
			t.Fatalf("%q got a token for %q", clientID, resp.Subject.AppID)
		}
	})
}

// checkAssertion asserts what an accepted certificate assertion must be.
func checkAssertion(t *testing.T, raw string, mode byte, seen map[string]bool) {
	t.Helper()
	if m := mode % signModes; m != signRS256 && m != signPS256 && m != signRaw {
		t.Fatalf("accepted an assertion signed in mode %d", m)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("accepted an assertion of %d parts", len(parts))
	}
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c assertionClaims
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("accepted claims that do not parse: %v", err)
	}
	aud := []string{}
	switch v := c.Aud.(type) {
	case string:
		aud = append(aud, v)
	case []any:
		for _, x := range v {
			s, _ := x.(string)
			aud = append(aud, s)
		}
	}
	switch {
	case c.Iss != fzApp || c.Sub != fzApp:
		t.Fatalf("accepted iss %q sub %q", c.Iss, c.Sub)
	case !slices.Contains(aud, fzEndpoint) && !slices.Contains(aud, fzHost+"/"+fzTenant+"/oauth2/token"):
		t.Fatalf("accepted audience %q", aud)
	case c.Exp == nil || fzNow.After(time.Unix(*c.Exp, 0).Add(time.Minute)):
		t.Fatalf("accepted an assertion that expired (%v)", c.Exp)
	case c.Jti == "" || seen[c.Jti]:
		t.Fatalf("accepted jti %q a second time", c.Jti)
	}
	start := fzNow
	if c.Nbf != nil {
		start = time.Unix(*c.Nbf, 0)
	} else if c.Iat != nil {
		start = time.Unix(*c.Iat, 0)
	}
	if time.Unix(*c.Exp, 0).Sub(start) > time.Hour {
		t.Fatalf("accepted an assertion that lives %v", time.Unix(*c.Exp, 0).Sub(start))
	}
	seen[c.Jti] = true
}
