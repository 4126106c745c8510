// Package hatest runs several Coffer server replicas in one test process,
// on one real etcd cluster, as a highly available installation runs them
// behind one Service: every replica serves the same public names
// (https://{vault}.vault.localhost/ and the authority on
// https://vault.localhost/), and a client picks the replica it talks to
// with its dialer.
package hatest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// Options tune the replicas.
type Options struct {
	// Log receives every replica's log; nil discards it.
	Log io.Writer
	// PurgeInterval is the scheduler's period (default a minute).
	PurgeInterval time.Duration
	// Endpoints, per replica, override the etcd endpoints it uses (a
	// proxy that a test can cut, say); nil uses the cluster's.
	Endpoints func(i int) []string
	// AllowPrivateEndpoints, EgressRoots and EventInterval are the server
	// options of the same names, for tests of event delivery.
	AllowPrivateEndpoints bool
	EgressRoots           *x509.CertPool
	EventInterval         time.Duration
}

// Cluster is an etcd cluster and the replicas that share it.
type Cluster struct {
	Etcd     *etcdtest.Cluster
	Replicas []*Replica
	// Admin holds the administrator's credentials, as dev.env would.
	Admin devenv.Env
	State bootstrap.State
	// Subscription is the tenant's subscription id.
	Subscription string
	Endpoints    endpoint.Endpoints

	t      testing.TB
	opt    Options
	dir    string
	files  pki.Files
	roots  *x509.CertPool
	prefix string
}

// Replica is one server.
type Replica struct {
	*server.Server
	addr string
	stop func()
}

// Start runs n replicas on a fresh prefix of etcd and bootstraps a tenant,
// an administrator and vault demo through the first.
func Start(t testing.TB, etcd *etcdtest.Cluster, n int, opt Options) *Cluster {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "root.key")
	if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
		t.Fatal(err)
	}
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), endpoint.DefaultSuffix, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	ep, _ := endpoint.New(endpoint.DefaultSuffix, 443)
	c := &Cluster{Etcd: etcd, t: t, opt: opt, dir: dir, files: files, roots: roots, Endpoints: ep, prefix: "/coffer-" + filepath.Base(dir) + "/"}
	for i := range n {
		c.Replicas = append(c.Replicas, c.start(i))
	}
	ctx := context.Background()
	first := c.Replicas[0].Server
	sctx, err := first.Store().Barrier.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, secret, err := bootstrap.Ensure(sctx, first.Store().Barrier, first.Authority, first.Roles)
	if err != nil {
		t.Fatal(err)
	}
	tenant, err := first.Authority.Tenant(sctx, st.TenantID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Vaults.Create(sctx, vault.Vault{Name: "demo", TenantID: st.TenantID, SubscriptionID: tenant.SubscriptionID, CreatedBy: st.AdminObjectID}); err != nil {
		t.Fatal(err)
	}
	c.State, c.Subscription = st, tenant.SubscriptionID
	c.Admin = devenv.Env{VaultURL: ep.VaultURL("demo"), TenantID: st.TenantID, ClientID: st.AdminAppID, ClientSecret: secret,
		AuthorityHost: ep.AuthorityURL() + "/", CAFile: files.CACert, CABundle: files.CACert, DataDir: dir}
	return c
}

// start builds and runs replica i.
func (c *Cluster) start(i int) *Replica {
	c.t.Helper()
	w, level := c.opt.Log, slog.LevelDebug
	if w == nil {
		w, level = io.Discard, slog.LevelInfo
	}
	eps := c.Etcd.Endpoints()
	if c.opt.Endpoints != nil {
		eps = c.opt.Endpoints(i)
	}
	dataDir := filepath.Join(c.dir, "replica", string(rune('a'+i)))
	srv, err := server.New(context.Background(), server.Options{
		StoreOptions: server.StoreOptions{Storage: server.StorageEtcd, Etcd: server.EtcdOptions{Endpoints: eps, Prefix: c.prefix},
			DataDir: dataDir, RootKeyFile: filepath.Join(c.dir, "root.key")},
		Listen: "127.0.0.1:0", DNSSuffix: endpoint.DefaultSuffix, PublicPort: 443,
		TLSCertFile: c.files.Cert, TLSKeyFile: c.files.Key, TokenRateLimit: -1, PurgeInterval: c.opt.PurgeInterval,
		AllowPrivateEndpoints: c.opt.AllowPrivateEndpoints, EgressRoots: c.opt.EgressRoots, EventInterval: c.opt.EventInterval,
		Log: slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("replica", i),
	})
	if err != nil {
		c.t.Fatalf("replica %d: %v", i, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				c.t.Errorf("replica %d: %v", i, err)
			}
		})
	}
	c.t.Cleanup(stop)
	return &Replica{Server: srv, addr: srv.Addr().String(), stop: stop}
}

// Stop stops replica i, as its pod's deletion would.
func (c *Cluster) Stop(i int) { c.Replicas[i].stop() }

// Restart starts replica i again.
func (c *Cluster) Restart(i int) { c.Replicas[i] = c.start(i) }

// HTTP is an HTTP client that trusts the dev CA and reaches replica i
// whatever host it asks for.
func (c *Cluster) HTTP(i int) *http.Client {
	addr := c.Replicas[i].addr
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 40 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 5 * time.Second,
	}}
}

// Client is the administrator's CLI client, on replica i.
func (c *Cluster) Client(i int) *client.Client {
	c.t.Helper()
	cl, err := client.NewWithHTTP(c.Admin, c.HTTP(i))
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// Addr is the address replica i listens on.
func (c *Cluster) Addr(i int) string { return c.Replicas[i].addr }
