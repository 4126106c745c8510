// Package testserver starts a real Coffer server in-process for tests: TLS
// with a generated CA, the bbolt store in a temporary directory, a bootstrap
// tenant and administrator, and a vault named demo, all made by the dev
// server's assembly (internal/server/dev). It binds to loopback only.
package testserver

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
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
	// AllowPrivateIssuers lets federated issuers be loopback addresses, as
	// a test's apiserver or OIDC issuer is (see server.Options).
	AllowPrivateIssuers bool
	// TokenRateLimit overrides the per-client token rate limit.
	TokenRateLimit float64
	// OverloadCapacity overrides the server's overload protection
	// capacity (negative: off).
	OverloadCapacity int
	// PurgeInterval overrides how often the scheduled jobs run (purge,
	// renewal, key rotation), for tests that watch them run on their own.
	PurgeInterval time.Duration
	// AllowPrivateEndpoints lets event endpoints and ACME URLs be loopback,
	// where a test's receivers and CA listen; EgressRoots trust them.
	AllowPrivateEndpoints bool
	EgressRoots           *x509.CertPool
	// ACMEHTTPListen serves ACME http-01 challenges (see server.Options).
	ACMEHTTPListen string
	// EventInterval and EventScanInterval tune the events job.
	EventInterval, EventScanInterval time.Duration
	// HostsFile gets loopback entries for the authority and the demo
	// vault, as `coffer dev --write-hosts` writes /etc/hosts: for clients
	// that resolve names through the system's resolver (test/azcli).
	HostsFile string
	// NoVaultWatch serves no vault watch, as a server before it did.
	NoVaultWatch bool
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

// Start starts a server through the dev server's own entry point, as
// `coffer dev` does, and stops it when the test ends.
func Start(t testing.TB, opt Options) *Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, level := opt.Log, slog.LevelDebug
	if w == nil {
		w, level = io.Discard, slog.LevelInfo
	}
	d, err := dev.New(ctx, dev.Options{
		DataDir: t.TempDir(), ListenAddress: "127.0.0.1", Port: 0, HostsFile: opt.HostsFile,
		Server: server.Options{
			TokenLifetime: opt.TokenLifetime, Now: opt.Now, FederationRoots: opt.FederationRoots, AllowPrivateIssuers: opt.AllowPrivateIssuers, TokenRateLimit: opt.TokenRateLimit, OverloadCapacity: opt.OverloadCapacity,
			PurgeInterval: opt.PurgeInterval, AllowPrivateEndpoints: opt.AllowPrivateEndpoints, EgressRoots: opt.EgressRoots,
			ACMEHTTPListen: opt.ACMEHTTPListen, EventInterval: opt.EventInterval, EventScanInterval: opt.EventScanInterval,
			NoVaultWatch: opt.NoVaultWatch,
			Log:          slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})),
		},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	c, err := client.New(d.Env)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Server: d.Server, Endpoints: d.Endpoints(), DataDir: d.Env.DataDir, Admin: d.Env, State: d.State, Subscription: d.Subscription, Client: c, stop: stop}
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
