package pki

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"
)

func TestEnsureDevIssuesAndReuses(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	f, err := EnsureDev(dir, "vault.localhost", now)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	caPEM, _ := os.ReadFile(f.CACert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for _, name := range []string{"demo.vault.localhost", "vault.localhost", "localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("certificate does not verify for %s: %v", name, err)
		}
	}
	if fi, _ := os.Stat(f.Key); fi.Mode().Perm() != 0o600 {
		t.Errorf("server key mode = %v, want 0600", fi.Mode().Perm())
	}
	before, _ := os.ReadFile(f.Cert)
	if _, err := EnsureDev(dir, "vault.localhost", now); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.Cert)
	if string(before) != string(after) {
		t.Error("a valid certificate was reissued")
	}
	// A new suffix, or a date near expiry, reissues the leaf under the same CA.
	if _, err := EnsureDev(dir, "kv.test", now); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(f.Cert); string(again) == string(after) {
		t.Error("the certificate was not reissued for a new suffix")
	}
	if ca2, _ := os.ReadFile(f.CACert); string(ca2) != string(caPEM) {
		t.Error("the CA changed")
	}
}
