package keyops

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k1ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// sigAlg describes a signature algorithm: the key it needs and the digest it
// signs.
type sigAlg struct {
	kty  string
	crv  string
	hash crypto.Hash
	pss  bool
}

var signatureAlgorithms = map[string]sigAlg{
	"RS256":  {kty: RSA, hash: crypto.SHA256},
	"RS384":  {kty: RSA, hash: crypto.SHA384},
	"RS512":  {kty: RSA, hash: crypto.SHA512},
	"PS256":  {kty: RSA, hash: crypto.SHA256, pss: true},
	"PS384":  {kty: RSA, hash: crypto.SHA384, pss: true},
	"PS512":  {kty: RSA, hash: crypto.SHA512, pss: true},
	"ES256":  {kty: EC, crv: P256, hash: crypto.SHA256},
	"ES256K": {kty: EC, crv: P256K, hash: crypto.SHA256},
	"ES384":  {kty: EC, crv: P384, hash: crypto.SHA384},
	"ES512":  {kty: EC, crv: P521, hash: crypto.SHA512},
}

// SignatureAlgorithms lists the algorithms Sign accepts.
func SignatureAlgorithms() []string {
	return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512"}
}

func (m *Material) sigAlg(alg string, digest []byte) (sigAlg, error) {
	a, ok := signatureAlgorithms[alg]
	if !ok {
		return a, fmt.Errorf("%w: %q is not a signature algorithm; use one of %v", ErrAlgorithm, alg, SignatureAlgorithms())
	}
	if a.kty != m.Kty || (a.crv != "" && a.crv != m.Crv) {
		what := m.Kty
		if m.Crv != "" {
			what += " " + m.Crv
		}
		return a, fmt.Errorf("%w: %s cannot be used with a %s key", ErrAlgorithm, alg, what)
	}
	if len(digest) != a.hash.Size() {
		return a, fmt.Errorf("%w: %s signs a %d-byte %s digest; got %d bytes", ErrAlgorithm, alg, a.hash.Size(), a.hash, len(digest))
	}
	return a, nil
}

// Sign signs a digest. EC signatures are the raw R||S, each padded to the
// curve's size, as JWS and Key Vault use.
func (m *Material) Sign(alg string, digest []byte) ([]byte, error) {
	a, err := m.sigAlg(alg, digest)
	if err != nil {
		return nil, err
	}
	switch {
	case m.RSA != nil && a.pss:
		return rsa.SignPSS(rand.Reader, m.RSA, a.hash, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case m.RSA != nil:
		return rsa.SignPKCS1v15(rand.Reader, m.RSA, a.hash, digest)
	case m.K1 != nil:
		sig := k1ecdsa.Sign(m.K1, digest)
		r, s := sig.R(), sig.S()
		rb, sb := r.Bytes(), s.Bytes()
		return append(rb[:], sb[:]...), nil
	case m.EC != nil:
		r, s, err := ecdsa.Sign(rand.Reader, m.EC, digest)
		if err != nil {
			return nil, err
		}
		size := (m.EC.Curve.Params().BitSize + 7) / 8
		return append(pad(r.Bytes(), size), pad(s.Bytes(), size)...), nil
	}
	return nil, fmt.Errorf("%w: oct keys do not sign", ErrAlgorithm)
}

// Verify checks a signature over a digest.
func (m *Material) Verify(alg string, digest, sig []byte) (bool, error) {
	a, err := m.sigAlg(alg, digest)
	if err != nil {
		return false, err
	}
	switch {
	case m.RSA != nil && a.pss:
		return rsa.VerifyPSS(&m.RSA.PublicKey, a.hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil, nil
	case m.RSA != nil:
		return rsa.VerifyPKCS1v15(&m.RSA.PublicKey, a.hash, digest, sig) == nil, nil
	case m.K1 != nil:
		if len(sig) != 64 {
			return false, nil
		}
		var r, s secp256k1.ModNScalar
		if r.SetByteSlice(sig[:32]) || s.SetByteSlice(sig[32:]) {
			return false, nil // overflowed the group order: not a valid signature
		}
		return k1ecdsa.NewSignature(&r, &s).Verify(digest, m.K1.PubKey()), nil
	case m.EC != nil:
		size := (m.EC.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return false, nil
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(&m.EC.PublicKey, digest, r, s), nil
	}
	return false, fmt.Errorf("%w: oct keys do not verify", ErrAlgorithm)
}
