// Package oidctest serves a real OpenID issuer over TLS for tests: a
// discovery document, a JWKS, and RS256 tokens such as a Kubernetes
// service-account issuer mints. Tests can rotate its key, break its JWKS
// endpoint, or make it oversized.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Issuer is a running test issuer.
type Issuer struct {
	Server *httptest.Server
	// URL is the issuer identifier (no trailing slash).
	URL string
	// JWKSHits counts key-set fetches.
	JWKSHits atomic.Int64

	mu        sync.Mutex
	key       *rsa.PrivateKey
	kid       string
	published []jose.JSONWebKey
	jwksMode  string // "", "down", "huge"
}

// New starts an issuer; it stops when the test ends.
func New(t testing.TB) *Issuer {
	i := &Issuer{}
	i.Rotate(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": i.URL, "jwks_uri": i.URL + "/openid/v1/jwks",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"RS256"}})
	})
	mux.HandleFunc("GET /openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		i.JWKSHits.Add(1)
		i.mu.Lock()
		mode, keys := i.jwksMode, append([]jose.JSONWebKey(nil), i.published...)
		i.mu.Unlock()
		switch mode {
		case "down":
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		case "huge":
			w.Write([]byte(`{"keys":[],"padding":"` + strings.Repeat("x", 1<<20) + `"}`))
		default:
			json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: keys})
		}
	})
	i.Server = httptest.NewTLSServer(mux)
	i.URL = i.Server.URL
	t.Cleanup(i.Server.Close)
	return i
}

// Rotate makes a new signing key and publishes it beside the old ones.
func (i *Issuer) Rotate(t testing.TB) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.key, i.kid = k, "k"+time.Now().Format("150405.000000000")
	i.published = append(i.published, jose.JSONWebKey{Key: &k.PublicKey, KeyID: i.kid, Algorithm: "RS256", Use: "sig"})
}

// SignWithUnpublishedKey makes the next tokens use a key the JWKS lacks.
func (i *Issuer) SignWithUnpublishedKey(t testing.TB) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	i.mu.Lock()
	i.key, i.kid = k, "unpublished"
	i.mu.Unlock()
}

// SetJWKS makes the key-set endpoint fail ("down"), send over a megabyte
// ("huge"), or behave ("").
func (i *Issuer) SetJWKS(mode string) {
	i.mu.Lock()
	i.jwksMode = mode
	i.mu.Unlock()
}

// Client returns an HTTP client that trusts the issuer's certificate.
func (i *Issuer) Client() *http.Client {
	c := i.Server.Client()
	c.Timeout = 30 * time.Second
	return c
}

// Token mints a token. Zero times default to now and now+1h.
func (i *Issuer) Token(t testing.TB, subject string, audience []string, iat, exp time.Time) string {
	return i.TokenAs(t, i.URL, subject, audience, iat, exp)
}

// TokenAs mints a token that claims issuer iss.
func (i *Issuer) TokenAs(t testing.TB, iss, subject string, audience []string, iat, exp time.Time) string {
	if iat.IsZero() {
		iat = time.Now()
	}
	if exp.IsZero() {
		exp = iat.Add(time.Hour)
	}
	i.mu.Lock()
	key, kid := i.key, i.kid
	i.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: iss, Subject: subject, Audience: audience,
		IssuedAt: jwt.NewNumericDate(iat), NotBefore: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
