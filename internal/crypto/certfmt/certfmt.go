// Package certfmt encodes and decodes a certificate with its private key
// and chain, as PKCS#12 (PFX) or PEM, the two forms Key Vault stores a
// certificate's secret in. Chains are ordered leaf to root.
package certfmt

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"software.sslmate.com/src/go-pkcs12"
)

// Content types of a certificate's secret.
const (
	PFX = "application/x-pkcs12"
	PEM = "application/x-pem-file"
)

// ErrBad means the input is not a usable certificate bundle; the message
// says why.
var ErrBad = errors.New("invalid certificate bundle")

// badError is an ErrBad whose text is only its reason, so callers can
// frame it.
type badError struct{ msg string }

func (e badError) Error() string        { return e.msg }
func (e badError) Is(target error) bool { return target == ErrBad }

func bad(format string, args ...any) error { return badError{fmt.Sprintf(format, args...)} }

// Bundle is a private key with its certificate chain, leaf first.
type Bundle struct {
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// Leaf returns the bundle's certificate.
func (b Bundle) Leaf() *x509.Certificate { return b.Chain[0] }

// Encode renders the bundle as a secret value of content type ct: base64 of
// an unprotected PFX (3DES-era algorithms, which every PKCS#12 reader
// accepts), or the PKCS#8 key PEM followed by the chain.
func (b Bundle) Encode(ct string) (string, error) {
	switch ct {
	case PFX, "":
		data, err := pkcs12.LegacyDES.Encode(b.Key, b.Chain[0], b.Chain[1:], "")
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(data), nil
	case PEM:
		der, err := x509.MarshalPKCS8PrivateKey(b.Key)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
		for _, c := range b.Chain {
			pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		return buf.String(), nil
	}
	return "", bad("content type %q is not one of %s and %s", ct, PFX, PEM)
}

// Decode reads a bundle from a PFX (raw or base64, with password) or PEM
// (a private key and one or more certificates, in any order). The key must
// match one of the certificates, which becomes the leaf; the chain is then
// ordered leaf to root by issuer.
func Decode(value []byte, password string) (Bundle, error) {
	trimmed := bytes.TrimSpace(value)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		return decodePEM(trimmed)
	}
	der := trimmed
	if d, err := base64.StdEncoding.DecodeString(string(trimmed)); err == nil {
		der = d
	}
	key, leaf, cas, err := pkcs12.DecodeChain(der, password)
	if err != nil {
		if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			return Bundle{}, bad("the PFX password is wrong")
		}
		return Bundle{}, bad("the value is neither a PFX nor PEM: %v", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return Bundle{}, bad("the PFX's private key cannot sign")
	}
	return Assemble(signer, append([]*x509.Certificate{leaf}, cas...))
}

func decodePEM(data []byte) (Bundle, error) {
	var key crypto.Signer
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return Bundle{}, bad("a certificate in the PEM does not parse: %v", err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			if key != nil {
				return Bundle{}, bad("the PEM holds more than one private key")
			}
			k, err := parseKey(blk)
			if err != nil {
				return Bundle{}, err
			}
			key = k
		case "ENCRYPTED PRIVATE KEY":
			return Bundle{}, bad("the PEM's private key is encrypted; import a PFX with its password, or decrypt the key first")
		}
	}
	if key == nil {
		return Bundle{}, bad("the PEM has no private key; a certificate import needs the key and the certificate")
	}
	if len(certs) == 0 {
		return Bundle{}, bad("the PEM has no certificate")
	}
	return Assemble(key, certs)
}

// DecodeKey reads the first private key (PKCS#8, PKCS#1 or SEC 1) of PEM
// data; an encrypted key is refused with what to do.
func DecodeKey(data []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		switch {
		case blk == nil:
			return nil, bad("the PEM holds no private key (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
		case blk.Type == "ENCRYPTED PRIVATE KEY" || blk.Headers["Proc-Type"] != "":
			return nil, bad("the PEM's private key is encrypted; decrypt it first (openssl pkey -in key.pem -out plain.pem)")
		case blk.Type == "PRIVATE KEY" || blk.Type == "RSA PRIVATE KEY" || blk.Type == "EC PRIVATE KEY":
			return parseKey(blk)
		}
	}
}

func parseKey(blk *pem.Block) (crypto.Signer, error) {
	var k any
	var err error
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, bad("the private key does not parse: %v", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, bad("unsupported private key type %T", k)
	}
	return s, nil
}

func samePublic(a, b crypto.PublicKey) bool {
	switch a := a.(type) {
	case *rsa.PublicKey:
		return a.Equal(b)
	case *ecdsa.PublicKey:
		return a.Equal(b)
	}
	return false
}

// Assemble makes a bundle of key and certs, ordered leaf (the certificate
// matching key) to root.
func Assemble(key crypto.Signer, certs []*x509.Certificate) (Bundle, error) {
	var leaf *x509.Certificate
	var rest []*x509.Certificate
	for _, c := range certs {
		if leaf == nil && samePublic(key.Public(), c.PublicKey) {
			leaf = c
		} else {
			rest = append(rest, c)
		}
	}
	if leaf == nil {
		return Bundle{}, bad("the private key matches none of the certificates")
	}
	chain := []*x509.Certificate{leaf}
	for cur := leaf; len(rest) > 0; {
		next := -1
		for i, c := range rest {
			if bytes.Equal(cur.RawIssuer, c.RawSubject) && cur.CheckSignatureFrom(c) == nil {
				next = i
				break
			}
		}
		if next < 0 {
			chain = append(chain, rest...) // unrelated extras keep their order, after the path
			break
		}
		cur = rest[next]
		chain = append(chain, cur)
		rest = append(rest[:next:next], rest[next+1:]...)
	}
	return Bundle{Key: key, Chain: chain}, nil
}

// Convert re-encodes a stored secret value from content type from to to.
func Convert(value, from, to string) (string, error) {
	if from == to || to == "" {
		return value, nil
	}
	raw := []byte(value)
	b, err := Decode(raw, "")
	if err != nil {
		return "", err
	}
	return b.Encode(to)
}

// Valid reports whether ct is a certificate secret content type.
func Valid(ct string) bool { return ct == PFX || ct == PEM || strings.TrimSpace(ct) == "" }
