package csidriver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

func bundle(t *testing.T, key any, pub any, pkcs8 bool) ([]byte, []byte) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tls"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	var kb *pem.Block
	if pkcs8 {
		b, _ := x509.MarshalPKCS8PrivateKey(key)
		kb = &pem.Block{Type: "PRIVATE KEY", Bytes: b}
	} else {
		kb = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))}
	}
	return append(pem.EncodeToMemory(kb), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...), der
}

// A kubernetes.io/tls Secret splits a certificate's PEM bundle: tls.crt the
// certificates, tls.key the key as PKCS#1 (RSA) or SEC 1 (EC).
func TestSecretDataTLS(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaPEM, rsaDER := bundle(t, rsaKey, &rsaKey.PublicKey, true)
	ecPEM, _ := bundle(t, ecKey, &ecKey.PublicKey, true)
	pkcs1PEM, _ := bundle(t, rsaKey, &rsaKey.PublicKey, false)
	files := map[string][]byte{"rsa": rsaPEM, "ec": ecPEM, "pkcs1": pkcs1PEM, "plain": []byte("v")}
	so := func(typ string, data ...string) *secretsstorev1.SecretObject {
		o := &secretsstorev1.SecretObject{SecretName: "s", Type: typ}
		for i := 0; i < len(data); i += 2 {
			o.Data = append(o.Data, &secretsstorev1.SecretObjectData{ObjectName: data[i], Key: data[i+1]})
		}
		return o
	}
	out, typ, err := secretData(so("kubernetes.io/tls", "rsa", "tls.crt", "rsa", "tls.key"), files)
	if err != nil || typ != corev1.SecretTypeTLS {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(out["tls.crt"]); b == nil || b.Type != "CERTIFICATE" || string(b.Bytes) != string(rsaDER) {
		t.Fatal("tls.crt")
	}
	if b, _ := pem.Decode(out["tls.key"]); b == nil || b.Type != "RSA PRIVATE KEY" {
		t.Fatal("tls.key is not PKCS#1")
	}
	out, _, err = secretData(so("kubernetes.io/tls", "ec", "tls.key"), files)
	if b, _ := pem.Decode(out["tls.key"]); err != nil || b == nil || b.Type != "EC PRIVATE KEY" {
		t.Fatalf("EC tls.key: %v", err)
	}
	if out, _, err = secretData(so("kubernetes.io/tls", "pkcs1", "tls.key"), files); err != nil || !strings.Contains(string(out["tls.key"]), "RSA PRIVATE KEY") {
		t.Fatalf("a PKCS#1 source: %v", err)
	}
	if out, _, err = secretData(so("Opaque", "plain", "k"), files); err != nil || string(out["k"]) != "v" {
		t.Fatal(err)
	}
	for label, c := range map[string]*secretsstorev1.SecretObject{
		"no name":        {Type: "Opaque", Data: []*secretsstorev1.SecretObjectData{{ObjectName: "plain", Key: "k"}}},
		"no type":        so("", "plain", "k"),
		"no data":        so("Opaque"),
		"no such file":   so("Opaque", "absent", "k"),
		"no key":         so("Opaque", "plain", ""),
		"bad tls key":    so("kubernetes.io/tls", "rsa", "ca.crt"),
		"no cert in tls": so("kubernetes.io/tls", "plain", "tls.crt"),
	} {
		if _, _, err := secretData(c, files); err == nil {
			t.Errorf("%s: accepted", label)
		}
	}
}
