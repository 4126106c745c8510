package authority

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const resource = "https://vault.test"

func newAuthority(t *testing.T, now func() time.Time) (*Authority, Tenant) {
	t.Helper()
	ctx := context.Background()
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	roles, _ := rbac.Open(ctx, b, now)
	a, err := Open(ctx, b, Config{Host: "https://auth.test", Resources: []string{resource}, Roles: roles, RateLimit: -1}, now)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := a.CreateTenant(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	return a, tn
}

func cert(t *testing.T, notAfter time.Time) (*x509.Certificate, *rsa.PrivateKey) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "c"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// assertion builds a client assertion the way MSAL does.
func assertion(t *testing.T, c *x509.Certificate, key *rsa.PrivateKey, claims jwt.Claims) string {
	sum := sha256.Sum256(c.Raw)
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t#S256", base64.StdEncoding.EncodeToString(sum[:]))
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.PS256, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestCertificateAssertions(t *testing.T) {
	ctx := context.Background()
	a, tn := newAuthority(t, nil)
	sp, _, err := a.CreateServicePrincipal(ctx, tn.ID, "app")
	if err != nil {
		t.Fatal(err)
	}
	c, key := cert(t, time.Now().Add(24*time.Hour))
	if _, err := a.AddCertificate(ctx, tn.ID, sp.AppID, c, false); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := func() jwt.Claims {
		return jwt.Claims{Issuer: sp.AppID, Subject: sp.AppID, Audience: jwt.Audience{a.TokenEndpoint(tn.ID)}, ID: NewGUID(),
			NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute))}
	}
	req := func(raw string) TokenRequest {
		return TokenRequest{Tenant: tn.ID, GrantType: "client_credentials", ClientID: sp.AppID, Scope: resource + "/.default",
			ClientAssertionType: ClientAssertionType, ClientAssertion: raw}
	}
	first := assertion(t, c, key, good())
	resp, err := a.Token(ctx, req(first))
	if err != nil || resp.Subject.ObjectID != sp.ObjectID {
		t.Fatalf("a valid assertion was refused: %v", err)
	}
	other, otherKey := cert(t, time.Now().Add(time.Hour))
	cases := map[string]struct {
		raw  string
		want string
	}{
		"replayed jti":   {first, "already used"},
		"wrong audience": {assertion(t, c, key, func() jwt.Claims { g := good(); g.Audience = jwt.Audience{"https://elsewhere/token"}; return g }()), "audience"},
		"iss not client": {assertion(t, c, key, func() jwt.Claims { g := good(); g.Subject = "someone"; return g }()), "sub"},
		"too long":       {assertion(t, c, key, func() jwt.Claims { g := good(); g.Expiry = jwt.NewNumericDate(now.Add(3 * time.Hour)); return g }()), "lifetime"},
		"expired":        {assertion(t, c, key, func() jwt.Claims { g := good(); g.Expiry = jwt.NewNumericDate(now.Add(-time.Hour)); return g }()), "expired"},
		"no jti":         {assertion(t, c, key, func() jwt.Claims { g := good(); g.ID = ""; return g }()), "jti"},
		"unregistered":   {assertion(t, other, otherKey, good()), "not registered"},
		"wrong key":      {assertionWithThumb(t, c, otherKey, good()), "invalid signature"},
		"not a jwt":      {"x.y.z", "not a signed JWT"},
	}
	for name, tc := range cases {
		_, err := a.Token(ctx, req(tc.raw))
		var oe *OAuthError
		if !errors.As(err, &oe) || oe.Status != 401 || !strings.Contains(oe.Description, tc.want) {
			t.Errorf("%s: %v, want a 401 mentioning %q", name, err, tc.want)
		}
	}
}

// assertionWithThumb names c's thumbprint but signs with another key.
func assertionWithThumb(t *testing.T, c *x509.Certificate, key *rsa.PrivateKey, claims jwt.Claims) string {
	return assertion(t, c, key, claims)
}

func TestExpiredCertificateRefused(t *testing.T) {
	ctx := context.Background()
	a, tn := newAuthority(t, nil)
	sp, _, _ := a.CreateServicePrincipal(ctx, tn.ID, "app")
	c, _ := cert(t, time.Now().Add(-time.Minute))
	if _, err := a.AddCertificate(ctx, tn.ID, sp.AppID, c, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an expired certificate was registered: %v", err)
	}
}

func TestSecretsAndRateLimit(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	a, err := Open(ctx, b, Config{Host: "https://auth.test", Resources: []string{resource}, RateLimit: 1, RateBurst: 2}, clock)
	if err != nil {
		t.Fatal(err)
	}
	tn, _ := a.CreateTenant(ctx, "t")
	sp, secret, _ := a.CreateServicePrincipal(ctx, tn.ID, "app")
	req := TokenRequest{Tenant: tn.ID, GrantType: "client_credentials", ClientID: sp.AppID, ClientSecret: secret, Scope: resource + "/.default"}
	for range 2 {
		if _, err := a.Token(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	var oe *OAuthError
	if _, err := a.Token(ctx, req); !errors.As(err, &oe) || oe.Status != 429 || oe.RetryAfter < 1 {
		t.Fatalf("third request in a burst of 2 = %v", err)
	}
	now = now.Add(2 * time.Second)
	if _, err := a.Token(ctx, req); err != nil {
		t.Fatalf("after the bucket refilled: %v", err)
	}
	// Hashes only: the store never holds the secret.
	p, _ := a.Principal(ctx, tn.ID, sp.AppID)
	if len(p.Secrets) != 1 || strings.Contains(string(p.Secrets[0].Hash), secret) || p.Secrets[0].Hint != secret[:3] {
		t.Fatal("secret not stored as a salted hash with a hint")
	}
	bad := req
	bad.ClientSecret = "wrong"
	now = now.Add(10 * time.Second)
	if _, err := a.Token(ctx, bad); !errors.As(err, &oe) || oe.AADSTS != 7000215 {
		t.Fatalf("wrong secret = %v", err)
	}
}
