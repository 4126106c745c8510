package keyops

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"strings"
)

// PublicKeyPEM encodes a JWK's public part as a PKIX "PUBLIC KEY" PEM
// block, as the CSI provider writes a key object and `coffer key download`
// saves one. Only RSA and the NIST curves have that encoding; anything
// malformed is refused rather than written.
func PublicKeyPEM(j JWK) ([]byte, error) {
	var pub any
	switch strings.TrimSuffix(j.Kty, "-HSM") {
	case RSA:
		n, e := new(big.Int).SetBytes(j.N), new(big.Int).SetBytes(j.E)
		if n.BitLen() < 512 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
			return nil, badKey("the RSA key's n or e is not valid")
		}
		pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
	case EC:
		curve := nistCurve(j.Crv)
		if curve == nil {
			return nil, badKey("curve %q has no standard public-key PEM; only P-256, P-384 and P-521 do", j.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(j.X) > size || len(j.Y) > size {
			return nil, badKey("the EC key's coordinates are longer than %s allows", j.Crv)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, pad(j.X, size)...), pad(j.Y, size)...))
		if err != nil {
			return nil, badKey("the EC key is not a point on %s: %v", j.Crv, err)
		}
		pub = k
	default:
		return nil, badKey("a %s key has no public part to write: only RSA and EC keys do", j.Kty)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
