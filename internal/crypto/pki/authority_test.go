package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"
)

func TestAuthorityIssuesWhatItSays(t *testing.T) {
	now := time.Now()
	ca, err := NewAuthority("Coffer install CA", now)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Cert.Subject.CommonName != "Coffer install CA" || !ca.Cert.IsCA {
		t.Fatalf("CA subject %q, IsCA %v", ca.Cert.Subject.CommonName, ca.Cert.IsCA)
	}
	// A round trip through its PEM keeps the same CA.
	p, err := ca.Pair()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseAuthority(p)
	if err != nil || !back.Cert.Equal(ca.Cert) {
		t.Fatalf("ParseAuthority: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())

	names := []string{"*.vault.example", "vault.example"}
	srv, err := back.Server(names, []net.IP{net.IPv4(10, 0, 0, 1)}, now)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, name := range []string{"demo.vault.example", "vault.example", "10.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("the server certificate does not verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: pool}); err == nil {
		t.Error("the server certificate verifies for a name it was not issued for")
	}

	for _, tc := range []struct {
		name  string
		names []string
		at    time.Time
		want  bool
	}{
		{"same names, fresh", names, now, true},
		{"other names", []string{"*.kv.example", "kv.example"}, now, false},
		{"near expiry", names, now.Add(leafValidity - 10*24*time.Hour), false},
	} {
		if got := ca.Covers(srv, tc.names, tc.at); got != tc.want {
			t.Errorf("%s: Covers = %v, want %v", tc.name, got, tc.want)
		}
	}
	other, _ := NewAuthority("another CA", now)
	if other.Covers(srv, names, now) {
		t.Error("another CA covers a certificate it did not sign")
	}

	cl, err := ca.Client("admin", []string{"system:masters"}, now)
	if err != nil {
		t.Fatal(err)
	}
	cc, _, _ := parsePair(cl)
	if cc.Subject.CommonName != "admin" || len(cc.Subject.Organization) != 1 || cc.Subject.Organization[0] != "system:masters" {
		t.Errorf("client certificate subject %v", cc.Subject)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate does not verify as a client's: %v", err)
	}
	if _, err := ParseAuthority(srv); err == nil {
		t.Error("a server certificate was taken as a CA")
	}
}
