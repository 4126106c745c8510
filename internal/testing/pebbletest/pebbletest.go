// Package pebbletest runs Let's Encrypt's ACME test server, pebble, for
// tests: the binary scripts/pebble.sh builds from the Go module proxy (or
// $PEBBLE_BIN), one process per test on loopback, with a TLS certificate
// of a CA the package makes, stopped when the test ends.
package pebbletest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/testing/testpath"
)

// Pebble is a pebble server, prepared and then started.
type Pebble struct {
	t   testing.TB
	dir string
	// TLSRoots trust pebble's own HTTPS listeners (its ACME API and
	// management interface), not the certificates it issues.
	TLSRoots *x509.CertPool
	// DirectoryURL is the ACME directory, once started.
	DirectoryURL string
	mgmt         string
}

// Options configure the CA.
type Options struct {
	// HTTPPort is the port pebble's validation authority connects to for
	// http-01, on the certified names.
	HTTPPort int
	// AlwaysValid sets PEBBLE_VA_ALWAYS_VALID: every challenge passes
	// without pebble checking it. Tests that cannot serve a real answer
	// (dns-01 without a DNS server) use it, and say so.
	AlwaysValid bool
	// EAB, when not empty, makes external account binding required, with
	// these key ids and base64url HMAC keys.
	EAB map[string]string
	// Validity is the issued certificates' lifetime (default 90 days).
	Validity time.Duration
}

// Prepare makes pebble's TLS certificate, so its roots can be trusted
// before it starts.
func Prepare(t testing.TB) *Pebble {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebbletest listener CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cert.pem", "CERTIFICATE", der)
	write("key.pem", "PRIVATE KEY", kb)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return &Pebble{t: t, dir: dir, TLSRoots: roots}
}

// binary returns pebble's path: $PEBBLE_BIN, or what scripts/pebble.sh
// builds (cached after the first time).
func binary(t testing.TB) string {
	if b := os.Getenv("PEBBLE_BIN"); b != "" {
		return b
	}
	var stderr bytes.Buffer
	cmd := exec.Command(testpath.Repo(t, "scripts/pebble.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/pebble.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs pebble and waits until its directory answers. Its ports are
// picked free just before; if another process takes one first, pebble
// exits and Start tries again with new ones.
func (p *Pebble) Start(o Options) {
	t := p.t
	t.Helper()
	bin := binary(t)
	if o.Validity == 0 {
		o.Validity = 90 * 24 * time.Hour
	}
	for attempt := 0; ; attempt++ {
		api, mgmt := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
		cfg := map[string]any{"pebble": map[string]any{
			"listenAddress": api, "managementListenAddress": mgmt,
			"certificate": filepath.Join(p.dir, "cert.pem"), "privateKey": filepath.Join(p.dir, "key.pem"),
			"httpPort": o.HTTPPort, "tlsPort": freePort(t), "ocspResponderURL": "",
			"externalAccountBindingRequired": len(o.EAB) > 0, "externalAccountMACKeys": o.EAB,
			"retryAfter": map[string]int{"authz": 1, "order": 1}, "keyAlgorithm": "ecdsa",
			"certificateValidityPeriod": int(o.Validity.Seconds()),
			"profiles":                  map[string]any{"default": map[string]any{"description": "test", "validityPeriod": int(o.Validity.Seconds())}},
		}}
		b, _ := json.Marshal(cfg)
		cfgFile := filepath.Join(p.dir, "pebble.json")
		if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-config", cfgFile)
		cmd.Dir = p.dir
		// No random nonce rejections or validation sleeps: the test waits
		// on the order, not on pebble's chaos.
		cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
		if o.AlwaysValid {
			cmd.Env = append(cmd.Env, "PEBBLE_VA_ALWAYS_VALID=1")
		}
		log := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start pebble: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("pebble's log:\n%s", log.String())
			}
		})
		p.DirectoryURL, p.mgmt = "https://"+api+"/dir", "https://"+mgmt
		switch p.waitReady(exited) {
		case nil:
			return
		default:
			if attempt < 3 && strings.Contains(log.String(), "address already in use") {
				continue
			}
			t.Fatalf("pebble did not start:\n%s", log.String())
		}
	}
}

func (p *Pebble) client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.TLSRoots}}}
}

func (p *Pebble) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("pebble exited")
		default:
		}
		if resp, err := p.client().Get(p.DirectoryURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("pebble's directory did not answer within a minute")
}

// Roots returns the roots of the certificates pebble issues, from its
// management interface (each pebble process makes its own).
func (p *Pebble) Roots() *x509.CertPool {
	t := p.t
	t.Helper()
	resp, err := p.client().Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if resp.StatusCode != http.StatusOK || !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble's root: %d %s", resp.StatusCode, data)
	}
	return pool
}
