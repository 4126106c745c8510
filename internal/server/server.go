// Package server assembles Coffer's control plane, the vault API, the
// authority and the management API, on one HTTPS listener, routed by Host.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
	"github.com/cofferhq/coffer/internal/server/acme"
	"github.com/cofferhq/coffer/internal/server/api/authhttp"
	"github.com/cofferhq/coffer/internal/server/api/kvhttp"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/events"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/throttle"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configure a server: what `coffer server`'s flags set. Errors
// about them are *daemon.OptionError values naming these fields.
type Options struct {
	// StoreOptions say which store to open: StorageBolt (the default, in
	// DataDir, one replica) or StorageEtcd (any number of replicas). The
	// audit log is in DataDir by default either way.
	StoreOptions
	// Listen is the address to serve HTTPS on, such as ":8443" or
	// "127.0.0.1:0" (a free port; see Addr).
	Listen string
	// DNSSuffix is the suffix of vault hosts, such as vault.example.com.
	DNSSuffix string
	// PublicPort is the HTTPS port clients use, when a proxy or a port
	// mapping changes it; 0 is the bound port.
	PublicPort int

	TLSCertFile, TLSKeyFile string
	// InsecureHTTP serves plain HTTP, for use behind a TLS-terminating proxy.
	InsecureHTTP bool

	// TokenLifetime is the lifetime of issued access tokens (5m to 24h; 0
	// is the authority's default).
	TokenLifetime time.Duration
	// TokenRateLimit and TokenRateBurst limit token requests per client
	// (see authority.Config); a negative limit turns limiting off.
	TokenRateLimit float64
	TokenRateBurst int
	// FederationCAFile holds PEM CAs trusted, besides the system roots,
	// for federated issuers' HTTPS endpoints. FederationRoots, when set,
	// is the whole pool instead (tests pass their issuer's CA).
	FederationCAFile string
	FederationRoots  *x509.CertPool
	// AllowPrivateIssuers lets federated credentials' issuers (and their
	// jwks_uri) be loopback, link-local or private addresses. Off, the
	// server refuses them, so that whoever may write a federated
	// credential cannot make the server fetch from its own network.
	AllowPrivateIssuers bool
	// PurgeInterval is how often soft-deleted objects past their retention
	// are purged (default a minute).
	PurgeInterval time.Duration
	// AuditLog is the audit log file; empty means {DataDir}/audit.log.
	AuditLog string
	// AuditMaxSizeMB, when positive, rotates the audit log once its file
	// holds this many MiB (see audit.Options.MaxBytes); zero leaves
	// rotation to the operator.
	AuditMaxSizeMB int
	// AuditMaxFiles, when positive, is how many files rotated that way
	// are kept; zero keeps them all.
	AuditMaxFiles int
	// MetricsAddr serves /metrics and /healthz over plain HTTP; empty is off.
	MetricsAddr string
	// NoVaultWatch turns the vault watch off, for a proxy in front of the
	// server that does not pass streamed answers on: nodes fall back to
	// held reads, one per object (docs/vault-watch.md).
	NoVaultWatch bool
	// OverloadCapacity is how many vault requests may be in flight before
	// overload protection refuses the principals that send more than
	// their share (default 4 per CPU; negative turns it off).
	OverloadCapacity int

	// AllowPrivateEndpoints lets the URLs vault users give the server (event
	// subscription endpoints, ACME directories and DNS hooks) be loopback,
	// link-local or private addresses. Off, the server refuses them, so a
	// vault user cannot reach the server's own network through it.
	AllowPrivateEndpoints bool
	// EgressCAFile holds PEM CAs trusted, besides the system roots, for
	// those endpoints' TLS. EgressRoots, when set, is the whole pool
	// instead (tests pass their receiver's and ACME server's CAs).
	EgressCAFile string
	EgressRoots  *x509.CertPool
	// EventInterval is how often events are delivered and retried (default
	// a second); EventScanInterval how often every subscribed vault is
	// compared with what was last seen, besides after each write (default
	// a minute), which bounds how late NearExpiry and Expired fire.
	EventInterval, EventScanInterval time.Duration
	// ACMEHTTPListen serves the http-01 challenges of ACME issuers on plain
	// HTTP, such as ":80" (the port CAs connect to); empty is off, and
	// ACME issuers then need dns-01.
	ACMEHTTPListen string

	Log *slog.Logger
	Now func() time.Time
}

