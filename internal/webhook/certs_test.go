package webhook

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func mustBundle(t *testing.T, now time.Time, hosts []string, validity time.Duration) certBundle {
	t.Helper()
	b, err := generateBundle(now, hosts, validity)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustCert(t *testing.T, pemData []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(pemBlock(pemData))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGenerateBundle(t *testing.T) {
	hosts := append(ServiceHosts("coffer-webhook", "coffer-system"), "127.0.0.1", "webhook.example.com")
	b := mustBundle(t, t0, hosts, 90*24*time.Hour)
	ca, leaf := mustCert(t, b.CA), mustCert(t, b.Cert)
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA %+v", ca)
	}
	if leaf.IsCA || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("leaf usage %v IsCA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	wantDNS := []string{"coffer-webhook", "coffer-webhook.coffer-system", "coffer-webhook.coffer-system.svc", "coffer-webhook.coffer-system.svc.cluster.local", "webhook.example.com"}
	if !slices.Equal(leaf.DNSNames, wantDNS) || len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	for _, c := range []*x509.Certificate{ca, leaf} {
		if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", c.Subject, c.PublicKey)
		}
		if !c.NotAfter.Equal(t0.Add(90*24*time.Hour)) || !c.NotBefore.Equal(t0.Add(-time.Hour)) {
			t.Errorf("%s: valid %s to %s", c.Subject, c.NotBefore, c.NotAfter)
		}
	}
	if blk, _ := pem.Decode(b.Key); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Error("the key is not PKCS#8 PEM")
	}
	// A new CA every time: nothing can be signed by a key kept elsewhere.
	if again := mustBundle(t, t0, hosts, time.Hour); bytes.Equal(again.CA, b.CA) {
		t.Error("two bundles share a CA")
	}
}

func TestRenewalReason(t *testing.T) {
	hosts := []string{"svc.ns.svc", "127.0.0.1"}
	const life = 90 * 24 * time.Hour
	b := mustBundle(t, t0, hosts, life)
	other := mustBundle(t, t0, hosts, life)
	// Lifetime counts from NotBefore, an hour before generation.
	twoThirds := t0.Add(-time.Hour).Add((life + time.Hour) * 2 / 3)
	for name, c := range map[string]struct {
		now    time.Time
		b      certBundle
		hosts  []string
		reason string // "" or a substring
	}{
		"fresh":                       {t0, b, hosts, ""},
		"fewer hosts than covered":    {t0, b, hosts[:1], ""},
		"just before two thirds":      {twoThirds.Add(-time.Second), b, hosts, ""},
		"at two thirds":               {twoThirds, b, hosts, "last third"},
		"expired":                     {t0.Add(life + time.Second), b, hosts, "does not verify"},
		"not yet valid (clock skew)":  {t0.Add(-2 * time.Hour), b, hosts, "does not verify"},
		"a host not covered":          {t0, b, append(hosts, "svc.ns.svc.cluster.local"), "does not cover svc.ns.svc.cluster.local"},
		"an IP not covered":           {t0, b, []string{"10.0.0.1"}, "does not cover 10.0.0.1"},
		"no Secret":                   {t0, certBundle{}, hosts, "no certificate"},
		"no CA":                       {t0, certBundle{Cert: b.Cert, Key: b.Key}, hosts, "no certificate"},
		"the key of another":          {t0, certBundle{CA: b.CA, Cert: b.Cert, Key: other.Key}, hosts, "do not parse or match"},
		"signed by another CA":        {t0, certBundle{CA: other.CA, Cert: b.Cert, Key: b.Key}, hosts, "does not verify"},
		"a CA that is not PEM":        {t0, certBundle{CA: []byte("junk"), Cert: b.Cert, Key: b.Key}, hosts, "CA does not parse"},
		"a certificate that is junk":  {t0, certBundle{CA: b.CA, Cert: []byte("junk"), Key: b.Key}, hosts, "do not parse"},
		"the CA served as a cert too": {t0, certBundle{CA: b.CA, Cert: b.CA, Key: b.Key}, hosts, "do not parse or match"},
	} {
		t.Run(name, func(t *testing.T) {
			got := renewalReason(c.now, c.b, c.hosts)
			if (c.reason == "") != (got == "") || !strings.Contains(got, c.reason) {
				t.Fatalf("renewalReason = %q, want %q", got, c.reason)
			}
		})
	}
}

func TestValidateHosts(t *testing.T) {
	for h, ok := range map[string]bool{
		"svc": true, "svc.ns.svc": true, "127.0.0.1": true, "::1": true, "webhook.example.com": true,
		"": false, "https://x": false, "a b": false, "UPPER": false, "*.example.com": false,
	} {
		if err := ValidateHosts([]string{h}); (err == nil) != ok {
			t.Errorf("ValidateHosts(%q) = %v, want ok=%v", h, err, ok)
		}
	}
	if ValidateHosts(nil) == nil {
		t.Error("no hosts accepted")
	}
}

func TestMergeBundle(t *testing.T) {
	hosts := []string{"svc"}
	gen := func(at time.Time, life time.Duration) []byte { return mustBundle(t, at, hosts, life).CA }
	cur := gen(t0, 365*24*time.Hour)
	prev1 := gen(t0.Add(-100*24*time.Hour), 365*24*time.Hour)
	prev2 := gen(t0.Add(-200*24*time.Hour), 365*24*time.Hour)
	prev3 := gen(t0.Add(-300*24*time.Hour), 365*24*time.Hour)
	expired := gen(t0.Add(-400*24*time.Hour), 365*24*time.Hour)
	leaf := mustBundle(t, t0, hosts, time.Hour).Cert
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for name, c := range map[string]struct {
		have    []byte
		want    []byte
		changed bool
	}{
		"empty":                        {nil, cur, true},
		"already there":                {cat(prev1, cur), cat(prev1, cur), false},
		"rotation keeps the previous":  {prev1, cat(cur, prev1), true},
		"expired ones go":              {cat(expired, prev1), cat(cur, prev1), true},
		"at most two previous, newest": {cat(prev3, prev1, prev2), cat(cur, prev1, prev2), true},
		"garbage and non-CAs go":       {cat([]byte("junk\n"), leaf, prev1), cat(cur, prev1), true},
	} {
		t.Run(name, func(t *testing.T) {
			got, changed := mergeBundle(t0, cur, c.have)
			if changed != c.changed || !bytes.Equal(got, c.want) {
				t.Fatalf("mergeBundle changed=%v, %d certificates; want changed=%v, %d", changed, len(pemCertificates(got)), c.changed, len(pemCertificates(c.want)))
			}
		})
	}
}
