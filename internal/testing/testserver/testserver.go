// Package testserver starts a real Coffer server in-process for tests: TLS
// with a generated CA, the bbolt store in a temporary directory, a bootstrap
// tenant and administrator, and a vault named demo. It binds to loopback only.
package testserver

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
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
)

// Options tune a test server.
type Options struct {
	// Log receives the server's log; nil discards it.
	Log io.Writer
	// TokenLifetime overrides the default token lifetime.
	TokenLifetime time.Duration
	// Now overrides the server's clock.
	Now func() time.Time
	// FederationRoots are trusted for federated issuers' HTTPS endpoints.
	FederationRoots *x509.CertPool
	// TokenRateLimit overrides the per-client token rate limit.
	TokenRateLimit float64
}

// Env is a running test server.
type Env struct {
	Server    *server.Server
	Endpoints endpoint.Endpoints
	DataDir   string
	// Admin holds the administrator's credentials, as dev.env would.
	Admin devenv.Env
	State bootstrap.State
	// Subscription is the tenant's subscription id.
	Subscription string
	Client       *client.Client

	stop func()
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB, opt Options) *Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "root.key")
	if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
		t.Fatal(err)
	}
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), endpoint.DefaultSuffix, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := endpoint.New(endpoint.DefaultSuffix, ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	w, level := opt.Log, slog.LevelDebug
	if w == nil {
		w, level = io.Discard, slog.LevelInfo
	}
	srv, err := server.Open(ctx, server.Config{
		DataDir: dir, RootKeyFile: keyFile, Endpoints: ep,
		TLSCertFile: files.Cert, TLSKeyFile: files.Key,
		TokenLifetime: opt.TokenLifetime, Now: opt.Now, FederationRoots: opt.FederationRoots, TokenRateLimit: opt.TokenRateLimit,
		Log: slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		t.Fatal(err)
	}
	st, secret, err := bootstrap.Ensure(ctx, srv.Store().Barrier, srv.Authority, srv.Roles)
	if err != nil {
		t.Fatal(err)
	}
	tenant, err := srv.Authority.Tenant(ctx, st.TenantID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: st.TenantID, SubscriptionID: tenant.SubscriptionID, CreatedBy: st.AdminObjectID}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
			srv.Close()
		})
	}
	t.Cleanup(stop)
	admin := devenv.Env{
		VaultURL: ep.VaultURL("demo"), TenantID: st.TenantID, ClientID: st.AdminAppID, ClientSecret: secret,
		AuthorityHost: ep.AuthorityURL() + "/", CAFile: files.CACert, DataDir: dir,
	}
	c, err := client.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Server: srv, Endpoints: ep, DataDir: dir, Admin: admin, State: st, Subscription: tenant.SubscriptionID, Client: c, stop: stop}
}

// Stop stops the server before the test ends: its port refuses
// connections from then on, as a crashed or partitioned server's would.
func (e *Env) Stop() { e.stop() }

// StoreFile returns the path of the server's bbolt file.
func (e *Env) StoreFile() string { return filepath.Join(e.DataDir, server.StoreFile) }

// ReadStore returns the raw bytes of the store file.
func (e *Env) ReadStore(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(e.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
