package keyops

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// ErrBadKey means key material or a key request is malformed; the message
// says what is wrong.
var ErrBadKey = errors.New("invalid key")

// ErrAlgorithm means an algorithm does not fit the key, or the input does
// not fit the algorithm.
var ErrAlgorithm = errors.New("invalid algorithm for this key")

// ErrCrypto means an operation failed on its input: a signature of the
// wrong length, a ciphertext that does not decrypt.
var ErrCrypto = errors.New("cryptographic operation failed")

func badKey(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadKey, fmt.Sprintf(format, args...))
}

// Material is one private key: RSA, EC (NIST curves or secp256k1) or an
// AES key.
type Material struct {
	Kty string
	Crv string
	RSA *rsa.PrivateKey
	EC  *ecdsa.PrivateKey
	K1  *secp256k1.PrivateKey
	Oct []byte
}

// Sizes and curves Coffer creates.
var (
	RSASizes = []int{2048, 3072, 4096}
	OctSizes = []int{128, 192, 256}
	Curves   = []string{P256, P256K, P384, P521}
)

func nistCurve(crv string) elliptic.Curve {
	switch crv {
	case P256:
		return elliptic.P256()
	case P384:
		return elliptic.P384()
	case P521:
		return elliptic.P521()
	}
	return nil
}

// NormalizeKty maps the HSM spellings to their software types, refusing
// them: Coffer keys are software-protected, and claiming otherwise would
// mislead.
func NormalizeKty(kty string) (string, error) {
	switch kty {
	case RSA, EC, Oct:
		return kty, nil
	case "RSA-HSM", "EC-HSM", "oct-HSM":
		return "", badKey("key type %s needs a hardware security module; Coffer keys are software-protected: use %s", kty, strings.TrimSuffix(kty, "-HSM"))
	}
	return "", badKey("unknown key type %q: use RSA, EC or oct", kty)
}

// Generate makes a new key. size is in bits (RSA, oct; 0 takes 2048 or
// 256); crv names an EC curve (default P-256).
func Generate(kty string, size int, crv string) (*Material, error) {
	switch kty {
	case RSA:
		if size == 0 {
			size = 2048
		}
		if !slices.Contains(RSASizes, size) {
			return nil, badKey("RSA key size %d is not supported: use 2048, 3072 or 4096", size)
		}
		k, err := rsa.GenerateKey(rand.Reader, size)
		if err != nil {
			return nil, err
		}
		return &Material{Kty: RSA, RSA: k}, nil
	case EC:
		if size != 0 {
			return nil, badKey("EC keys take a curve (crv), not a key size")
		}
		if crv == "" {
			crv = P256
		}
		if crv == P256K {
			k, err := secp256k1.GeneratePrivateKey()
			if err != nil {
				return nil, err
			}
			return &Material{Kty: EC, Crv: P256K, K1: k}, nil
		}
		c := nistCurve(crv)
		if c == nil {
			return nil, badKey("curve %q is not supported: use P-256, P-256K, P-384 or P-521", crv)
		}
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			return nil, err
		}
		return &Material{Kty: EC, Crv: crv, EC: k}, nil
	case Oct:
		if size == 0 {
			size = 256
		}
		if !slices.Contains(OctSizes, size) {
			return nil, badKey("oct key size %d is not supported: use 128, 192 or 256", size)
		}
		k := make([]byte, size/8)
		rand.Read(k)
		return &Material{Kty: Oct, Oct: k}, nil
	}
	_, err := NormalizeKty(kty)
	return nil, err
}

// Bits returns the key size in bits (for EC, the curve's).
func (m *Material) Bits() int {
	switch {
	case m.RSA != nil:
		return m.RSA.N.BitLen()
	case m.EC != nil:
		return m.EC.Curve.Params().BitSize
	case m.K1 != nil:
		return 256
	}
	return len(m.Oct) * 8
}

func pad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	return append(make([]byte, n-len(b)), b...)
}

// PublicJWK returns the key's public half, which is all a client ever sees.
// An oct key has no public half: only its type.
func (m *Material) PublicJWK() JWK {
	j := JWK{Kty: m.Kty, Crv: m.Crv}
	switch {
	case m.RSA != nil:
		j.N, j.E = m.RSA.N.Bytes(), big.NewInt(int64(m.RSA.E)).Bytes()
	case m.EC != nil:
		pub, _ := m.EC.PublicKey.Bytes() // 0x04 || X || Y
		size := (len(pub) - 1) / 2
		j.X, j.Y = pub[1:1+size], pub[1+size:]
	case m.K1 != nil:
		pub := m.K1.PubKey().SerializeUncompressed()
		j.X, j.Y = pub[1:33], pub[33:65]
	}
	return j
}

// PrivateJWK returns the whole key, for sealed storage only.
func (m *Material) PrivateJWK() JWK {
	j := m.PublicJWK()
	switch {
	case m.RSA != nil:
		m.RSA.Precompute()
		j.D, j.P, j.Q = m.RSA.D.Bytes(), m.RSA.Primes[0].Bytes(), m.RSA.Primes[1].Bytes()
		j.DP, j.DQ, j.QI = m.RSA.Precomputed.Dp.Bytes(), m.RSA.Precomputed.Dq.Bytes(), m.RSA.Precomputed.Qinv.Bytes()
	case m.EC != nil:
		j.D, _ = m.EC.Bytes()
	case m.K1 != nil:
		j.D = m.K1.Serialize()
	default:
		j.K = m.Oct
	}
	return j
}

