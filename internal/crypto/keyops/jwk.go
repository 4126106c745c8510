// Package keyops holds Key Vault key material and the cryptographic
// operations on it: generation, JSON Web Key import and export, sign and
// verify, encrypt and decrypt, wrap and unwrap. It knows nothing of vaults,
// storage or HTTP.
package keyops

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// B64 is binary data that JSON carries as base64url without padding, as
// JWKs and Key Vault operation results do. Decoding also accepts padding
// and the standard alphabet, which some clients send.
type B64 []byte

// MarshalJSON implements json.Marshaler.
func (b B64) MarshalJSON() ([]byte, error) {
	return json.Marshal(base64.RawURLEncoding.EncodeToString(b))
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *B64) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	d, err := DecodeB64(s)
	if err != nil {
		return err
	}
	*b = d
	return nil
}

// DecodeB64 decodes base64url or standard base64, padded or not.
func DecodeB64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if d, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return d, nil
	}
	if d, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return d, nil
	}
	return nil, errors.New("not valid base64url")
}

// JWK is a JSON Web Key in Key Vault's dialect. Private fields are set only
// on import and in sealed storage; they never leave the server.
type JWK struct {
	Kid    string   `json:"kid,omitempty"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"key_ops,omitempty"`
	N      B64      `json:"n,omitempty"`
	E      B64      `json:"e,omitempty"`
	D      B64      `json:"d,omitempty"`
	DP     B64      `json:"dp,omitempty"`
	DQ     B64      `json:"dq,omitempty"`
	QI     B64      `json:"qi,omitempty"`
	P      B64      `json:"p,omitempty"`
	Q      B64      `json:"q,omitempty"`
	K      B64      `json:"k,omitempty"`
	Crv    string   `json:"crv,omitempty"`
	X      B64      `json:"x,omitempty"`
	Y      B64      `json:"y,omitempty"`
	HSM    B64      `json:"key_hsm,omitempty"`
}

// Key types, curves and operations, spelled as Azure spells them.
const (
	RSA = "RSA"
	EC  = "EC"
	Oct = "oct"

	P256  = "P-256"
	P256K = "P-256K"
	P384  = "P-384"
	P521  = "P-521"

	OpEncrypt   = "encrypt"
	OpDecrypt   = "decrypt"
	OpSign      = "sign"
	OpVerify    = "verify"
	OpWrapKey   = "wrapKey"
	OpUnwrapKey = "unwrapKey"
	OpImport    = "import"
)

// DefaultOps returns the operations a key of type kty allows when none are
// given.
func DefaultOps(kty string) []string {
	switch kty {
	case RSA:
		return []string{OpEncrypt, OpDecrypt, OpSign, OpVerify, OpWrapKey, OpUnwrapKey}
	case EC:
		return []string{OpSign, OpVerify}
	case Oct:
		return []string{OpEncrypt, OpDecrypt, OpWrapKey, OpUnwrapKey}
	}
	return nil
}

// ValidOps reports the operations that make sense for kty.
func ValidOps(kty string) []string {
	ops := DefaultOps(kty)
	return append(ops, OpImport)
}
