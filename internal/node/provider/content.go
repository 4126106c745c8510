package provider

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/node/azparams"
)

// fetched is what the vault returned for one object version: the parts the
// content rules need.
type fetched struct {
	Version string
	ETag    string // the vault's tag for this state, for conditional reads
	// secret
	Value       string
	ContentType string
	CertBacked  bool
	// key
	Key *keyops.JWK
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
		b, err := keyops.PublicKeyPEM(*f.Key)
		if err != nil {
			return nil, contentError{err.Error()}
		}
		return b, nil
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