// FromJWK reads a private key from a JWK, validating it: every required
// member present, the math consistent, the size and curve supported.
func FromJWK(j JWK) (*Material, error) {
	kty, err := NormalizeKty(j.Kty)
	if err != nil {
		return nil, err
	}
	switch kty {
	case RSA:
		if len(j.N) == 0 || len(j.E) == 0 || len(j.D) == 0 || len(j.P) == 0 || len(j.Q) == 0 {
			return nil, badKey("an RSA key needs n, e, d, p and q (and should have dp, dq and qi)")
		}
		e := new(big.Int).SetBytes(j.E)
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, badKey("RSA public exponent e is out of range")
		}
		k := &rsa.PrivateKey{
			PublicKey: rsa.PublicKey{N: new(big.Int).SetBytes(j.N), E: int(e.Int64())},
			D:         new(big.Int).SetBytes(j.D),
			Primes:    []*big.Int{new(big.Int).SetBytes(j.P), new(big.Int).SetBytes(j.Q)},
		}
		if err := k.Validate(); err != nil {
			return nil, badKey("the RSA key is not consistent: %v", err)
		}
		if !slices.Contains(RSASizes, k.N.BitLen()) {
			return nil, badKey("RSA key size %d is not supported: use 2048, 3072 or 4096", k.N.BitLen())
		}
		k.Precompute()
		return &Material{Kty: RSA, RSA: k}, nil
	case EC:
		if len(j.D) == 0 || len(j.X) == 0 || len(j.Y) == 0 {
			return nil, badKey("an EC key needs crv, x, y and d")
		}
		if j.Crv == P256K {
			var d secp256k1.ModNScalar
			if len(j.D) > 32 || d.SetByteSlice(j.D) || d.IsZero() {
				return nil, badKey("d is not a valid P-256K private key")
			}
			k := secp256k1.NewPrivateKey(&d)
			pub := k.PubKey().SerializeUncompressed()
			if !slices.Equal(pad(j.X, 32), pub[1:33]) || !slices.Equal(pad(j.Y, 32), pub[33:65]) {
				return nil, badKey("the P-256K key's x and y do not match d")
			}
			return &Material{Kty: EC, Crv: P256K, K1: k}, nil
		}
		c := nistCurve(j.Crv)
		if c == nil {
			return nil, badKey("curve %q is not supported: use P-256, P-256K, P-384 or P-521", j.Crv)
		}
		size := (c.Params().BitSize + 7) / 8
		if len(j.D) > size {
			return nil, badKey("d is longer than the %s curve allows", j.Crv)
		}
		// ParseRawPrivateKey checks that the scalar is in range; derive the
		// public point from it and require x and y to match.
		k, err := ecdsa.ParseRawPrivateKey(c, pad(j.D, size))
		if err != nil {
			return nil, badKey("d is not a valid %s private key: %v", j.Crv, err)
		}
		pub, _ := k.PublicKey.Bytes()
		if !slices.Equal(pad(j.X, size), pub[1:1+size]) || !slices.Equal(pad(j.Y, size), pub[1+size:]) {
			return nil, badKey("the EC key's x and y do not match d")
		}
		return &Material{Kty: EC, Crv: j.Crv, EC: k}, nil
	default:
		if !slices.Contains(OctSizes, len(j.K)*8) {
			return nil, badKey("an oct key needs k of 16, 24 or 32 bytes; got %d", len(j.K))
		}
		return &Material{Kty: Oct, Oct: append([]byte(nil), j.K...)}, nil
	}
}

// FromPrivateKey wraps a parsed private key (RSA or NIST EC), as found in a
// certificate's PFX or PEM.
func FromPrivateKey(k any) (*Material, error) {
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if err := k.Validate(); err != nil {
			return nil, badKey("the RSA key is not consistent: %v", err)
		}
		return &Material{Kty: RSA, RSA: k}, nil
	case *ecdsa.PrivateKey:
		for _, crv := range []string{P256, P384, P521} {
			if k.Curve == nistCurve(crv) {
				return &Material{Kty: EC, Crv: crv, EC: k}, nil
			}
		}
		return nil, badKey("unsupported EC curve %s", k.Curve.Params().Name)
	}
	return nil, badKey("unsupported private key type %T: use RSA or EC", k)
}

// Public returns the Go public key (for certificates and verification).
func (m *Material) Public() any {
	switch {
	case m.RSA != nil:
		return &m.RSA.PublicKey
	case m.EC != nil:
		return &m.EC.PublicKey
	}
	return nil
}

// Signer returns the key as a Go private key (RSA or NIST EC).
func (m *Material) Signer() crypto.Signer {
	switch {
	case m.RSA != nil:
		return m.RSA
	case m.EC != nil:
		return m.EC
	}
	return nil
}
