package federation

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// The issuer of the fuzz target: an AKS-style issuer URL on a host the
// test server's certificate covers.
const (
	fuzzIssuer  = "https://oidc.example.com/9e1a7b2c-4d5e-4f60-8a1b-2c3d4e5f6a7b/"
	fuzzJWKSURI = "https://oidc.example.com/9e1a7b2c-4d5e-4f60-8a1b-2c3d4e5f6a7b/openid/v1/jwks"
	fuzzSubject = "system:serviceaccount:default:workload"
)

var fuzzNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

var fuzzCreds = []Credential{
	{Name: "aks-default-workload", Issuer: fuzzIssuer, Subject: fuzzSubject, Audiences: []string{DefaultAudience}},
	{Name: "aks-batch", Issuer: fuzzIssuer, Subject: "system:serviceaccount:batch:runner", Audiences: []string{DefaultAudience, "api://coffer"}},
	{Name: "github", Issuer: "https://token.actions.githubusercontent.com", Subject: "repo:cofferhq/coffer:ref:refs/heads/main", Audiences: []string{DefaultAudience}},
}

// issuerKey is committed test material (openssl genpkey), so that seed
// key sets and kids stay valid.
func issuerKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile("testdata/fuzz-issuer-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*rsa.PrivateKey)
}

func issuerKid(t testing.TB, k *rsa.PrivateKey) string {
	tp, err := (&jose.JSONWebKey{Key: &k.PublicKey}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
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

func compact(header, claims string, mode byte, key, foreign *rsa.PrivateKey) string {
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

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzVerify", func(t *testing.T) []fuzzseed.Seed {
		k := issuerKey(t)
		kid := issuerKid(t, k)
		hdr := `{"alg":"RS256","kid":"` + kid + `"}`
		js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
		// A projected service-account token as kubelet gets it for the
		// CSIDriver's or the webhook's audience.
		type sa struct {
			jwt.Claims
			Kubernetes map[string]any `json:"kubernetes.io"`
		}
		claims := func(sub string, aud []string, iat, exp time.Time) string {
			return js(sa{Claims: jwt.Claims{Issuer: fuzzIssuer, Subject: sub, Audience: aud, IssuedAt: jwt.NewNumericDate(iat), NotBefore: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp)},
				Kubernetes: map[string]any{"namespace": "default", "pod": map[string]string{"name": "web-7d9f8b6c5-x2x4k", "uid": "0b8f7e52-3c6f-4c59-9d3a-8f6f1d1c2b3a"},
					"serviceaccount": map[string]string{"name": "workload", "uid": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"}}})
		}
		good := claims(fuzzSubject, []string{DefaultAudience}, fuzzNow.Add(-10*time.Minute), fuzzNow.Add(50*time.Minute))
		disc := js(map[string]any{"issuer": fuzzIssuer, "jwks_uri": fuzzJWKSURI, "response_types_supported": []string{"id_token"},
			"subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"RS256"}})
		jwks := js(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}}})
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		rotated := js(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &other.PublicKey, KeyID: "old", Algorithm: "RS256", Use: "sig"}, {Key: &k.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}}})
		encKey := js(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: kid, Algorithm: "RSA-OAEP", Use: "enc"}}})
		swapped := js(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &other.PublicKey, KeyID: kid, Algorithm: "RS256", Use: "sig"}}})
		valid := compact(hdr, good, signRS256, k, nil)
		return []fuzzseed.Seed{
			fuzzseed.S("aks-workload", hdr, good, disc, jwks, byte(signRS256)),
			fuzzseed.S("two-audiences", hdr, claims("system:serviceaccount:batch:runner", []string{"api://coffer", "https://kubernetes.default.svc"}, fuzzNow, fuzzNow.Add(time.Hour)), disc, rotated, byte(signRS256)),
			fuzzseed.S("ps256", strings.Replace(hdr, "RS256", "PS256", 1), good, disc, jwks, byte(signPS256)),
			fuzzseed.S("foreign-key", hdr, good, disc, jwks, byte(signForeign)),
			fuzzseed.S("alg-none", `{"alg":"none","kid":"`+kid+`"}`, good, disc, jwks, byte(signNone)),
			fuzzseed.S("alg-hs256", `{"alg":"HS256","kid":"`+kid+`"}`, good, disc, jwks, byte(signRS256)),
			fuzzseed.S("key-for-encryption", hdr, good, disc, encKey, byte(signRS256)),
			fuzzseed.S("kid-swapped", hdr, good, disc, swapped, byte(signRS256)),
			fuzzseed.S("embedded-jwk", `{"alg":"RS256","kid":"`+kid+`","jwk":`+js(jose.JSONWebKey{Key: &other.PublicKey})+`}`, good, disc, jwks, byte(signRS256)),
			fuzzseed.S("huge-kid", `{"alg":"RS256","kid":"`+strings.Repeat("k", 8000)+`"}`, good, disc, jwks, byte(signRS256)),
			fuzzseed.S("wrong-subject", hdr, claims("system:serviceaccount:kube-system:default", []string{DefaultAudience}, fuzzNow, fuzzNow.Add(time.Hour)), disc, jwks, byte(signRS256)),
			fuzzseed.S("wrong-audience", hdr, claims(fuzzSubject, []string{"https://kubernetes.default.svc"}, fuzzNow, fuzzNow.Add(time.Hour)), disc, jwks, byte(signRS256)),
			fuzzseed.S("expired", hdr, claims(fuzzSubject, []string{DefaultAudience}, fuzzNow.Add(-2*time.Hour), fuzzNow.Add(-time.Hour)), disc, jwks, byte(signRS256)),
			fuzzseed.S("long-lived", hdr, claims(fuzzSubject, []string{DefaultAudience}, fuzzNow, fuzzNow.Add(365*24*time.Hour)), disc, jwks, byte(signRS256)),
			fuzzseed.S("issuer-slashless", hdr, strings.Replace(good, fuzzIssuer, strings.TrimSuffix(fuzzIssuer, "/"), 1), disc, jwks, byte(signRS256)),
			fuzzseed.S("discovery-other-issuer", hdr, good, strings.Replace(disc, `"issuer":"`+fuzzIssuer, `"issuer":"https://evil.example.com/`, 1), jwks, byte(signRS256)),
			fuzzseed.S("jwks-http", hdr, good, strings.Replace(disc, "https://oidc", "http://oidc", 1), jwks, byte(signRS256)),
			fuzzseed.S("jwks-metadata-ip", hdr, good, strings.Replace(disc, fuzzJWKSURI, "https://169.254.169.254/metadata/identity/oauth2/token", 1), jwks, byte(signRS256)),
			fuzzseed.S("jwks-not-json", hdr, good, disc, "<html>502 Bad Gateway</html>", byte(signRS256)),
			fuzzseed.S("jwks-huge", hdr, good, disc, `{"keys":[],"pad":"`+strings.Repeat("x", 300<<10)+`"}`, byte(signRS256)),
			fuzzseed.S("raw-valid", valid, "", disc, jwks, byte(signRaw)),
			fuzzseed.S("raw-garbage", "abc.def", "", disc, jwks, byte(signRaw)),
		}
	})
}

