// Package server assembles Coffer's control plane, the vault API, the
// authority and the management API, on one HTTPS listener, routed by Host.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/authhttp"
	"github.com/cofferhq/coffer/internal/server/api/kvhttp"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a server.
type Config struct {
	DataDir     string
	RootKeyFile string // empty: COFFER_ROOT_KEY
	Endpoints   endpoint.Endpoints

	TLSCertFile, TLSKeyFile string
	// InsecureHTTP serves plain HTTP, for use behind a TLS-terminating proxy.
	InsecureHTTP bool

	TokenLifetime time.Duration
	// TokenRateLimit and TokenRateBurst limit token requests per client
	// (see authority.Config); a negative limit turns limiting off.
	TokenRateLimit float64
	TokenRateBurst int
	// FederationRoots are the CAs trusted for federated issuers' HTTPS
	// endpoints; nil means the system roots.
	FederationRoots *x509.CertPool
	// PurgeInterval is how often soft-deleted objects past their retention
	// are purged.
	PurgeInterval time.Duration
	// AuditLog is the audit log file; empty means {DataDir}/audit.log.
	AuditLog string

	Log *slog.Logger
	Now func() time.Time
}

// Server is a running control plane.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *Store

	Vaults    *vault.Registry
	Authority *authority.Authority
	Secrets   *secret.Service
	Keys      *key.Service
	Certs     *cert.Service
	Roles     *rbac.Assignments
	Access    *access.Authorizer
	Audit     *audit.Log
	Metrics   *prometheus.Registry

	kv      *kvhttp.Handler
	changes *changes.Feed // wakes held reads when their object changes
	auth    *authhttp.Handler
	mgmt    *mgmthttp.Handler

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	rotMu sync.Mutex
}

// Open opens the store and builds every service.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PurgeInterval == 0 {
		cfg.PurgeInterval = time.Minute
	}
	if !cfg.InsecureHTTP && (cfg.TLSCertFile == "" || cfg.TLSKeyFile == "") {
		return nil, errors.New("TLS is required: pass --tls-cert-file and --tls-key-file (or --insecure-http behind a TLS-terminating proxy)")
	}
	st, err := OpenStore(ctx, cfg.DataDir, cfg.RootKeyFile)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, store: st}
	if err := s.build(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

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
	ep := s.cfg.Endpoints
	fedClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.cfg.FederationRoots, MinVersion: tls.VersionTLS12}, TLSHandshakeTimeout: 5 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second, MaxIdleConnsPerHost: 2,
	}}
	s.Authority, err = authority.Open(ctx, b, authority.Config{
		Host:          ep.AuthorityURL(),
		Resources:     []string{ep.Resource(), endpoint.ManagementResource},
		TokenLifetime: s.cfg.TokenLifetime,
		RateLimit:     s.cfg.TokenRateLimit, RateBurst: s.cfg.TokenRateBurst,
		Federation: federation.New(federation.Config{Client: fedClient, Now: s.cfg.Now}),
		Roles:      s.Roles,
	}, s.cfg.Now)
	if err != nil {
		return err
	}
	s.Metrics = prometheus.NewRegistry()
	s.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_http_requests_total", Help: "HTTP requests by API and status code."}, []string{"api", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "coffer_http_request_duration_seconds", Help: "HTTP request latency by API.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}}, []string{"api"})
	s.Metrics.MustRegister(s.requests, s.latency)
	auditPath := s.cfg.AuditLog
	if auditPath == "" {
		auditPath = filepath.Join(s.cfg.DataDir, "audit.log")
	}
	if s.Audit, err = audit.Open(auditPath, audit.Options{Registerer: s.Metrics, Now: s.cfg.Now}); err != nil {
		return err
	}
	s.Secrets = secret.New(b, b, s.cfg.Now)
	s.Keys = key.New(b, b, s.cfg.Now)
	s.Certs = cert.New(b, b, s.Keys, s.Secrets, s.cfg.Now, s.log)
	for _, v := range s.Vaults.List("") {
		if n, err := s.Certs.Resume(ctx, &v); err != nil {
			return fmt.Errorf("resume certificate operations of vault %s: %w", v.Name, err)
		} else if n > 0 {
			s.log.Info("resumed certificate operations interrupted by a stop", "vault", v.Name, "count", n)
		}
	}
	s.changes = changes.New()
	b.OnCommit(func(keys []string) {
		for _, k := range keys {
			if vault, kind, name, ok := object.Named(k); ok {
				s.changes.Publish(changes.Subject(vault, kind, name))
			}
		}
	})
	s.kv = kvhttp.New(kvhttp.Deps{
		Endpoints: ep, Access: s.Access, Vaults: s.Vaults, Secrets: s.Secrets, Keys: s.Keys, Certs: s.Certs,
		Verifier: s.Authority.Verifier(), Issuer: s.Authority.Issuer, Changes: s.changes, Log: s.log,
	})
	s.auth = authhttp.New(s.Authority, s.log)
	s.mgmt = mgmthttp.New(mgmthttp.Deps{Endpoints: ep, Authority: s.Authority, Vaults: s.Vaults, Roles: s.Roles,
		Access: s.Access, Operator: s, Log: s.log})
	return nil
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
// store.
func (s *Server) Close() error {
	if s.Certs != nil {
		s.Certs.Close()
	}
	if s.Audit != nil {
		s.Audit.Close()
	}
	return s.store.Close()
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
	return s.middleware(http.HandlerFunc(s.route))
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	ep := s.cfg.Endpoints
	switch route, _ := ep.Parse(r.Host); route {
	case endpoint.RouteVault:
		s.kv.ServeHTTP(w, r)
	case endpoint.RouteApex:
		switch {
		case r.URL.Path == "/healthz":
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("ok\n"))
		case strings.HasPrefix(r.URL.Path, mgmthttp.Prefix):
			s.mgmt.ServeHTTP(w, r)
		case s.auth.Handles(r):
			s.auth.ServeHTTP(w, r)
		default:
			http.Error(w, `{"error":{"code":"NotFound","message":"no such endpoint"}}`, http.StatusNotFound)
		}
	default:
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusMisdirectedRequest)
		fmt.Fprintf(w, `{"error":{"code":"BadParameter","message":"host %q is not served here: vaults are https://{vault}.%s/ and the authority is https://%s/"}}`,
			sanitize(r.Host), ep.Apex(), ep.Apex())
	}
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

