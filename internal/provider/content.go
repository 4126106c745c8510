package provider

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"

	"github.com/cofferhq/coffer/internal/azparams"
	"github.com/cofferhq/coffer/internal/certfmt"
	"github.com/cofferhq/coffer/internal/kvclient"
)

// fetched is what the vault returned for one object version: the parts the
// content rules need.
type fetched struct {
	Version string
	// secret
	Value       string
	ContentType string
	CertBacked  bool
	// key
	Key *kvclient.JWK
	// cert
	CER []byte
}

func (f *fetched) size() int { return len(f.Value) + len(f.CER) + 256 }

// contentError is a content rule that the object cannot meet.
type contentError struct{ msg string }

func (e contentError) Error() string { return e.msg }

// content applies Azure's rules for what a file holds:
//   - secret: the value; a certificate's secret as PEM (PKCS#8 key, then the
//     chain leaf to root), or, with objectFormat pfx, the base64 PFX as
//     stored; then objectEncoding decodes base64 or hex;
//   - key: the public key, PKIX PEM;
//   - cert: the certificate alone, PEM.
func content(o azparams.Object, f *fetched) ([]byte, error) {
	switch o.Type {
	case azparams.TypeKey:
		return publicKeyPEM(f.Key)
	case azparams.TypeCert:
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.CER}), nil
	}
	value := f.Value
	if f.CertBacked {
		switch f.ContentType {
		case certfmt.PEM:
		case certfmt.PFX, "":
			if !strings.EqualFold(o.Format, "pfx") {
				b, err := certfmt.Decode([]byte(value), "")
				if err != nil {
					return nil, contentError{fmt.Sprintf("the certificate's PFX does not convert to PEM: %v", err)}
				}
				if value, err = b.Encode(certfmt.PEM); err != nil {
					return nil, err
				}
			}
		default:
			return nil, contentError{fmt.Sprintf("the certificate's secret has unknown content type %q", f.ContentType)}
		}
	}
	switch strings.ToLower(o.Encoding) {
	case "base64":
		b, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return nil, contentError{"objectEncoding base64: the value is not base64"}
		}
		return b, nil
	case "hex":
		b, err := hex.DecodeString(value)
		if err != nil {
			return nil, contentError{"objectEncoding hex: the value is not hex"}
		}
		return b, nil
	}
	return []byte(value), nil
}

func publicKeyPEM(j *kvclient.JWK) ([]byte, error) {
	dec := func(s string) []byte {
		b, _ := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		return b
	}
	var pub any
	switch j.Kty {
	case "RSA", "RSA-HSM":
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(dec(j.N)), E: int(new(big.Int).SetBytes(dec(j.E)).Int64())}
	case "EC", "EC-HSM":
		curve, ok := map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}[j.Crv]
		if !ok {
			return nil, contentError{fmt.Sprintf("curve %s has no standard public-key PEM; objectType key supports P-256, P-384 and P-521", j.Crv)}
		}
		size := (curve.Params().BitSize + 7) / 8
		x, y := dec(j.X), dec(j.Y)
		if len(x) > size || len(y) > size {
			return nil, contentError{"the key's coordinates are longer than its curve allows"}
		}
		point := append([]byte{4}, append(append(make([]byte, size-len(x)), x...), append(make([]byte, size-len(y)), y...)...)...)
		k, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, contentError{fmt.Sprintf("the vault returned an invalid EC key: %v", err)}
		}
		pub = k
	default:
		return nil, contentError{fmt.Sprintf("a %s key has no public part to write; objectType key supports RSA and EC keys", j.Kty)}
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
