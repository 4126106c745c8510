package token

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type keyset map[string]*SigningKey

func (k keyset) PublicKey(kid string) (*rsa.PublicKey, bool) {
	s, ok := k[kid]
	if !ok {
		return nil, false
	}
	return &s.Private.PublicKey, true
}
func (k keyset) Generation() uint64 { return uint64(len(k)) }

var now = time.Unix(1_800_000_000, 0)

func claims() Claims {
	return Claims{
		Issuer: "https://auth/t1/v2.0", Audience: "https://vault.example", TenantID: "t1", ObjectID: "o1", Subject: "o1",
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Add(time.Hour).Unix(), Version: "2.0",
	}
}

var want = Expect{Issuer: "https://auth/t1/v2.0", Audiences: []string{"https://vault.example"}, TenantID: "t1"}

func setup(t *testing.T) (*SigningKey, *Verifier) {
	t.Helper()
	k, err := NewSigningKey(now)
	if err != nil {
		t.Fatal(err)
	}
	return k, NewVerifier(keyset{k.ID: k}, func() time.Time { return now })
}

func TestValidToken(t *testing.T) {
	k, v := setup(t)
	raw, err := k.Sign(claims())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // second call is served from the cache
		c, err := v.Verify(raw, want)
		if err != nil || c.ObjectID != "o1" {
			t.Fatalf("Verify = %+v, %v", c, err)
		}
	}
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestRejections(t *testing.T) {
	k, v := setup(t)
	other, _ := NewSigningKey(now)
	good, _ := k.Sign(claims())
	parts := strings.Split(good, ".")

	with := func(edit func(*Claims)) string {
		c := claims()
		edit(&c)
		s, _ := k.Sign(c)
		return s
	}
	// HS256 "signed" with the RSA public key: the classic algorithm confusion.
	pubDER, _ := x509.MarshalPKIXPublicKey(&k.Private.PublicKey)
	hsSigner, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubDER}, (&jose.SignerOptions{}).WithHeader("kid", k.ID))
	hs, _ := jwt.Signed(hsSigner).Claims(claims()).Serialize()
	// A token signed by an unknown key but claiming the trusted kid.
	otherSigner, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: other.Private, KeyID: k.ID}}, nil)
	kidSwap, _ := jwt.Signed(otherSigner).Claims(claims()).Serialize()
	unknownKid, _ := other.Sign(claims())
	// Payload edited after signing.
	c := claims()
	c.ObjectID = "someone-else"
	tampered := parts[0] + "." + b64(c) + "." + parts[2]

	cases := map[string]struct {
		raw  string
		want string
	}{
		"empty":          {"", "missing"},
		"garbage":        {"not.a.jwt", "not an RS256"},
		"alg none":       {b64(map[string]string{"alg": "none", "kid": k.ID}) + "." + parts[1] + ".", "not an RS256"},
		"HS256 with pub": {hs, "not an RS256"},
		"kid swap":       {kidSwap, "signature does not verify"},
		"unknown kid":    {unknownKid, "not one of the authority's signing keys"},
		"tampered":       {tampered, "signature does not verify"},
		"expired":        {with(func(c *Claims) { c.Expiry = now.Add(-2 * time.Minute).Unix() }), "expired"},
		"not yet valid":  {with(func(c *Claims) { c.NotBefore = now.Add(5 * time.Minute).Unix() }), "not valid before"},
		"wrong issuer":   {with(func(c *Claims) { c.Issuer = "https://evil/t1/v2.0" }), "Invalid issuer"},
		"wrong audience": {with(func(c *Claims) { c.Audience = "https://other" }), "Invalid audience"},
		"other tenant":   {with(func(c *Claims) { c.TenantID = "t2" }), "Invalid tenant"},
		"oversized":      {strings.Repeat("a", MaxTokenBytes+1), "limit"},
	}
	for name, tc := range cases {
		_, err := v.Verify(tc.raw, want)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not say %q", name, err, tc.want)
		}
		if tc.raw != "" && len(tc.raw) > 20 && strings.Contains(err.Error(), tc.raw) {
			t.Errorf("%s: error echoes the token", name)
		}
	}
}

func TestLeewayAllowsSmallSkew(t *testing.T) {
	k, v := setup(t)
	c := claims()
	c.Expiry = now.Add(-30 * time.Second).Unix()
	raw, _ := k.Sign(c)
	if _, err := v.Verify(raw, want); err != nil {
		t.Fatalf("token expired 30s ago rejected despite leeway: %v", err)
	}
}

func TestCachedTokenStillChecksExpiry(t *testing.T) {
	k, err := NewSigningKey(now)
	if err != nil {
		t.Fatal(err)
	}
	clock := now
	v := NewVerifier(keyset{k.ID: k}, func() time.Time { return clock })
	raw, _ := k.Sign(claims())
	if _, err := v.Verify(raw, want); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(2 * time.Hour)
	if _, err := v.Verify(raw, want); err == nil {
		t.Fatal("a cached token was accepted after it expired")
	}
}

func TestRemovedKeyInvalidatesCache(t *testing.T) {
	k, _ := NewSigningKey(now)
	ks := keyset{k.ID: k}
	v := NewVerifier(ks, func() time.Time { return now })
	raw, _ := k.Sign(claims())
	if _, err := v.Verify(raw, want); err != nil {
		t.Fatal(err)
	}
	delete(ks, k.ID)
	if _, err := v.Verify(raw, want); err == nil {
		t.Fatal("a token signed by a removed key was served from the cache")
	}
}

// TestCacheCollisionIsAMiss plants a verified token's entry under the hash
// of a forged one, as a hash collision would: the forged token must be
// checked in full and refused, never answered with the entry's claims.
func TestCacheCollisionIsAMiss(t *testing.T) {
	k, v := setup(t)
	raw, err := k.Sign(claims())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(raw, want); err != nil {
		t.Fatal(err)
	}
	e, ok := v.cache.Load(v.key(raw))
	if !ok {
		t.Fatal("a verified token was not cached")
	}
	// The same length, one byte of the signature changed.
	forged := raw[:len(raw)-2] + string(raw[len(raw)-2]^1) + raw[len(raw)-1:]
	v.cache.Store(v.key(forged), e)
	if _, err := v.Verify(forged, want); err == nil {
		t.Fatal("a forged token was accepted from the entry of the token it collides with")
	}
	// One letter of the claims in the other case, still base64url: the
	// key, the signature's end, is the genuine token's, so this collision
	// needs no planting.
	at := strings.IndexByte(raw, '.') + 8
	for raw[at]|0x20 < 'a' || raw[at]|0x20 > 'z' {
		at++
	}
	tampered := raw[:at] + string(raw[at]^0x20) + raw[at+1:]
	if v.key(tampered) != v.key(raw) {
		t.Fatal("the key is not the token's end")
	}
	if _, err := v.Verify(tampered, want); err == nil {
		t.Fatal("a token with tampered claims was accepted from the genuine token's entry")
	}
	if _, err := v.Verify(raw, want); err != nil {
		t.Fatalf("the genuine token after the forged one: %v", err)
	}
}

func TestEqual(t *testing.T) {
	base := strings.Repeat("abcdefghij", 11) // 110 bytes: blocks of four words, a word and a tail
	for i := range len(base) {
		other := base[:i] + string(base[i]^0x20) + base[i+1:]
		if equal(base, other) {
			t.Fatalf("equal reports a difference at byte %d as equal", i)
		}
	}
	if !equal(base, strings.Clone(base)) || !equal("", "") || equal(base, base[:100]) {
		t.Fatal("equal is wrong on equal strings or on lengths")
	}
}
