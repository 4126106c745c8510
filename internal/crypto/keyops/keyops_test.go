package keyops

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"testing"
)

func hx(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// RFC 3394, sections 4.1 and 4.6.
func TestAESKeyWrapRFC3394Vectors(t *testing.T) {
	cases := []struct{ kek, data, wrapped string }{
		{"000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF", "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"},
		{"000102030405060708090A0B0C0D0E0F1011121314151617", "00112233445566778899AABBCCDDEEFF", "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"},
		{"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
			"28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"},
	}
	for _, c := range cases {
		got, err := aesKeyWrap(hx(c.kek), hx(c.data))
		if err != nil || !bytes.Equal(got, hx(c.wrapped)) {
			t.Fatalf("wrap = %X, %v; want %s", got, err, c.wrapped)
		}
		back, err := aesKeyUnwrap(hx(c.kek), got)
		if err != nil || !bytes.Equal(back, hx(c.data)) {
			t.Fatalf("unwrap = %X, %v", back, err)
		}
		bad := bytes.Clone(got)
		bad[3] ^= 1
		if _, err := aesKeyUnwrap(hx(c.kek), bad); !errors.Is(err, ErrCrypto) {
			t.Fatalf("unwrap of an altered blob = %v", err)
		}
	}
}

func gen(t *testing.T, kty string, size int, crv string) *Material {
	t.Helper()
	m, err := Generate(kty, size, crv)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func digest(h crypto.Hash) []byte {
	d := make([]byte, h.Size())
	rand.Read(d)
	return d
}

// Signatures verify with Go's own crypto against the public JWK alone.
func TestSignVerifyAgainstPublicJWK(t *testing.T) {
	cases := []struct {
		alg  string
		m    *Material
		hash crypto.Hash
	}{
		{"RS256", gen(t, RSA, 2048, ""), crypto.SHA256},
		{"RS384", gen(t, RSA, 3072, ""), crypto.SHA384},
		{"RS512", gen(t, RSA, 2048, ""), crypto.SHA512},
		{"PS256", gen(t, RSA, 2048, ""), crypto.SHA256},
		{"PS384", gen(t, RSA, 2048, ""), crypto.SHA384},
		{"PS512", gen(t, RSA, 2048, ""), crypto.SHA512},
		{"ES256", gen(t, EC, 0, P256), crypto.SHA256},
		{"ES384", gen(t, EC, 0, P384), crypto.SHA384},
		{"ES512", gen(t, EC, 0, P521), crypto.SHA512},
		{"ES256K", gen(t, EC, 0, P256K), crypto.SHA256},
	}
	for _, c := range cases {
		d := digest(c.hash)
		sig, err := c.m.Sign(c.alg, d)
		if err != nil {
			t.Fatalf("%s: %v", c.alg, err)
		}
		pub := c.m.PublicJWK()
		if pub.D != nil || pub.P != nil || pub.K != nil {
			t.Fatalf("%s: the public JWK carries private members", c.alg)
		}
		if ok, err := c.m.Verify(c.alg, d, sig); !ok || err != nil {
			t.Fatalf("%s: own verify = %v %v", c.alg, ok, err)
		}
		d2 := bytes.Clone(d)
		d2[0] ^= 1
		if ok, _ := c.m.Verify(c.alg, d2, sig); ok {
			t.Fatalf("%s: verified a signature over another digest", c.alg)
		}
		switch pub.Kty {
		case RSA:
			k := &rsa.PublicKey{N: new(big.Int).SetBytes(pub.N), E: int(new(big.Int).SetBytes(pub.E).Int64())}
			var err error
			if c.alg[0] == 'P' {
				err = rsa.VerifyPSS(k, c.hash, d, sig, nil)
			} else {
				err = rsa.VerifyPKCS1v15(k, c.hash, d, sig)
			}
			if err != nil {
				t.Fatalf("%s: Go's rsa rejects the signature: %v", c.alg, err)
			}
		case EC:
			if pub.Crv == P256K {
				continue // Go's crypto has no secp256k1; covered by Verify and the SDK test
			}
			size := len(pub.X)
			if len(sig) != 2*size {
				t.Fatalf("%s: signature is %d bytes, want raw R||S of %d", c.alg, len(sig), 2*size)
			}
			k, err := ecdsa.ParseUncompressedPublicKey(nistCurve(pub.Crv), append(append([]byte{4}, pub.X...), pub.Y...))
			if err != nil {
				t.Fatal(err)
			}
			if !ecdsa.Verify(k, d, new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])) {
				t.Fatalf("%s: Go's ecdsa rejects the signature", c.alg)
			}
		}
	}
}

