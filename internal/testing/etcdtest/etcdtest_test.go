package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A cluster with TCP listeners and TLS answers a client with the
// cluster's client certificate on every member's TCP endpoint, and refuses
// one without a certificate.
func TestTCPListenersWithTLS(t *testing.T) {
	c := StartWith(t, Options{Members: 3, ClientHost: "127.0.0.1", TLS: true})
	ct := c.ClientTLS()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ct.CA) {
		t.Fatal("no CA")
	}
	pair, err := tls.X509KeyPair(ct.Cert, ct.Key)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(endpoint string, certs []tls.Certificate) error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
			TLS: &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}})
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, "k", endpoint); err != nil {
			return err
		}
		_, err = cli.Get(ctx, "k")
		return err
	}
	eps := c.TCPEndpoints()
	if len(eps) != 3 {
		t.Fatalf("TCP endpoints %v", eps)
	}
	for _, ep := range eps {
		if err := dial(ep, []tls.Certificate{pair}); err != nil {
			t.Errorf("%s with the client certificate: %v", ep, err)
		}
	}
	// Without a certificate the member ends the handshake with an alert
	// (TLS 1.3 reports it at the first read); a member that admitted the
	// client would wait for its first request instead.
	u, err := url.Parse(eps[0])
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without a certificate: %v, want a refusal that names the certificate", err)
	}
}
