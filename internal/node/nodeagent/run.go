package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/daemon/kube"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/node/unixsock"
)

// LocalSocketMode is the permission of the provider's socket: only root,
// the CSI provider, may ask for pods' tokens there.
const LocalSocketMode = 0o600

// Options configure the node agent daemon: what `coffer node-agent`'s flags
// set. Errors about them are *daemon.OptionError values naming these
// fields. The fields shared with Config mean what they mean there.
type Options struct {
	NodeName      string
	Tenant        string
	AgentClientID string
	// AgentSecretFile holds the node credential's client secret.
	AgentSecretFile string
	// AuthorityHost is the authority's URL.
	AuthorityHost string
	// CAFile is a PEM bundle trusted, besides the system roots, for the
	// authority.
	CAFile                 string
	SystemIdentity         string
	VMIdentities           []string
	NodeIdentityNamespaces []string
	Lookup                 Lookup
	TokenAudiences         []string
	ProviderAudience       string
	NodeCallers            bool
	// IdentityHeaderFile holds the App Service X-IDENTITY-HEADER secret;
	// empty accepts only service-account tokens there.
	IdentityHeaderFile string
	Policy             podidentity.Policy
	// PodRate, PodBurst and PodInFlight are each pod's token request
	// limits (see Config).
	PodRate     float64
	PodBurst    int
	PodInFlight int

	// Listen is where IMDS is served (default 169.254.169.254:80 with
	// RedirectLinkLocal; required otherwise).
	Listen string
	// Redirect is how 169.254.169.254:80 reaches the agent.
	Redirect Redirect
	// LinkLocalInterface gets 169.254.169.254/32 with RedirectLinkLocal.
	LinkLocalInterface string
	// LocalSocket is the provider's socket, unix:///path (empty: off); it
	// is created with LocalSocketMode.
	LocalSocket string
	// MetricsAddr serves /metrics and /healthz; empty is off.
	MetricsAddr string
	// WriteStatus keeps AzureAssignedIdentities for this node's pods.
	WriteStatus bool

	// Kube is the apiserver's client configuration; nil reads Kubeconfig,
	// and an empty Kubeconfig the in-cluster configuration.
	Kube       *rest.Config
	Kubeconfig string
	Log        *slog.Logger
}

// Daemon is a node agent with its caches, redirect and listeners, ready to
// Run.
type Daemon struct {
	// Agent answers token requests.
	Agent *Agent
	// Cluster is the agent's view of this node's pods and bindings.
	Cluster *KubeCluster
	// Registry holds the process's metrics.
	Registry *prometheus.Registry

	opts   Options
	imds   net.Listener
	local  net.Listener
	stat   *daemon.StatusServer
	status *StatusWriter
	ipt    *IPTables
	undo   func() error // removes the link-local address
	ctx    context.Context
	cancel context.CancelFunc
}

// readSecretFile reads a one-line secret for option.
func readSecretFile(option, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", daemon.Invalid(option, "%v", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", daemon.Invalid(option, "%s is empty", path)
	}
	return s, nil
}

// validate checks the options that need no I/O, and fills in defaults.
func (o *Options) validate() error {
	if o.NodeName == "" {
		return daemon.Invalid("NodeName", "is required: only this node's pods are served")
	}
	for option, v := range map[string]string{"Tenant": o.Tenant, "AgentClientID": o.AgentClientID, "AgentSecretFile": o.AgentSecretFile, "AuthorityHost": o.AuthorityHost} {
		if v == "" {
			return daemon.Invalid(option, "is required: the node credential signs in to the authority with it")
		}
	}
	switch o.Lookup {
	case "":
		o.Lookup = LookupToken
	case LookupToken, LookupSourceIP:
	default:
		return daemon.Invalid("Lookup", "%q: use token (the default: pods prove who they are) or source-ip (compatibility for clients that cannot send a token)", o.Lookup)
	}
	switch o.Redirect {
	case RedirectLinkLocal, RedirectIPTables, RedirectNone:
	default:
		return daemon.Invalid("Redirect", "%q: use link-local (bind 169.254.169.254), iptables (DNAT to Listen) or none", o.Redirect)
	}
	switch {
	case o.Listen == "" && o.Redirect == RedirectLinkLocal:
		o.Listen = IMDSAddress + ":80"
	case o.Listen == "":
		return daemon.Invalid("Listen", "is required with Redirect %s: the node's address and a port, such as $(NODE_IP):2579", o.Redirect)
	}
	if o.Redirect == RedirectIPTables {
		host, _, err := net.SplitHostPort(o.Listen)
		if ip := net.ParseIP(host); err != nil || ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
			return daemon.Invalid("Listen", "%q: Redirect iptables needs the node's own address and a port (a DNAT to loopback drops pods' packets)", o.Listen)
		}
	}
	if o.LocalSocket != "" {
		if _, err := unixsock.Path(o.LocalSocket); err != nil {
			return daemon.Invalid("LocalSocket", "%v", err)
		}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return nil
}

