package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// ErrNotPEM means a certificate or key is not in the PEM form expected.
var ErrNotPEM = errors.New("not a PEM certificate and PKCS #8 key")

// Authority is a CA held in memory, for certificates kept elsewhere than
// in files: `coffer install` keeps its CA in a Kubernetes Secret, and the
// local cluster signs its apiserver's and clients' certificates with one.
type Authority struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Pair is a certificate and its key, PEM-encoded (the key as PKCS #8).
type Pair struct {
	CertPEM, KeyPEM []byte
}

// NewAuthority makes a CA named name, valid for ten years from now.
func NewAuthority(name string, now time.Time) (*Authority, error) {
	cert, key, err := newCA(name, now)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Key: key}, nil
}

// ParseAuthority reads a CA that Pair wrote.
func ParseAuthority(p Pair) (*Authority, error) {
	cert, key, err := parsePair(p)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%w: the certificate is not a CA", ErrNotPEM)
	}
	return &Authority{Cert: cert, Key: key}, nil
}

// Pair returns the CA's certificate and key.
func (a *Authority) Pair() (Pair, error) { return encodePair(a.Cert, a.Key) }

// CertPEM is the CA's certificate, for clients to trust.
func (a *Authority) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Cert.Raw})
}

// Server issues a serving certificate for names and addresses; the first
// name, or else the first address, is its subject.
func (a *Authority) Server(names []string, ips []net.IP, now time.Time) (Pair, error) {
	cn := ""
	if len(names) > 0 {
		cn = names[0]
	} else if len(ips) > 0 {
		cn = ips[0].String()
	}
	return a.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"Coffer"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    names, IPAddresses: ips,
	}, now)
}

// Client issues a client certificate for a user (its common name) in
// groups (its organizations), the form Kubernetes' x509 authenticator
// reads.
func (a *Authority) Client(user string, groups []string, now time.Time) (Pair, error) {
	return a.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, now)
}

func (a *Authority) issue(tmpl *x509.Certificate, now time.Time) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(leafValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, &key.PublicKey, a.Key)
	if err != nil {
		return Pair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, err
	}
	return encodePair(cert, key)
}

// Covers reports whether p is a certificate this CA signed for exactly
// names, valid for 30 days more: one that needs no reissue.
func (a *Authority) Covers(p Pair, names []string, now time.Time) bool {
	cert, _, err := parsePair(p)
	return err == nil && cert.CheckSignatureFrom(a.Cert) == nil && now.Add(renewBefore).Before(cert.NotAfter) &&
		slices.Equal(cert.DNSNames, names)
}

func encodePair(cert *x509.Certificate, key crypto.Signer) (Pair, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
	}, nil
}

func parsePair(p Pair) (*x509.Certificate, crypto.Signer, error) {
	cblk, _ := pem.Decode(p.CertPEM)
	kblk, _ := pem.Decode(p.KeyPEM)
	if cblk == nil || kblk == nil {
		return nil, nil, ErrNotPEM
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotPEM, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotPEM, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the key cannot sign", ErrNotPEM)
	}
	return cert, signer, nil
}