// Validate checks the options that need no I/O.
func (o *Options) Validate() error {
	if err := o.StoreOptions.Validate(); err != nil {
		return err
	}
	if o.DataDir == "" && o.AuditLog == "" {
		return daemon.Invalid("DataDir", "is required: the directory of the embedded store, or of the audit log with Storage etcd (or set AuditLog)")
	}
	if o.DNSSuffix == "" {
		return daemon.Invalid("DNSSuffix", "is required: vaults are served at https://{vault}.{suffix}/")
	}
	if _, err := endpoint.New(o.DNSSuffix, 443); err != nil {
		return daemon.Invalid("DNSSuffix", "%v", err)
	}
	if o.PublicPort < 0 || o.PublicPort > 65535 {
		return daemon.Invalid("PublicPort", "%d is out of range 1-65535", o.PublicPort)
	}
	if !o.InsecureHTTP && o.TLSCertFile == "" {
		return daemon.Invalid("TLSCertFile", "is required, with TLSKeyFile: TLS is mandatory (InsecureHTTP serves plain HTTP, only behind a TLS-terminating proxy)")
	}
	if !o.InsecureHTTP && o.TLSKeyFile == "" {
		return daemon.Invalid("TLSKeyFile", "is required: the private key of TLSCertFile")
	}
	if o.TokenLifetime != 0 && (o.TokenLifetime < 5*time.Minute || o.TokenLifetime > 24*time.Hour) {
		return daemon.Invalid("TokenLifetime", "%v is out of range: use 5m to 24h", o.TokenLifetime)
	}
	if o.EventInterval < 0 || o.EventScanInterval < 0 {
		return daemon.Invalid("EventInterval", "%v and %v must be positive", o.EventInterval, o.EventScanInterval)
	}
	if o.PurgeInterval < 0 {
		return daemon.Invalid("PurgeInterval", "%v must be positive", o.PurgeInterval)
	}
	if o.AuditMaxSizeMB < 0 {
		return daemon.Invalid("AuditMaxSizeMB", "%d is negative: give the MiB at which to rotate, or 0 not to", o.AuditMaxSizeMB)
	}
	if o.AuditMaxFiles < 0 {
		return daemon.Invalid("AuditMaxFiles", "%d is negative: give how many rotated files to keep, or 0 for all", o.AuditMaxFiles)
	}
	if o.AuditMaxFiles > 0 && o.AuditMaxSizeMB == 0 {
		return daemon.Invalid("AuditMaxFiles", "needs AuditMaxSizeMB: only the files the server rotates itself are removed")
	}
	return nil
}

// Server is a control plane: built by New, serving from Run.
type Server struct {
	cfg   Options
	log   *slog.Logger
	store *Store
	ln    net.Listener
	conns *capListener // ln, which caps the open connections
	// acmeLn serves ACME http-01 challenges (ACMEHTTPListen); nil is off.
	acmeLn net.Listener
	ep     endpoint.Endpoints
	stat   *daemon.StatusServer

	Vaults    *vault.Registry
	Authority *authority.Authority
	Secrets   *secret.Service
	Keys      *key.Service
	Certs     *cert.Service
	Events    *events.Service
	Roles     *rbac.Assignments
	Access    *access.Authorizer
	Audit     *audit.Log
	Metrics   *prometheus.Registry
	// Limiter answers 429 Throttled (static limits, overload protection).
	Limiter *throttle.Limiter

	kv      *kvhttp.Handler
	changes *changes.Feed // wakes held reads when their object changes
	auth    *authhttp.Handler
	mgmt    *mgmthttp.Handler

	requests *requestMetrics

	leader  prometheus.Gauge
	leading atomic.Bool

	rotMu     sync.Mutex
	closeOnce sync.Once
	// handlers counts the requests being served. http.Server.Shutdown does
	// not wait for the handler of an HTTP/2 stream that the client reset
	// (a closed vault watch, a cancelled held read): it may still be
	// running, about to read the store and write its audit line, so Run
	// waits for it before it closes them.
	handlers atomic.Int64
}

