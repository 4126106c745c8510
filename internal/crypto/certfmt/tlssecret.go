package certfmt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// The two halves of a kubernetes.io/tls Secret, as kubectl writes them,
// from a certificate's PEM bundle or unprotected PKCS#12: the CSI driver's
// secretObjects and the sync controller's SecretSyncs both split one.

// TLSCert returns the certificates of content (PEM, else an unprotected
// PKCS#12), in order, as PEM: tls.crt.
func TLSCert(content []byte) ([]byte, error) {
	var buf bytes.Buffer
	for rest := content; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})
		}
	}
	if buf.Len() > 0 {
		return buf.Bytes(), nil
	}
	bundle, err := Decode(content, "")
	if err != nil {
		return nil, errors.New("no certificate found: the file is neither PEM with a CERTIFICATE nor an unprotected PKCS#12")
	}
	for _, c := range bundle.Chain {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes(), nil
}

// TLSKey re-encodes the file's private key (its PEM key, else the key of
// an unprotected PKCS#12) as kubectl writes tls.key.
func TLSKey(content []byte) ([]byte, error) {
	key, err := DecodeKey(content)
	if err != nil {
		bundle, perr := Decode(content, "")
		if perr != nil {
			return nil, fmt.Errorf("no usable private key: %v", err)
		}
		key = bundle.Key
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	}
	return nil, fmt.Errorf("a %T key cannot go in a kubernetes.io/tls Secret: only RSA and ECDSA keys are supported", key)
}

// TLSSecretValue is the value of key in a kubernetes.io/tls Secret made
// from content: tls.crt (TLSCert) or tls.key (TLSKey). Such a Secret takes
// no other key.
func TLSSecretValue(key string, content []byte) ([]byte, error) {
	switch key {
	case "tls.crt":
		return TLSCert(content)
	case "tls.key":
		return TLSKey(content)
	}
	return nil, fmt.Errorf("key %q is not supported in a kubernetes.io/tls Secret: use tls.crt or tls.key", key)
}
