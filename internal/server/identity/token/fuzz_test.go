package token

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// fuzzKey is a signing key committed for the fuzz target (made with
// openssl genpkey), so that seed tokens keep their kid and signature.
func fuzzKey(t testing.TB) *SigningKey {
	t.Helper()
	b, err := os.ReadFile("testdata/fuzz-signing-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	priv, err := ParsePrivate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	k, err := KeyFromPrivate(priv, now)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// How a fuzz input becomes a token.
const (
	signRS256   = iota // header.claims, RS256 with the authority's key
	signPS256          // the same with RSA-PSS
	signForeign        // RS256 with a key the authority does not have
	signNone           // no signature
	signRaw            // the header argument is the whole token
	signModes
)

const (
	fuzzTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	fuzzIssuer = "https://login.coffer.example:8443/" + fuzzTenant + "/v2.0"
	fuzzVault  = "https://vault.coffer.example:8443"
)

var fuzzWant = Expect{Issuer: fuzzIssuer, Audiences: []string{fuzzVault, fuzzVault + "/"}, TenantID: fuzzTenant}

func b64s(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// compact builds a token from a header and claims as mode says.
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
		k := fuzzKey(t)
		hdr := `{"typ":"JWT","alg":"RS256","kid":"` + k.ID + `"}`
		// An app token as the authority issues it (Entra ID v2 claims).
		c := Claims{Issuer: fuzzIssuer, Subject: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", Audience: fuzzVault, IssuedAt: now.Unix(), NotBefore: now.Unix(),
			Expiry: now.Add(time.Hour).Unix(), TenantID: fuzzTenant, ObjectID: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", AppID: "5e3f2c1a-9b8d-4c7e-a6f5-1d2c3b4a5e6f",
			AppIDACR: "1", AuthorizedParty: "5e3f2c1a-9b8d-4c7e-a6f5-1d2c3b4a5e6f", AzpACR: "1", IDType: "app", TokenID: "Jq3bY2Dk8EuZt0fW1xHc_Q", Version: "2.0"}
		js := func(c Claims) string { b, _ := json.Marshal(c); return string(b) }
		mi := c
		mi.ManagedIdentityResourceID = "/subscriptions/0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e/resourceGroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/bound"
		mi.AppIDACR, mi.AzpACR = "2", "2"
		expired, early, otherAud, otherTenant, noOID := c, c, c, c, c
		expired.Expiry = now.Add(-2 * time.Minute).Unix()
		early.NotBefore = now.Add(2 * time.Minute).Unix()
		otherAud.Audience = "https://management.coffer.example:8443"
		otherTenant.TenantID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
		noOID.ObjectID = ""
		valid, _ := k.Sign(c)
		return []fuzzseed.Seed{
			fuzzseed.S("app-token", hdr, js(c), byte(signRS256)),
			fuzzseed.S("managed-identity", hdr, js(mi), byte(signRS256)),
			fuzzseed.S("vault-slash-audience", hdr, strings.Replace(js(c), `"aud":"`+fuzzVault+`"`, `"aud":"`+fuzzVault+`/"`, 1), byte(signRS256)),
			fuzzseed.S("ps256", strings.Replace(hdr, "RS256", "PS256", 1), js(c), byte(signPS256)),
			fuzzseed.S("foreign-key", hdr, js(c), byte(signForeign)),
			fuzzseed.S("alg-none", `{"typ":"JWT","alg":"none","kid":"`+k.ID+`"}`, js(c), byte(signNone)),
			fuzzseed.S("alg-hs256", `{"typ":"JWT","alg":"HS256","kid":"`+k.ID+`"}`, js(c), byte(signRS256)),
			fuzzseed.S("no-kid", `{"typ":"JWT","alg":"RS256"}`, js(c), byte(signRS256)),
			fuzzseed.S("unknown-kid", `{"typ":"JWT","alg":"RS256","kid":"nGc8QXp0Kb1l3oZ7w2E5rY9uT4sV6aD8fH0jL2mN4pQ"}`, js(c), byte(signRS256)),
			fuzzseed.S("huge-kid", `{"typ":"JWT","alg":"RS256","kid":"`+strings.Repeat("k", 4096)+`"}`, js(c), byte(signRS256)),
			fuzzseed.S("jwk-in-header", `{"typ":"JWT","alg":"RS256","kid":"`+k.ID+`","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}`, js(c), byte(signRS256)),
			fuzzseed.S("expired", hdr, js(expired), byte(signRS256)),
			fuzzseed.S("not-yet-valid", hdr, js(early), byte(signRS256)),
			fuzzseed.S("management-audience", hdr, js(otherAud), byte(signRS256)),
			fuzzseed.S("other-tenant", hdr, js(otherTenant), byte(signRS256)),
			fuzzseed.S("no-oid", hdr, js(noOID), byte(signRS256)),
			fuzzseed.S("aud-array", hdr, strings.Replace(js(c), `"aud":"`+fuzzVault+`"`, `"aud":["`+fuzzVault+`"]`, 1), byte(signRS256)),
			fuzzseed.S("string-exp", hdr, strings.Replace(js(c), `"exp":`, `"exp":"`, 1), byte(signRS256)),
			fuzzseed.S("raw-valid", valid, "", byte(signRaw)),
			fuzzseed.S("raw-two-signatures", valid+"."+valid, "", byte(signRaw)),
			fuzzseed.S("raw-json-serialization", `{"payload":"`+b64s(js(c))+`","signatures":[{"protected":"`+b64s(hdr)+`","signature":"AAAA"}]}`, "", byte(signRaw)),
			fuzzseed.S("raw-garbage", "Bearer abc.def.ghi", "", byte(signRaw)),
			fuzzseed.S("raw-empty", "", "", byte(signRaw)),
		}
	})
}

