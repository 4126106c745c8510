package webhook_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/webhook"
)

// clock is a settable clock for the Rotator.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// The certificate's life cycle against the real apiserver: made once and
// stored, reused by the next start, rotated when due with the previous CA
// kept trusted, served without a restart, and agreed on by replicas that
// start together.
func TestCertificateSecret(t *testing.T) {
	kube := kubetest.Start(t, kubetest.Options{})
	ctx := context.Background()
	createNamespace(t, kube, "coffer-system")
	// Nothing needs to listen at the URL: the apiserver is not asked to
	// call it here.
	createWebhookConfig(t, kube, "https://127.0.0.1:1/mutate")
	clk := &clock{now: time.Now()}
	const validity = 90 * 24 * time.Hour
	hosts := append(webhook.ServiceHosts("coffer-webhook", "coffer-system"), "127.0.0.1")
	newRotator := func(secret string) *webhook.Rotator {
		r, err := webhook.NewRotator(webhook.RotatorConfig{
			Kube: kube.Client, SecretNamespace: "coffer-system", SecretName: secret, WebhookConfigName: webhookConfigName,
			Hosts: hosts, Validity: validity, Now: clk.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	secret := func(name string) *corev1.Secret {
		s := &corev1.Secret{}
		if err := kube.Client.Get(ctx, client.ObjectKey{Namespace: "coffer-system", Name: name}, s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	bundle := func() []*x509.Certificate {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := kube.Client.Get(ctx, client.ObjectKey{Name: webhookConfigName}, mwc); err != nil {
			t.Fatal(err)
		}
		return parseCerts(t, mwc.Webhooks[0].ClientConfig.CABundle)
	}

	// First start: a Secret of type kubernetes.io/tls, and its CA published.
	first := newRotator("cert")
	if err := first.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	s1 := secret("cert")
	if s1.Type != corev1.SecretTypeTLS || len(s1.Data["ca.crt"]) == 0 || len(s1.Data["tls.crt"]) == 0 || len(s1.Data["tls.key"]) == 0 {
		t.Fatalf("Secret type %s, keys %v", s1.Type, keys(s1.Data))
	}
	ca1 := parseCerts(t, s1.Data["ca.crt"])[0]
	if b := bundle(); len(b) != 1 || !b[0].Equal(ca1) {
		t.Fatalf("caBundle holds %d certificates, want the Secret's CA", len(b))
	}

	// Serve it over TLS 1.2+, trusted through the Secret's CA.
	addr := serve(t, first)
	leaf1 := handshake(t, addr, s1.Data["ca.crt"], clk.Now)
	if !bytes.Equal(leaf1.Raw, pemDER(t, s1.Data["tls.crt"])) {
		t.Fatal("the served certificate is not the Secret's")
	}
	old := &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11, InsecureSkipVerify: true} // the version, not the chain, is under test
	if c, err := tls.Dial("tcp", addr, old); err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}

	// A second start reuses the Secret: same certificate, no write.
	second := newRotator("cert")
	if err := second.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if s := secret("cert"); s.ResourceVersion != s1.ResourceVersion {
		t.Fatal("the second start rewrote the Secret")
	}
	if c, _ := second.GetCertificate(nil); !bytes.Equal(c.Certificate[0], leaf1.Raw) {
		t.Fatal("the second start serves another certificate")
	}

	// Two thirds into its life, the certificate is replaced by a new CA's,
	// and both CAs are trusted while replicas catch up.
	clk.advance(validity * 7 / 10)
	if err := second.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := secret("cert")
	ca2 := parseCerts(t, s2.Data["ca.crt"])[0]
	if ca2.Equal(ca1) || bytes.Equal(s2.Data["tls.crt"], s1.Data["tls.crt"]) {
		t.Fatal("the due certificate was not rotated")
	}
	if b := bundle(); len(b) != 2 || !b[0].Equal(ca2) || !b[1].Equal(ca1) {
		t.Fatalf("caBundle after rotation holds %d certificates, want the new CA then the previous", len(b))
	}
	// The first replica still serves the old certificate until its next
	// check, which takes the new one from the Secret without writing, and
	// serves it on the same listener.
	if leaf := handshake(t, addr, s1.Data["ca.crt"], clk.Now); !leaf.Equal(leaf1) {
		t.Fatal("the first replica switched before its check")
	}
	if err := first.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if s := secret("cert"); s.ResourceVersion != s2.ResourceVersion {
		t.Fatal("the first replica rotated again instead of taking the new certificate")
	}
	if leaf := handshake(t, addr, s2.Data["ca.crt"], clk.Now); !bytes.Equal(leaf.Raw, pemDER(t, s2.Data["tls.crt"])) {
		t.Fatal("the listener does not serve the rotated certificate")
	}

	// Replicas starting together on an empty Secret agree on one
	// certificate: the losers of the create race take the winner's.
	const replicas = 4
	rots := make([]*webhook.Rotator, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range rots {
		rots[i] = newRotator("race")
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = rots[i].Ensure(ctx)
		}()
	}
	wg.Wait()
	race := secret("race")
	for i, r := range rots {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if c, _ := r.GetCertificate(nil); !bytes.Equal(c.Certificate[0], pemDER(t, race.Data["tls.crt"])) {
			t.Errorf("replica %d serves a certificate that is not the Secret's", i)
		}
	}
}

// serve runs webhook.Serve for r on loopback until the test ends.
func serve(t *testing.T, r *webhook.Rotator) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- webhook.Serve(ctx, ln, nil, r, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// handshake connects to addr trusting caPEM for the IP address 127.0.0.1,
// verifying at the test clock's time, and returns the served leaf.
func handshake(t *testing.T, addr string, caPEM []byte, now func() time.Time) *x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Time: now, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

func parseCerts(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func pemDER(t *testing.T, data []byte) []byte {
	t.Helper()
	certs := parseCerts(t, data)
	if len(certs) == 0 {
		t.Fatal("no certificate in PEM")
	}
	return certs[0].Raw
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