// New validates o, binds the listeners, opens the store and builds every
// service. The server serves once Run is called; a server that is never run
// must be closed.
func New(ctx context.Context, o Options) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PurgeInterval == 0 {
		o.PurgeInterval = time.Minute
	}
	if o.Listen == "" {
		o.Listen = ":8443"
	}
	if o.EventInterval == 0 {
		o.EventInterval = time.Second
	}
	if o.FederationRoots == nil && o.FederationCAFile != "" {
		roots, err := httpclient.RootPool(o.FederationCAFile)
		if err != nil {
			return nil, daemon.Invalid("FederationCAFile", "%v", err)
		}
		o.FederationRoots = roots
	}
	if o.EgressRoots == nil && o.EgressCAFile != "" {
		roots, err := httpclient.RootPool(o.EgressCAFile)
		if err != nil {
			return nil, daemon.Invalid("EgressCAFile", "%v", err)
		}
		o.EgressRoots = roots
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, daemon.Invalid("Listen", "%s: %v", o.Listen, err)
	}
	port := o.PublicPort
	if port == 0 {
		port = ln.Addr().(*net.TCPAddr).Port
	}
	ep, err := endpoint.New(o.DNSSuffix, port)
	if err != nil {
		ln.Close()
		return nil, daemon.Invalid("DNSSuffix", "%v", err)
	}
	metrics := daemon.NewRegistry()
	st, err := OpenStore(ctx, o.StoreOptions, metrics, o.Log)
	if err != nil {
		ln.Close()
		return nil, err
	}
	conns := newCapListener(ln, MaxConnections, o.Log)
	s := &Server{cfg: o, log: o.Log, store: st, ln: conns, conns: conns, ep: ep, Metrics: metrics}
	if o.ACMEHTTPListen != "" {
		if s.acmeLn, err = net.Listen("tcp", o.ACMEHTTPListen); err != nil {
			s.Close()
			return nil, daemon.Invalid("ACMEHTTPListen", "%s: %v", o.ACMEHTTPListen, err)
		}
	}
	if err := s.build(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if s.stat, err = daemon.ListenStatus("MetricsAddr", o.MetricsAddr, s.Metrics, func() error { return s.Ready(context.Background()) }); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Endpoints are the server's public URLs.
func (s *Server) Endpoints() endpoint.Endpoints { return s.ep }

// MetricsAddr is the bound address of /metrics, or "" when it is off.
func (s *Server) MetricsAddr() string { return s.stat.Addr() }

func (s *Server) build(ctx context.Context) error {
	b := s.store.Barrier
	var err error
	if s.Vaults, err = vault.Open(ctx, b, s.cfg.Now); err != nil {
		return err
	}
	if s.Roles, err = rbac.Open(ctx, b, s.cfg.Now); err != nil {
		return err
	}
	s.Access = access.New(s.Roles)
	ep := s.ep
	s.Authority, err = authority.Open(ctx, b, authority.Config{
		Host:          ep.AuthorityURL(),
		Resources:     []string{ep.Resource(), endpoint.ManagementResource},
		TokenLifetime: s.cfg.TokenLifetime,
		RateLimit:     s.cfg.TokenRateLimit, RateBurst: s.cfg.TokenRateBurst,
		Federation: federation.New(federation.Config{Egress: egress.Policy{AllowPrivate: s.cfg.AllowPrivateIssuers, Setting: issuersSetting, Roots: s.cfg.FederationRoots}, Now: s.cfg.Now}),
		Roles:      s.Roles,
	}, s.cfg.Now)
	if err != nil {
		return err
	}
	s.leader = prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_leader",
		Help: "1 while this replica runs the singleton jobs (purge, renewal, resumed issuance), 0 otherwise."})
	s.Metrics.MustRegister(s.leader)
	s.Metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_connections_open",
		Help: "Client connections open now, of at most " + strconv.Itoa(MaxConnections) + "."},
		func() float64 { return float64(s.conns.Open()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_connections_refused_total",
			Help: "Client connections closed at once because the server held its cap of open connections."},
			func() float64 { return float64(s.conns.Refused()) }))
	s.requests = newRequestMetrics(s.Metrics)
	auditPath := s.cfg.AuditLog
	if auditPath == "" {
		auditPath = filepath.Join(s.cfg.DataDir, "audit.log")
	}
	if err := os.MkdirAll(filepath.Dir(auditPath), 0o700); err != nil {
		return fmt.Errorf("create the audit log's directory: %w", err)
	}
	if s.Audit, err = audit.Open(auditPath, audit.Options{Registerer: s.Metrics, Now: s.cfg.Now,
		MaxBytes: int64(s.cfg.AuditMaxSizeMB) << 20, MaxFiles: s.cfg.AuditMaxFiles}); err != nil {
		return err
	}
	s.Secrets = secret.New(b, b, s.cfg.Now)
	s.Keys = key.New(b, b, s.cfg.Now)
	s.Certs = cert.New(b, b, s.Keys, s.Secrets, s.cfg.Now, s.log)
	s.Certs.UseEgress(s.egress())
	s.Certs.UseACME(acme.New(s.egress().Client(30*time.Second), acmeTokens{b}, s.log))
	s.changes = changes.New()
	s.Events = events.New(events.Options{Store: b, Vaults: s.Vaults, Endpoints: ep, Egress: s.egress(), Now: s.cfg.Now,
		ScanInterval: s.cfg.EventScanInterval, Registerer: s.Metrics, Log: s.log})
	// Held reads wake on any replica's write: a shared store reports every
	// replica's batches, and after a gap in its watch, a Reset wakes all.
	// The events job learns of the same writes, to compare their vaults
	// at once rather than at its next full pass.
	b.Subscribe(func(c physical.Change) {
		if c.Reset {
			s.changes.PublishAll()
			s.Events.TouchAll()
		}
		accessChanged := false
		for _, k := range c.Keys {
			s.Events.Touch(k)
			if vault, kind, name, ok := object.Named(k); ok {
				s.changes.Publish(changes.Subject(vault, kind, name))
			}
			accessChanged = accessChanged || vault.IsKey(k) || rbac.IsKey(k)
		}
		if accessChanged {
			// Vault watches authorize their objects again (held reads do
			// on every pass anyway).
			s.changes.AccessChanged()
		}
	})
	capacity := s.cfg.OverloadCapacity
	if capacity == 0 {
		// Past a few requests per CPU in flight, requests queue for the
		// CPU rather than run: the server is full.
		capacity = 4 * runtime.GOMAXPROCS(0)
	}
	s.Limiter = throttle.New(throttle.Options{Capacity: capacity, Now: s.cfg.Now})
	s.Metrics.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "coffer_overload_shed_total",
		Help: "Vault requests overload protection refused (429), from principals over their share while the server was full."},
		func() float64 { return float64(s.Limiter.Shed()) }))
	s.kv = kvhttp.New(kvhttp.Deps{
		Endpoints: ep, Access: s.Access, Vaults: s.Vaults, Secrets: s.Secrets, Keys: s.Keys, Certs: s.Certs,
		Verifier: s.Authority.Verifier(), Issuer: s.Authority.Issuer, Changes: s.changes, Limiter: s.Limiter, Log: s.log,
		NoWatch: s.cfg.NoVaultWatch, Sync: b.Sync, Audit: s.Audit.Record,
	})
	s.Metrics.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_vault_watch_streams", Help: "Open vault watch streams (one per node and identity)."},
			func() float64 { n, _ := s.kv.WatchStreams(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_vault_watch_objects", Help: "Objects the open vault watch streams watch."},
			func() float64 { _, n := s.kv.WatchStreams(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_held_reads",
			Help: "Conditional reads held (Prefer: wait) at this moment; at " + strconv.Itoa(kvhttp.MaxHeld) + " further ones are answered at once with Preference-Applied: wait=0."},
			func() float64 { return float64(s.kv.Held()) }))
	s.auth = authhttp.New(s.Authority, func(ctx context.Context) (string, error) {
		st, ok, err := bootstrap.Load(ctx, b)
		if err == nil && !ok {
			err = fmt.Errorf("%w: the installation is not initialised", authority.ErrNotFound)
		}
		return st.TenantID, err
	}, s.log)
	s.mgmt = mgmthttp.New(mgmthttp.Deps{Endpoints: ep, Authority: s.Authority, Vaults: s.Vaults, Roles: s.Roles,
		Access: s.Access, Operator: s, Events: s.Events, Log: s.log})
	return nil
}

