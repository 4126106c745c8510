package keyops

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
)

// Result is the output of an encryption: the ciphertext and, for AES-GCM,
// the IV and authentication tag.
type Result struct {
	Value []byte
	IV    []byte
	Tag   []byte
}

// Params are the inputs of an operation besides the algorithm.
type Params struct {
	Value []byte
	IV    []byte
	AAD   []byte
	Tag   []byte
}

const gcmNonceSize, gcmTagSize = 12, 16

func (m *Material) rsaOnly(alg string) error {
	if m.RSA == nil {
		return fmt.Errorf("%w: %s needs an RSA key; this is a %s key", ErrAlgorithm, alg, m.Kty)
	}
	return nil
}

// aesKeyFor checks that an AES algorithm matches the oct key's size.
func (m *Material) aesKeyFor(alg string, bits int) error {
	if m.Kty != Oct {
		return fmt.Errorf("%w: %s needs an oct key; this is a %s key", ErrAlgorithm, alg, m.Kty)
	}
	if len(m.Oct)*8 != bits {
		return fmt.Errorf("%w: %s needs a %d-bit key; this key has %d bits", ErrAlgorithm, alg, bits, len(m.Oct)*8)
	}
	return nil
}

func gcmBits(alg string) int {
	switch alg {
	case "A128GCM", "A128KW":
		return 128
	case "A192GCM", "A192KW":
		return 192
	case "A256GCM", "A256KW":
		return 256
	}
	return 0
}

// EncryptAlgorithms lists the algorithms Encrypt accepts.
var EncryptAlgorithms = []string{"RSA1_5", "RSA-OAEP", "RSA-OAEP-256", "A128GCM", "A192GCM", "A256GCM"}

// WrapAlgorithms lists the algorithms Wrap accepts.
var WrapAlgorithms = []string{"RSA1_5", "RSA-OAEP", "RSA-OAEP-256", "A128KW", "A192KW", "A256KW", "A128GCM", "A192GCM", "A256GCM"}

// Encrypt encrypts p.Value. AES-GCM draws a random 12-byte IV itself and
// refuses one from the caller: a caller that repeats an IV under a vault
// key would break GCM. It uses p.AAD and returns the IV and tag separately.
func (m *Material) Encrypt(alg string, p Params) (Result, error) {
	switch alg {
	case "RSA1_5", "RSA-OAEP", "RSA-OAEP-256":
		if err := m.rsaOnly(alg); err != nil {
			return Result{}, err
		}
		var out []byte
		var err error
		switch alg {
		case "RSA1_5":
			//lint:ignore SA1019 Key Vault's RSA1_5 is PKCS #1 v1.5 encryption, kept for clients that still use it.
			out, err = rsa.EncryptPKCS1v15(rand.Reader, &m.RSA.PublicKey, p.Value)
		case "RSA-OAEP":
			out, err = rsa.EncryptOAEP(sha1.New(), rand.Reader, &m.RSA.PublicKey, p.Value, nil)
		default:
			out, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, &m.RSA.PublicKey, p.Value, nil)
		}
		if err != nil {
			return Result{}, fmt.Errorf("%w: %v (the plaintext is too long for this key and padding?)", ErrCrypto, err)
		}
		return Result{Value: out}, nil
	case "A128GCM", "A192GCM", "A256GCM":
		if err := m.aesKeyFor(alg, gcmBits(alg)); err != nil {
			return Result{}, err
		}
		if len(p.IV) > 0 {
			return Result{}, fmt.Errorf("%w: %s encryption generates its own iv; send none (a reused iv would break AES-GCM)", ErrAlgorithm, alg)
		}
		g, _ := gcm(m.Oct)
		iv := make([]byte, gcmNonceSize)
		rand.Read(iv)
		sealed := g.Seal(nil, iv, p.Value, p.AAD)
		n := len(sealed) - gcmTagSize
		return Result{Value: sealed[:n], IV: iv, Tag: sealed[n:]}, nil
	}
	return Result{}, fmt.Errorf("%w: %q is not an encryption algorithm; use one of %v", ErrAlgorithm, alg, EncryptAlgorithms)
}

// Decrypt reverses Encrypt.
func (m *Material) Decrypt(alg string, p Params) ([]byte, error) {
	switch alg {
	case "RSA1_5", "RSA-OAEP", "RSA-OAEP-256":
		if err := m.rsaOnly(alg); err != nil {
			return nil, err
		}
		var out []byte
		var err error
		switch alg {
		case "RSA1_5":
			//lint:ignore SA1019 Key Vault's RSA1_5 is PKCS #1 v1.5 encryption, kept for clients that still use it.
			out, err = rsa.DecryptPKCS1v15(rand.Reader, m.RSA, p.Value)
		case "RSA-OAEP":
			out, err = rsa.DecryptOAEP(sha1.New(), rand.Reader, m.RSA, p.Value, nil)
		default:
			out, err = rsa.DecryptOAEP(sha256.New(), rand.Reader, m.RSA, p.Value, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: the ciphertext does not decrypt with this key and %s", ErrCrypto, alg)
		}
		return out, nil
	case "A128GCM", "A192GCM", "A256GCM":
		if err := m.aesKeyFor(alg, gcmBits(alg)); err != nil {
			return nil, err
		}
		if len(p.IV) != gcmNonceSize || len(p.Tag) != gcmTagSize {
			return nil, fmt.Errorf("%w: %s decryption needs the 12-byte iv and 16-byte tag the encryption returned", ErrAlgorithm, alg)
		}
		g, _ := gcm(m.Oct)
		out, err := g.Open(nil, p.IV, append(append([]byte(nil), p.Value...), p.Tag...), p.AAD)
		if err != nil {
			return nil, fmt.Errorf("%w: the ciphertext, iv, tag or aad do not authenticate", ErrCrypto)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: %q is not an encryption algorithm; use one of %v", ErrAlgorithm, alg, EncryptAlgorithms)
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// Wrap encrypts a key. RSA and AES-GCM behave as in Encrypt; A*KW is AES
// key wrap (RFC 3394), which takes keys of at least 16 bytes, in 8-byte
// steps.
func (m *Material) Wrap(alg string, p Params) (Result, error) {
	switch alg {
	case "A128KW", "A192KW", "A256KW":
		if err := m.aesKeyFor(alg, gcmBits(alg)); err != nil {
			return Result{}, err
		}
		out, err := aesKeyWrap(m.Oct, p.Value)
		if err != nil {
			return Result{}, err
		}
		return Result{Value: out}, nil
	}
	return m.Encrypt(alg, p)
}

// Unwrap reverses Wrap.
func (m *Material) Unwrap(alg string, p Params) ([]byte, error) {
	switch alg {
	case "A128KW", "A192KW", "A256KW":
		if err := m.aesKeyFor(alg, gcmBits(alg)); err != nil {
			return nil, err
		}
		return aesKeyUnwrap(m.Oct, p.Value)
	}
	return m.Decrypt(alg, p)
}