func TestEncryptWrapRoundTrips(t *testing.T) {
	rsaKey := gen(t, RSA, 2048, "")
	octs := map[int]*Material{128: gen(t, Oct, 128, ""), 192: gen(t, Oct, 192, ""), 256: gen(t, Oct, 256, "")}
	plain := []byte("a 32-byte data encryption key!!!")
	for _, alg := range []string{"RSA1_5", "RSA-OAEP", "RSA-OAEP-256"} {
		for _, wrap := range []bool{false, true} {
			var r Result
			var err error
			if wrap {
				r, err = rsaKey.Wrap(alg, Params{Value: plain})
			} else {
				r, err = rsaKey.Encrypt(alg, Params{Value: plain})
			}
			if err != nil {
				t.Fatal(alg, err)
			}
			var back []byte
			if wrap {
				back, err = rsaKey.Unwrap(alg, Params{Value: r.Value})
			} else {
				back, err = rsaKey.Decrypt(alg, Params{Value: r.Value})
			}
			if err != nil || !bytes.Equal(back, plain) {
				t.Fatalf("%s (wrap=%v): round trip = %q, %v", alg, wrap, back, err)
			}
		}
	}
	for bits, k := range octs {
		gcmAlg := map[int]string{128: "A128GCM", 192: "A192GCM", 256: "A256GCM"}[bits]
		r, err := k.Encrypt(gcmAlg, Params{Value: plain, AAD: []byte("context")})
		if err != nil || len(r.IV) != 12 || len(r.Tag) != 16 {
			t.Fatalf("%s: %+v %v", gcmAlg, r, err)
		}
		back, err := k.Decrypt(gcmAlg, Params{Value: r.Value, IV: r.IV, Tag: r.Tag, AAD: []byte("context")})
		if err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("%s round trip: %v", gcmAlg, err)
		}
		if _, err := k.Decrypt(gcmAlg, Params{Value: r.Value, IV: r.IV, Tag: r.Tag, AAD: []byte("other")}); !errors.Is(err, ErrCrypto) {
			t.Fatalf("%s: wrong aad accepted", gcmAlg)
		}
		kwAlg := map[int]string{128: "A128KW", 192: "A192KW", 256: "A256KW"}[bits]
		w, err := k.Wrap(kwAlg, Params{Value: plain})
		if err != nil {
			t.Fatal(kwAlg, err)
		}
		if back, err := k.Unwrap(kwAlg, Params{Value: w.Value}); err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("%s round trip: %v", kwAlg, err)
		}
	}
}

func TestWrongAlgorithmsAndInputs(t *testing.T) {
	rsaKey, ecKey, oct := gen(t, RSA, 2048, ""), gen(t, EC, 0, P256), gen(t, Oct, 128, "")
	for name, err := range map[string]error{
		"ES256 on RSA":      func() error { _, err := rsaKey.Sign("ES256", digest(crypto.SHA256)); return err }(),
		"ES384 on P-256":    func() error { _, err := ecKey.Sign("ES384", digest(crypto.SHA384)); return err }(),
		"RS256 short hash":  func() error { _, err := rsaKey.Sign("RS256", []byte("short")); return err }(),
		"RSA-OAEP on EC":    func() error { _, err := ecKey.Encrypt("RSA-OAEP", Params{Value: []byte("x")}); return err }(),
		"A256GCM on 128":    func() error { _, err := oct.Encrypt("A256GCM", Params{Value: []byte("x")}); return err }(),
		"sign with oct":     func() error { _, err := oct.Sign("RS256", digest(crypto.SHA256)); return err }(),
		"unknown algorithm": func() error { _, err := rsaKey.Encrypt("ROT13", Params{}); return err }(),
	} {
		if !errors.Is(err, ErrAlgorithm) {
			t.Errorf("%s: %v, want ErrAlgorithm", name, err)
		}
	}
	if _, err := Generate(RSA, 1024, ""); !errors.Is(err, ErrBadKey) {
		t.Error("RSA-1024 generated")
	}
	if _, err := Generate("RSA-HSM", 2048, ""); !errors.Is(err, ErrBadKey) {
		t.Error("an HSM key type was accepted")
	}
	if _, err := Generate(EC, 0, "P-224"); !errors.Is(err, ErrBadKey) {
		t.Error("P-224 generated")
	}
}

func TestJWKRoundTripAndValidation(t *testing.T) {
	for _, m := range []*Material{gen(t, RSA, 2048, ""), gen(t, EC, 0, P384), gen(t, EC, 0, P256K), gen(t, Oct, 256, "")} {
		raw, _ := json.Marshal(m.PrivateJWK())
		var j JWK
		if err := json.Unmarshal(raw, &j); err != nil {
			t.Fatal(err)
		}
		back, err := FromJWK(j)
		if err != nil {
			t.Fatalf("%s %s: %v", m.Kty, m.Crv, err)
		}
		pub1, _ := json.Marshal(m.PublicJWK())
		pub2, _ := json.Marshal(back.PublicJWK())
		if !bytes.Equal(pub1, pub2) {
			t.Fatalf("%s: the public key changed across a JWK round trip", m.Kty)
		}
	}
	rsaJWK := gen(t, RSA, 2048, "").PrivateJWK()
	other := gen(t, EC, 0, P256).PrivateJWK()
	badCases := map[string]JWK{
		"no kty":         {N: rsaJWK.N},
		"rsa without d":  {Kty: RSA, N: rsaJWK.N, E: rsaJWK.E},
		"rsa bad primes": {Kty: RSA, N: rsaJWK.N, E: rsaJWK.E, D: rsaJWK.D, P: rsaJWK.Q, Q: rsaJWK.Q},
		"ec mismatch":    {Kty: EC, Crv: P256, D: gen(t, EC, 0, P256).PrivateJWK().D, X: other.X, Y: other.Y},
		"ec bad curve":   {Kty: EC, Crv: "P-192", D: other.D, X: other.X, Y: other.Y},
		"oct short":      {Kty: Oct, K: []byte("short")},
		"hsm":            {Kty: "RSA-HSM"},
	}
	for name, j := range badCases {
		if _, err := FromJWK(j); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: %v, want ErrBadKey", name, err)
		}
	}
}