// egress is the policy for the server's requests to URLs its users give.
func (s *Server) egress() egress.Policy {
	return egress.Policy{AllowPrivate: s.cfg.AllowPrivateEndpoints, Roots: s.cfg.EgressRoots}
}

// Changes returns the feed that wakes held reads, for tests that need to
// know a read is being held.
func (s *Server) Changes() *changes.Feed { return s.changes }

// MetricsHandler serves the server's Prometheus metrics.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.Metrics, promhttp.HandlerOpts{})
}

// Store returns the server's store.
func (s *Server) Store() *Store { return s.store }

// Close stops certificate issuance, flushes the audit log and closes the
// store and the listeners. Run closes the server when it returns; Close is
// for a server that is never run, and is safe to call again.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.ln.Close()
		if s.acmeLn != nil {
			s.acmeLn.Close()
		}
		if s.stat != nil {
			s.stat.Close()
		}
		if s.Certs != nil {
			s.Certs.Close()
		}
		if s.Audit != nil {
			s.Audit.Close()
		}
		err = s.store.Close()
	})
	return err
}

// RotateRootKey implements mgmthttp.Operator.
func (s *Server) RotateRootKey(ctx context.Context, provided *rootkey.Key) (mgmthttp.RootKeyRotation, error) {
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	id, err := s.store.RotateRootKey(ctx, provided)
	if err != nil {
		if s.store.KeySource.FromEnv() && provided == nil {
			return mgmthttp.RootKeyRotation{}, mgmthttp.BadRequest(err.Error())
		}
		return mgmthttp.RootKeyRotation{}, err
	}
	s.log.Warn("root key rotated", "rootKeyId", id, "fromEnv", s.store.KeySource.FromEnv())
	return mgmthttp.RootKeyRotation{RootKeyID: id, FromEnv: s.store.KeySource.FromEnv()}, nil
}

