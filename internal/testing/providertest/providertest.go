// Package providertest runs Coffer's provider daemon, through its own
// entry point, on a unix socket in a temp dir, for the tests of its
// callers (the CSI driver, the sync controller). It can be stopped and
// started again on the same socket, as a killed and restarted process.
package providertest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/provider"
)

// Provider is one running provider daemon.
type Provider struct {
	// Dir holds the socket, {Name}.sock.
	Dir  string
	Name string
	// Server and Reg are the running daemon's provider and metrics; a
	// restart replaces them.
	Server *provider.Server
	Reg    *prometheus.Registry

	t    testing.TB
	opts provider.Options
	stop func()
}

// Start runs a provider named name with o (its Endpoint and Name are
// set here; a nil Log discards) until the test ends.
func Start(t testing.TB, name string, o provider.Options) *Provider {
	t.Helper()
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "prov")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	o.Endpoint, o.Name = "unix://"+filepath.Join(dir, name+".sock"), name
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{Dir: dir, Name: name, t: t, opts: o}
	p.Start()
	return p
}

// Start starts the provider again after Stop, as a new process would.
func (p *Provider) Start() {
	p.t.Helper()
	d, err := provider.NewDaemon(p.opts)
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				p.t.Errorf("provider: %v", err)
			}
		})
	}
	p.t.Cleanup(p.stop)
	p.Server, p.Reg = d.Provider, d.Registry
}

// Stop stops the provider, as a killed process would stop.
func (p *Provider) Stop() { p.stop() }

// Restart stops the provider and starts a new one on the same socket.
func (p *Provider) Restart() {
	p.Stop()
	p.Start()
}