// api names the API a request is for, for metrics.
func (s *Server) api(r *http.Request) string {
	switch route, _ := s.cfg.Endpoints.Parse(r.Host); {
	case route == endpoint.RouteVault && kvhttp.WaitPreference(r) > 0:
		return "vault-held" // held reads last up to their wait: kept out of the vault's latency
	case route == endpoint.RouteVault:
		return "vault"
	case route == endpoint.RouteApex && strings.HasPrefix(r.URL.Path, mgmthttp.Prefix):
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

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func requestID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// middleware adds request ids, writes the request's audit line and metrics,
// logs it at debug level, and turns a panic into a 500. A panic's value is
// not logged: it could hold request data; its stack is enough to find the bug.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		id := requestID()
		h.Set("x-ms-request-id", id)
		info := &audit.Info{}
		r = r.WithContext(audit.WithInfo(r.Context(), info))
		if cid := r.Header.Get("x-ms-client-request-id"); cid != "" && len(cid) <= 100 {
			h.Set("x-ms-client-request-id", sanitize(cid))
		}
		h.Set("X-Content-Type-Options", "nosniff")
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panicType", fmt.Sprintf("%T", p), "stack", string(debug.Stack()))
				if sw.status == 0 {
					http.Error(sw, `{"error":{"code":"InternalServerError","message":"internal error"}}`, http.StatusInternalServerError)
				}
			}
			elapsed := time.Since(start)
			if r.URL.Path != "/healthz" {
				s.record(r, id, info, sw.status, elapsed)
			}
			if s.log.Enabled(r.Context(), slog.LevelDebug) {
				s.log.Debug("request", "method", r.Method, "host", r.Host, "path", r.URL.Path, "status", sw.status, "duration", elapsed)
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// record writes a request's audit line and metrics. The line names who did
// what to which object, never a value: handlers only fill in names and ids.
func (s *Server) record(r *http.Request, id string, info *audit.Info, status int, elapsed time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	api := s.api(r)
	s.requests.WithLabelValues(api, strconv.Itoa(status)).Inc()
	s.latency.WithLabelValues(api).Observe(elapsed.Seconds())
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

// Serve serves on ln until ctx is cancelled, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
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
		s.log.Warn("SERVING PLAIN HTTP (--insecure-http): tokens and secrets cross the network unencrypted; use this only behind a TLS-terminating proxy on a trusted network")
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	go s.sweep(sweepCtx)

	errc := make(chan error, 1)
	go func() {
		if s.cfg.InsecureHTTP {
			errc <- hs.Serve(ln)
		} else {
			errc <- hs.ServeTLS(ln, "", "")
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
	return nil
}

// sweep purges soft-deleted objects whose retention has passed.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.PurgeInterval)
	defer t.Stop()
	for {
		s.PurgeDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PurgeDue purges, in every vault, the deleted objects whose retention has
// passed, and starts the certificate renewals that are due.
func (s *Server) PurgeDue(ctx context.Context) {
	for _, v := range s.Vaults.List("") {
		for _, task := range []struct {
			what string
			run  func(context.Context, *vault.Vault) (int, error)
		}{
			{"purge deleted certificates", s.Certs.PurgeDue},
			{"purge deleted secrets", s.Secrets.PurgeDue},
			{"purge deleted keys", s.Keys.PurgeDue},
			{"renew certificates", s.Certs.RenewDue},
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