// RotateDataKey implements mgmthttp.Operator.
func (s *Server) RotateDataKey(ctx context.Context) (uint32, error) {
	term, err := s.store.Barrier.RotateDataKey(ctx)
	if err == nil {
		s.log.Info("data key rotated", "activeTerm", term)
	}
	return term, err
}

// Handler returns the server's root HTTP handler.
func (s *Server) Handler() http.Handler {
	return s.middleware(s.route)
}

// Wrap puts next behind the middleware that every request to Handler goes
// through: request ids, the audit line, metrics, the debug log and panic
// recovery. It exists so that the security suite can make a handler panic,
// which no real route does on purpose, and prove that neither the panic's
// value nor the request's body reaches the log or the response.
func (s *Server) Wrap(next http.Handler) http.Handler {
	return s.middleware(func(ctx context.Context, st *requestState, w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(audit.WithInfo(ctx, &st.info)))
	})
}

// route dispatches by host. ctx is the request's context and st what the
// middleware keeps for it: the request is copied to carry them only once,
// where it is handed on (a copy of an http.Request is 320 bytes, and each
// layer made one), and the vault's handler, which every hot request
// reaches, is given its audit line and flight directly rather than
// through context values.
func (s *Server) route(ctx context.Context, st *requestState, w http.ResponseWriter, r *http.Request) {
	info := &st.info
	ep := s.ep
	route, vaultName := ep.Parse(r.Host)
	if route == endpoint.RouteApex {
		switch r.URL.Path {
		case "/healthz":
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("ok\n"))
			return
		case "/readyz":
			s.serveReady(w, r)
			return
		}
	}
	var flight *throttle.Flight
	if route == endpoint.RouteVault || route == endpoint.RouteApex {
		// Every request first catches up with the store: on a shared
		// store, what any replica acknowledged before it arrived (a write,
		// a revoked policy) holds for it. A replica that cannot reach the
		// store answers 503 rather than serve what may be stale.
		var err error
		ctx, err = s.store.Barrier.Sync(ctx)
		if err != nil {
			s.log.Warn("request refused: the store is unavailable", "error", err)
			w.Header().Set("Retry-After", "1")
			azerror.Write(w, http.StatusServiceUnavailable, "ServiceUnavailable", "", "This replica cannot reach its store; retry, and another replica may answer.")
			return
		}
		if route == endpoint.RouteVault {
			held := kvhttp.WaitPreference(r) > 0
			st.api = vaultAPI(held) // named here while the route is known, not again by api
			if !held {
				flight = s.Limiter.Start(&st.flight)
				defer flight.Done()
			}
		}
	}
	if route == endpoint.RouteVault {
		s.kv.ServeContext(ctx, w, r, vaultName, info, flight)
		return
	}
	r = r.WithContext(audit.WithInfo(ctx, info))
	switch route {
	case endpoint.RouteApex:
		switch {
		case r.URL.Path == vaultwatch.Path:
			s.kv.ServeWatch(w, r)
		case strings.HasPrefix(r.URL.Path, mgmthttp.Prefix), mgmthttp.IsARMPath(r.URL.Path):
			s.mgmt.ServeHTTP(w, r)
		case s.auth.Handles(r):
			s.auth.ServeHTTP(w, r)
		default:
			azerror.Write(w, http.StatusNotFound, "NotFound", "", "No endpoint is served at "+r.URL.Path+" on this host.")
		}
	default:
		azerror.Write(w, http.StatusMisdirectedRequest, "BadParameter", "", fmt.Sprintf("host %q is not served here: vaults are https://{vault}.%s/ and the authority is https://%s/",
			sanitize(r.Host), ep.Apex(), ep.Apex()))
	}
}