// NewDaemon validates o, reads the credentials, waits for nothing but
// connects to the apiserver, installs the redirect, and binds every
// listener. ctx bounds the setup; the caches and the status writer live
// until Run returns.
func NewDaemon(ctx context.Context, o Options) (*Daemon, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	secret, err := readSecretFile("AgentSecretFile", o.AgentSecretFile)
	if err != nil {
		return nil, err
	}
	var header string
	if o.IdentityHeaderFile != "" {
		if header, err = readSecretFile("IdentityHeaderFile", o.IdentityHeaderFile); err != nil {
			return nil, err
		}
	}
	hc, err := httpclient.New(o.CAFile)
	if err != nil {
		return nil, daemon.Invalid("CAFile", "%v", err)
	}
	hc.Timeout = 30 * time.Second
	if o.Redirect == RedirectIPTables {
		markConnections(hc)
	}
	rc, err := kube.Config(o.Kube, "Kubeconfig", o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), podidentity.AddToScheme(scheme)); err != nil {
		return nil, err
	}
	kc, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d := &Daemon{opts: o, Registry: daemon.NewRegistry()}
	// The caches and loops live until Run returns, or until a failed
	// setup below cancels them.
	d.ctx, d.cancel = context.WithCancel(context.Background())
	log := o.Log
	d.status = NewStatusWriter(o.NodeName, kc, log, o.Policy)
	onChange := func() {}
	if o.WriteStatus {
		onChange = d.status.Kick
	}
	if d.Cluster, err = NewKubeCluster(d.ctx, rc, o.NodeName, log, onChange); err != nil {
		d.cancel()
		return nil, err
	}
	d.status.Cluster = d.Cluster
	d.Agent, err = New(Config{
		NodeName: o.NodeName, Tenant: o.Tenant, AgentClientID: o.AgentClientID, AgentSecret: secret,
		SystemIdentity: o.SystemIdentity, VMIdentities: o.VMIdentities, NodeIdentityNamespaces: o.NodeIdentityNamespaces,
		Lookup: o.Lookup, TokenAudiences: o.TokenAudiences, ProviderAudience: o.ProviderAudience, NodeCallers: o.NodeCallers,
		IdentityHeader: header, Policy: o.Policy, Cluster: d.Cluster,
		PodRate: o.PodRate, PodBurst: o.PodBurst, PodInFlight: o.PodInFlight,
		Auth: &authclient.Client{HTTP: hc, Authority: o.AuthorityHost}, Log: log,
	})
	if err == nil {
		err = d.Agent.Register(d.Registry)
	}
	if err != nil {
		d.close()
		return nil, err
	}
	if err := d.listen(ctx); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// listen installs the redirect and binds the listeners.
func (d *Daemon) listen(ctx context.Context) error {
	o := d.opts
	var err error
	switch o.Redirect {
	case RedirectLinkLocal:
		if d.undo, err = LinkLocal(o.LinkLocalInterface); err != nil {
			return err
		}
	case RedirectIPTables:
		d.ipt = &IPTables{Target: o.Listen, Log: o.Log}
		if err := d.ipt.Ensure(ctx); err != nil {
			return err
		}
	}
	if d.imds, err = net.Listen("tcp", o.Listen); err != nil {
		return daemon.Invalid("Listen", "%s: %v", o.Listen, err)
	}
	if o.LocalSocket != "" {
		if d.local, err = unixsock.Listen(o.LocalSocket, LocalSocketMode); err != nil {
			return daemon.Invalid("LocalSocket", "%v", err)
		}
	}
	d.stat, err = daemon.ListenStatus("MetricsAddr", o.MetricsAddr, d.Registry, func() error {
		if !d.Cluster.Synced() {
			return errors.New("caches not synced")
		}
		return nil
	})
	return err
}

// Addr is where IMDS is served.
func (d *Daemon) Addr() net.Addr { return d.imds.Addr() }

// MetricsAddr is the bound address of /metrics, or "" when it is off.
func (d *Daemon) MetricsAddr() string { return d.stat.Addr() }

// Run serves until ctx ends, then stops the loops, closes the listeners
// and removes the link-local address. An iptables redirect stays, so that
// pods' requests during a restart get refused connections, not the cloud's
// metadata service.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	stop := context.AfterFunc(ctx, d.cancel)
	defer stop()
	var loops []chan struct{}
	spawn := func(f func()) {
		done := make(chan struct{})
		loops = append(loops, done)
		go func() { defer close(done); f() }()
	}
	if d.opts.WriteStatus {
		spawn(func() { d.status.Run(d.ctx) })
	}
	if d.ipt != nil {
		spawn(func() { d.ipt.Reconcile(d.ctx, 10*time.Second) })
	}
	spawn(func() { d.stat.Serve(d.ctx, d.opts.Log) })
	localPath := ""
	if d.local != nil {
		localPath = d.opts.LocalSocket
	}
	d.opts.Log.Info("node agent listening", "addr", d.imds.Addr().String(), "redirect", d.opts.Redirect, "local-socket", localPath,
		"node", d.opts.NodeName, "pod-lookup", d.opts.Lookup)
	err := d.Agent.Serve(d.ctx, d.imds, d.local)
	d.cancel()
	for _, done := range loops {
		<-done
	}
	return err
}

// close releases what NewDaemon made; Run calls it when it returns.
func (d *Daemon) close() {
	d.cancel()
	if d.imds != nil {
		d.imds.Close()
	}
	if d.local != nil {
		d.local.Close()
	}
	if d.stat != nil {
		d.stat.Close()
	}
	if d.undo != nil {
		if err := d.undo(); err != nil {
			d.opts.Log.Warn("removing the link-local address", "error", err)
		}
		d.undo = nil
	}
}

// markConnections sets AgentMark on the client's connections, so the
// iptables redirect never catches the agent's own traffic.
func markConnections(hc *http.Client) {
	tr := hc.Transport.(*http.Transport)
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, AgentMark)
		})
		return serr
	}}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, httpclient.LoopbackLocalhost(addr))
	}
}
