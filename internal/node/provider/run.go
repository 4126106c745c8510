package provider

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/node/unixsock"
)

// Options configure the provider daemon: what `coffer provider`'s flags
// set. Errors about them are *daemon.OptionError values naming these
// fields.
type Options struct {
	// Endpoint is the provider's socket, unix:///{dir}/{name}.sock.
	Endpoint string
	// Name is reported by Version (default: the socket's name).
	Name string
	// VaultSuffix is the vaults' DNS suffix with its port, such as
	// vault.example.com:8443.
	VaultSuffix string
	// AuthorityHost is the authority's URL (default https://{VaultSuffix}).
	AuthorityHost string
	// CAFile is a PEM bundle trusted, besides the system roots, for the
	// vault and the authority.
	CAFile string
	// MetricsAddr serves /metrics and /healthz; empty is off.
	MetricsAddr string
	// MaxResponseBytes bounds one mount's files (default 4 MiB).
	MaxResponseBytes int
	// NodeAgentSocket is the node agent's local socket, for usePodIdentity
	// and useVMManagedIdentity; empty refuses those modes.
	NodeAgentSocket string
	Log             *slog.Logger
}

// Daemon is a provider bound to its socket, ready to Run.
type Daemon struct {
	// Provider is the protocol server.
	Provider *Server
	// Registry holds the process's metrics.
	Registry *prometheus.Registry

	ln   net.Listener
	g    *grpc.Server
	stat *daemon.StatusServer
	log  *slog.Logger
	opts Options
}

// NewDaemon validates o, builds the provider and its clients, and binds its
// socket and its metrics listener.
func NewDaemon(o Options) (*Daemon, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if _, err := unixsock.Path(o.Endpoint); err != nil {
		return nil, daemon.Invalid("Endpoint", "%v", err)
	}
	if o.Name == "" {
		o.Name = strings.TrimSuffix(o.Endpoint[strings.LastIndexByte(o.Endpoint, '/')+1:], ".sock")
	}
	hc, err := httpclient.New(o.CAFile)
	if err != nil {
		return nil, daemon.Invalid("CAFile", "%v", err)
	}
	hc.Timeout = 20 * time.Second
	var agent *authclient.NodeAgent
	if o.NodeAgentSocket != "" {
		if _, err := unixsock.Path(o.NodeAgentSocket); err != nil {
			return nil, daemon.Invalid("NodeAgentSocket", "%v", err)
		}
		agent = authclient.NewNodeAgent(o.NodeAgentSocket)
	}
	reg := daemon.NewRegistry()
	p, err := New(Config{Name: o.Name, VaultSuffix: o.VaultSuffix, AuthorityHost: o.AuthorityHost,
		Vault: &kvclient.Client{HTTP: hc}, Auth: &authclient.Client{HTTP: hc}, NodeAgent: agent,
		MaxResponseBytes: o.MaxResponseBytes, Registry: reg, Log: o.Log})
	if err != nil {
		return nil, err
	}
	stat, err := daemon.ListenStatus("MetricsAddr", o.MetricsAddr, reg, nil)
	if err != nil {
		return nil, err
	}
	ln, err := unixsock.Listen(o.Endpoint, 0)
	if err != nil {
		stat.Close()
		return nil, err
	}
	g := grpc.NewServer()
	p.Register(g)
	healthpb.RegisterHealthServer(g, health.NewServer())
	return &Daemon{Provider: p, Registry: reg, ln: ln, g: g, stat: stat, log: o.Log, opts: o}, nil
}

// Run serves until ctx ends, then stops gracefully: the drivers' Push
// streams are ended first, since they never end by themselves.
func (d *Daemon) Run(ctx context.Context) error {
	statCtx, stop := context.WithCancel(ctx)
	defer stop()
	go d.stat.Serve(statCtx, d.log)
	go func() {
		<-statCtx.Done()
		d.Provider.Close()
		d.g.GracefulStop()
	}()
	d.log.Info("provider listening", "endpoint", d.opts.Endpoint, "name", d.opts.Name, "vaultSuffix", d.opts.VaultSuffix)
	err := d.g.Serve(d.ln)
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	stop()
	return err
}