// Ready reports whether this replica can serve: its store answers and it
// follows the store's keyring.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := s.store.Barrier.Healthy(); err != nil {
		return err
	}
	if r, ok := s.store.Phys.(interface{ Ready(context.Context) error }); ok {
		return r.Ready(ctx)
	}
	return nil
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.Ready(r.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: "+err.Error())
		return
	}
	fmt.Fprintln(w, "ok")
}

// sanitize keeps a Host header printable and short for an error message.
func sanitize(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// vaultAPI names a vault request's API for metrics: held reads last up to
// their wait, so they are kept out of the vault's latency.
func vaultAPI(held bool) string {
	if held {
		return "vault-held"
	}
	return "vault"
}

// api names the API a request is for, for metrics.
func (s *Server) api(r *http.Request) string {
	switch route, _ := s.ep.Parse(r.Host); {
	case route == endpoint.RouteVault:
		return vaultAPI(kvhttp.WaitPreference(r) > 0)
	case route == endpoint.RouteApex && r.URL.Path == vaultwatch.Path:
		return "vault-watch" // streams last as long as their token: kept out of the vault's latency
	case route == endpoint.RouteApex && (strings.HasPrefix(r.URL.Path, mgmthttp.Prefix) || mgmthttp.IsARMPath(r.URL.Path)):
		return "management"
	case route == endpoint.RouteApex:
		return "authority"
	}
	return "unknown"
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

// requestState is what the middleware keeps per request.
type requestState struct {
	api    string // the request's api for metrics, if route set it; else see api
	flight throttle.Flight
	info   audit.Info
	sw     statusWriter
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection: the vault
// watch flushes its records and sets its own write deadlines.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// requestID returns a new request id: 32 hex digits, like Key Vault's. It
// is an identifier, not a secret, so it need not be unpredictable, only
// unique: a random half drawn once per process (so replicas and restarts
// differ) and a counter, instead of crypto/rand on every request.
func requestID() string {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], idCounter.Add(1))
	var b [32]byte
	hex.Encode(b[:16], idPrefix[:])
	hex.Encode(b[16:], n[:])
	return string(b[:])
}

var (
	idPrefix  = func() (p [8]byte) { rand.Read(p[:]); return p }()
	idCounter atomic.Uint64
)

// middleware adds request ids, writes the request's audit line and metrics,
// logs it at debug level, and turns a panic into a 500. A panic's value is
// not logged: it could hold request data; its stack is enough to find the bug.
// nosniff is every response's X-Content-Type-Options. Shared: a header
// value slice is only ever replaced, or copied by Clone.
var nosniff = []string{"nosniff"}

func (s *Server) middleware(next func(context.Context, *requestState, http.ResponseWriter, *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.handlers.Add(1)
		defer s.handlers.Add(-1)
		start := time.Now()
		h := w.Header()
		id := requestID()
		// Set by their canonical keys, which Set would build again on
		// every request.
		h["X-Ms-Request-Id"] = []string{id}
		st := &requestState{sw: statusWriter{ResponseWriter: w}} // one allocation for all it holds
		if cid := r.Header["X-Ms-Client-Request-Id"]; len(cid) > 0 && cid[0] != "" && len(cid[0]) <= 100 {
			h["X-Ms-Client-Request-Id"] = []string{sanitize(cid[0])}
		}
		h["X-Content-Type-Options"] = nosniff
		sw := &st.sw
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panicType", fmt.Sprintf("%T", p), "stack", string(debug.Stack()))
				if sw.status == 0 {
					azerror.Write(sw, http.StatusInternalServerError, "InternalServerError", "", "internal error")
				}
			}
			elapsed := time.Since(start)
			if r.URL.Path != "/healthz" {
				s.record(r, id, st, sw.status, elapsed)
			}
			if s.log.Enabled(r.Context(), slog.LevelDebug) {
				s.log.Debug("request", "method", r.Method, "host", r.Host, "path", r.URL.Path, "status", sw.status, "duration", elapsed)
			}
		}()
		next(r.Context(), st, sw, r)
	})
}