// FuzzVerify checks federated assertions with arbitrary JWT headers and
// claims, signed in every way, against an issuer that serves arbitrary
// discovery documents and key sets. An assertion is accepted only if it
// was signed with an asymmetric algorithm by a key the served set lists
// under its kid for signing, the discovery document names the issuer
// exactly, and its issuer, subject, audience and time window match the
// credential it returns; a refusal is a *Error that does not echo it.
func FuzzVerify(f *testing.F) {
	key := issuerKey(f)
	kid := issuerKid(f, key)
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	var mu sync.Mutex
	var discovery, keys string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		d, k := discovery, keys
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/.well-known/openid-configuration") {
			w.Write([]byte(d))
			return
		}
		w.Write([]byte(k))
	}))
	f.Cleanup(srv.Close)
	// Every host the verifier asks for is this server, which holds a
	// certificate for example.com and its subdomains only.
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, header, claims, disc, jwks string, mode byte) {
		mu.Lock()
		discovery, keys = disc, jwks
		mu.Unlock()
		v := New(Config{Client: client, Now: func() time.Time { return fuzzNow }})
		raw := compact(header, claims, mode, key, foreign)
		cred, got, err := v.Verify(ctx, raw, List(fuzzCreds))
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("refusal %v is not a *federation.Error", err)
			}
			if parts := strings.Split(raw, "."); len(parts) == 3 && len(parts[2]) >= 16 && strings.Contains(err.Error(), parts[2]) {
				t.Fatalf("the refusal echoes the assertion: %v", err)
			}
			return
		}
		if m := mode % signModes; m != signRS256 && m != signPS256 && m != signRaw {
			t.Fatalf("accepted an assertion signed in mode %d", m)
		}
		parts := strings.Split(raw, ".")
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		var hdr struct {
			Alg string `json:"alg"`
			Kid string `json:"kid"`
		}
		if json.Unmarshal(hb, &hdr) != nil || !slices.Contains(algorithms, jose.SignatureAlgorithm(hdr.Alg)) {
			t.Fatalf("accepted an assertion with header %s", hb)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal([]byte(jwks), &set); err != nil {
			t.Fatalf("accepted an assertion against a key set that does not parse: %v", err)
		}
		listed := slices.ContainsFunc(set.Keys, func(k jose.JSONWebKey) bool {
			pub, ok := k.Key.(*rsa.PublicKey)
			return k.KeyID == hdr.Kid && (k.Use == "" || k.Use == "sig") && ok && pub.Equal(&key.PublicKey)
		})
		if !listed || hdr.Kid != kid && !slices.ContainsFunc(set.Keys, func(k jose.JSONWebKey) bool { return k.KeyID == hdr.Kid }) {
			t.Fatalf("accepted an assertion whose kid %q does not name the signing key in the served set", hdr.Kid)
		}
		var doc struct {
			Issuer string `json:"issuer"`
		}
		if json.Unmarshal([]byte(disc), &doc) != nil || doc.Issuer != cred.Issuer {
			t.Fatalf("accepted with a discovery document for issuer %q", doc.Issuer)
		}
		if !slices.ContainsFunc(fuzzCreds, func(c Credential) bool {
			return c.Name == cred.Name && c.Issuer == cred.Issuer && c.Subject == cred.Subject
		}) {
			t.Fatalf("returned credential %+v is not one it was given", cred)
		}
		switch {
		case got.Issuer != cred.Issuer || got.Subject != cred.Subject:
			t.Fatalf("claims %+v do not match credential %+v", got, cred)
		case !slices.ContainsFunc(got.Audience, func(a string) bool { return slices.Contains(cred.Audiences, a) }):
			t.Fatalf("audience %q is not among %q", got.Audience, cred.Audiences)
		case got.Expiry.IsZero() || fuzzNow.After(got.Expiry.Add(2*time.Minute)):
			t.Fatalf("accepted an assertion that expired at %v", got.Expiry)
		}
	})
}
