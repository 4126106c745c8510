package certfmt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

type pair struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

// chain makes root -> intermediate -> leaf.
func chain(t *testing.T) (root, mid, leaf pair) {
	t.Helper()
	mk := func(cn string, parent *pair, ca bool) pair {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: ca, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
		pt, pk := tmpl, k
		if parent != nil {
			pt, pk = parent.cert, parent.key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, pt, &k.PublicKey, pk)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return pair{k, c}
	}
	root = mk("root", nil, true)
	mid = mk("mid", &root, true)
	leaf = mk("leaf", &mid, false)
	return
}

// Whatever order the certificates come in, the bundle is leaf to root, and
// both encodings round-trip.
func TestAssembleOrdersAndRoundTrips(t *testing.T) {
	root, mid, leaf := chain(t)
	b, err := Assemble(leaf.key, []*x509.Certificate{root.cert, leaf.cert, mid.cert})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"leaf", "mid", "root"}
	for i, c := range b.Chain {
		if c.Subject.CommonName != want[i] {
			t.Fatalf("chain[%d] = %s", i, c.Subject.CommonName)
		}
	}
	for _, ct := range []string{PFX, PEM} {
		v, err := b.Encode(ct)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode([]byte(v), "")
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		if len(back.Chain) != 3 || !back.Leaf().Equal(leaf.cert) || !back.Key.Public().(*ecdsa.PublicKey).Equal(&leaf.key.PublicKey) {
			t.Fatalf("%s round trip lost the chain or key", ct)
		}
		conv, err := Convert(v, ct, map[string]string{PFX: PEM, PEM: PFX}[ct])
		if err != nil || conv == v {
			t.Fatalf("convert from %s: %v", ct, err)
		}
	}
}

func TestDecodeRefusals(t *testing.T) {
	_, mid, leaf := chain(t)
	b, _ := Assemble(leaf.key, []*x509.Certificate{leaf.cert})
	pemValue, _ := b.Encode(PEM)
	certOnly := pemValue[strings.Index(pemValue, "-----BEGIN CERTIFICATE"):]
	wrongKey, _ := (Bundle{Key: mid.key, Chain: []*x509.Certificate{mid.cert}}).Encode(PEM)
	wrongKey = wrongKey[:strings.Index(wrongKey, "-----BEGIN CERTIFICATE")] + certOnly
	pfx, _ := pkcs12.Modern.Encode(leaf.key, leaf.cert, nil, "right")
	for label, c := range map[string]struct {
		value, password, want string
	}{
		"PEM without a key":   {certOnly, "", "key"},
		"key of another cert": {wrongKey, "", "matches none"},
		"wrong PFX password":  {string(pfx), "wrong", "password"},
		"neither PFX nor PEM": {"bm90IGEgcGZ4", "", "neither"},
		"PEM without a cert":  {pemValue[:strings.Index(pemValue, "-----BEGIN CERTIFICATE")], "", "certificate"},
	} {
		_, err := Decode([]byte(c.value), c.password)
		if !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrBad mentioning %q", label, err, c.want)
		}
	}
	if _, err := Decode(pfx, "right"); err != nil {
		t.Fatalf("raw PFX with its password: %v", err)
	}
}