// record writes a request's audit line and metrics. The line names who did
// what to which object, never a value: handlers only fill in names and ids.
func (s *Server) record(r *http.Request, id string, st *requestState, status int, elapsed time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	info := &st.info
	api := st.api
	if api == "" {
		api = s.api(r)
	}
	s.requests.observe(api, status, elapsed)
	op := info.Operation
	if op == "" {
		op = r.Method + " " + r.URL.Path
	}
	src, _, _ := net.SplitHostPort(r.RemoteAddr)
	s.Audit.Record(audit.Entry{
		RequestID: id, Source: src, Tenant: info.Tenant, Principal: info.Principal, AppID: info.AppID,
		Vault: info.Vault, Object: info.Object, Version: info.Version, Method: r.Method,
		Operation: op, Decision: info.Decision, Status: status, LatencyMs: float64(elapsed.Microseconds()) / 1000,
	})
}

// Run serves until ctx is cancelled, then shuts down gracefully and closes
// the server.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	if _, ok, err := bootstrap.Load(ctx, s.store.Barrier); err == nil && !ok {
		s.log.Warn("this installation has no administrator yet: stop the server and run `coffer operator init --data-dir " + s.cfg.DataDir + "`")
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if !s.cfg.InsecureHTTP {
		cr, err := newCertReloader(s.cfg.TLSCertFile, s.cfg.TLSKeyFile, s.log)
		if err != nil {
			return err
		}
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cr.get}
	} else {
		s.log.Warn("SERVING PLAIN HTTP (InsecureHTTP): tokens and secrets cross the network unencrypted; use this only behind a TLS-terminating proxy on a trusted network")
	}
	bgCtx, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	go s.sweep(bgCtx)
	go s.Limiter.Watch(bgCtx)
	go s.leadEvents(bgCtx)
	go s.stat.Serve(bgCtx, s.log)
	if s.acmeLn != nil {
		go s.serveACMEHTTP(bgCtx, s.acmeLn)
	}

	s.log.Info("coffer server listening", "addr", s.ln.Addr().String(), "authority", s.ep.AuthorityURL(), "vaults", "https://{vault}."+s.ep.Apex()+"/", "rootKeyId", s.store.Barrier.RootKeyID())
	errc := make(chan error, 1)
	go func() {
		if s.cfg.InsecureHTTP {
			errc <- hs.Serve(s.ln)
		} else {
			errc <- hs.ServeTLS(s.ln, "", "")
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Held reads end now, answered, rather than holding the shutdown.
	s.changes.Close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		return err
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	s.awaitHandlers(shutCtx)
	return nil
}

// awaitHandlers waits, until ctx ends, for the handlers that Shutdown did
// not wait for. Each has seen its request's context cancelled, so this is
// short; one still running when ctx ends finds the store closed, and its
// audit line is counted as dropped.
func (s *Server) awaitHandlers(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.handlers.Load() > 0 {
		select {
		case <-ctx.Done():
			s.log.Warn("requests still running after the shutdown deadline; closing the store under them", "requests", s.handlers.Load())
			return
		case <-tick.C:
		}
	}
}

// sweep runs the singleton jobs (the purge of deleted objects past their
// retention, certificate renewal, and the issuance a stop interrupted) on
// the one replica that leads. Its writes are fenced by the leadership: a
// replica that lost it, paused or partitioned, cannot write after another
// took over.
func (s *Server) sweep(ctx context.Context) {
	for ctx.Err() == nil {
		lctx, err := s.store.Leader.Lead(ctx, "scheduler")
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("cannot campaign for the scheduler's leadership; retrying", "error", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		s.leader.Set(1)
		s.leading.Store(true)
		if s.store.Barrier.Shared() {
			s.log.Info("this replica leads the scheduled jobs")
		}
		s.lead(lctx)
		s.leader.Set(0)
		s.leading.Store(false)
		if ctx.Err() == nil {
			s.log.Warn("this replica lost the scheduler's leadership", "cause", context.Cause(lctx))
		}
	}
}

// Leading reports whether this replica runs the singleton jobs now.
func (s *Server) Leading() bool { return s.leading.Load() }

// lead runs the jobs until the leadership ends.
func (s *Server) lead(ctx context.Context) {
	if sctx, err := s.store.Barrier.Sync(ctx); err == nil {
		for _, v := range s.Vaults.List("") {
			if n, err := s.Certs.Resume(sctx, &v); err != nil {
				s.log.Error("resuming certificate operations failed", "vault", v.Name, "err", err)
			} else if n > 0 {
				s.log.Info("resumed certificate operations interrupted by a stop", "vault", v.Name, "count", n)
			}
		}
	}
	t := time.NewTicker(s.cfg.PurgeInterval)
	defer t.Stop()
	for {
		if sctx, err := s.store.Barrier.Sync(ctx); err == nil {
			s.PurgeDue(sctx)
		} else if ctx.Err() == nil {
			s.log.Warn("scheduled jobs skipped: the store is unavailable", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PurgeDue purges, in every vault, the deleted objects whose retention has
// passed, starts the certificate renewals that are due, and rotates the keys
// whose rotation policy says so.
func (s *Server) PurgeDue(ctx context.Context) {
	if n, err := s.Authority.PurgeReplays(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("scheduled task failed", "task", "purge used assertion ids", "err", err)
	} else if n > 0 {
		s.log.Debug("scheduled task done", "task", "purge used assertion ids", "count", n)
	}
	for _, v := range s.Vaults.List("") {
		for _, task := range []struct {
			what string
			run  func(context.Context, *vault.Vault) (int, error)
		}{
			{"purge deleted certificates", s.Certs.PurgeDue},
			{"purge deleted secrets", s.Secrets.PurgeDue},
			{"purge deleted keys", s.Keys.PurgeDue},
			{"renew certificates", s.Certs.RenewDue},
			{"rotate keys", s.Keys.RotateDue},
		} {
			n, err := task.run(ctx, &v)
			if err != nil && ctx.Err() == nil {
				s.log.Error("scheduled task failed", "task", task.what, "vault", v.Name, "err", err)
			}
			if n > 0 {
				s.log.Info("scheduled task done", "task", task.what, "vault", v.Name, "count", n)
			}
		}
	}
}

// issuersSetting is what an operator sets to allow private federated
// issuers, as refusals name it.
const issuersSetting = "coffer server --allow-private-issuers (the chart's server.allowPrivateIssuers)"