// FuzzVerify checks the verifier of the authority's access tokens with
// arbitrary headers and claims, signed in every way. A token is accepted
// only if the authority's key signed it with RS256 and its claims meet
// the expectation (time, issuer, audience, tenant, object id), even when
// its signature check is served from the cache; a refusal is a *Error
// that does not echo the token.
func FuzzVerify(f *testing.F) {
	k := fuzzKey(f)
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	v := NewVerifier(keyset{k.ID: k}, func() time.Time { return now })
	f.Fuzz(func(t *testing.T, header, claims string, mode byte) {
		raw := compact(header, claims, mode, k.Private, foreign)
		c, err := v.Verify(raw, fuzzWant)
		if err != nil {
			var te *Error
			if !errors.As(err, &te) || !slices.Contains([]string{"AKV10000", "AKV10022", "AKV10032"}, te.Code) {
				t.Fatalf("refusal %v is not a token error with a Key Vault code", err)
			}
			if parts := strings.Split(raw, "."); len(parts) == 3 && len(parts[2]) >= 16 && strings.Contains(err.Error(), parts[2]) {
				t.Fatalf("the refusal echoes the token's signature: %v", err)
			}
			return
		}
		if m := mode % signModes; m != signRS256 && m != signRaw {
			t.Fatalf("accepted a token signed in mode %d", m)
		}
		var hdr struct {
			Alg string `json:"alg"`
			Kid string `json:"kid"`
		}
		parts := strings.Split(raw, ".")
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		if json.Unmarshal(hb, &hdr) != nil || hdr.Alg != "RS256" || hdr.Kid != k.ID {
			t.Fatalf("accepted a token whose header is %s", hb)
		}
		checkClaims := func(c *Claims) {
			t.Helper()
			switch {
			case c.Expiry == 0 || now.After(time.Unix(c.Expiry, 0).Add(DefaultLeeway)):
				t.Fatalf("accepted a token that expired at %d", c.Expiry)
			case c.NotBefore != 0 && now.Add(DefaultLeeway).Before(time.Unix(c.NotBefore, 0)):
				t.Fatalf("accepted a token not valid before %d", c.NotBefore)
			case c.Issuer != fuzzIssuer || !slices.Contains(fuzzWant.Audiences, c.Audience) || c.TenantID != fuzzTenant || c.ObjectID == "":
				t.Fatalf("accepted claims %+v", c)
			}
		}
		checkClaims(c)
		// The cached signature check must not skip the claim checks.
		again, err := v.Verify(raw, fuzzWant)
		if err != nil || *again != *c {
			t.Fatalf("a second verification gave %+v, %v", again, err)
		}
		for _, other := range []Expect{
			{Issuer: fuzzIssuer, Audiences: []string{"https://management.coffer.example:8443"}, TenantID: fuzzTenant},
			{Issuer: fuzzIssuer, Audiences: fuzzWant.Audiences, TenantID: "f8cdef31-a31e-4b4a-93e4-5f571e91255a"},
			{Issuer: "https://login.coffer.example:8443/f8cdef31-a31e-4b4a-93e4-5f571e91255a/v2.0", Audiences: fuzzWant.Audiences},
		} {
			if _, err := v.Verify(raw, other); err == nil {
				t.Fatalf("a cached token was accepted for %+v", other)
			}
		}
	})
}
