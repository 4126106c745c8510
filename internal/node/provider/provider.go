// Package provider is Coffer's Secrets Store CSI provider: it serves the
// upstream v1alpha1 provider protocol, reads the Azure provider's
// parameters, proves the pod's identity to Coffer's authority, and returns
// the files for a volume. It runs under Coffer's driver or the upstream
// one, as "coffer" or as "azure" for existing SecretProviderClasses.
package provider

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/version"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/node/push"
)

// Config configures a provider.
type Config struct {
	// Name is the provider's name: its socket is {dir}/{name}.sock.
	Name string
	// VaultSuffix is the vaults' DNS suffix with its port, such as
	// vault.example.com:8443: a vault is https://{name}.{suffix}/.
	VaultSuffix string
	// AuthorityHost is the authority's base URL, such as
	// https://vault.example.com:8443.
	AuthorityHost string
	Vault         *kvclient.Client
	Auth          *authclient.Client
	// NodeAgent serves usePodIdentity and useVMManagedIdentity; nil: those
	// modes are refused with an explanation.
	NodeAgent *authclient.NodeAgent
	// Parallel bounds the objects of one mount fetched at once.
	Parallel int
	// MaxResponseBytes bounds one mount's files.
	MaxResponseBytes int
	// CacheBytes bounds the values kept for conditional reads.
	CacheBytes int
	// Timeout bounds one mount.
	Timeout  time.Duration
	Registry prometheus.Registerer
	Log      *slog.Logger
}

// Server serves the provider protocol.
type Server struct {
	v1alpha1.UnimplementedCSIDriverProviderServer
	cfg   Config
	cache *cache
	watch *watcher
	good  *lastGood

	requests  *prometheus.CounterVec
	fromWatch *prometheus.CounterVec
	mounts    *prometheus.CounterVec
	latency   prometheus.Histogram
	stale     prometheus.Counter
}

// New validates cfg and returns a provider.
func New(cfg Config) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "coffer"
	}
	if cfg.VaultSuffix == "" {
		return nil, daemon.Invalid("VaultSuffix", "is required: vaults are https://{name}.{suffix}/")
	}
	if cfg.AuthorityHost == "" {
		cfg.AuthorityHost = "https://" + cfg.VaultSuffix
	}
	if u, err := url.Parse(cfg.AuthorityHost); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, daemon.Invalid("AuthorityHost", "%q must be an https URL", cfg.AuthorityHost)
	}
	if cfg.Vault == nil || cfg.Auth == nil {
		return nil, errors.New("provider: vault and authority clients are required")
	}
	cfg.Auth.Authority = cfg.AuthorityHost
	if cfg.Parallel <= 0 {
		cfg.Parallel = 16
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 4 << 20
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = 32 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 25 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, cache: newCache(cfg.CacheBytes), good: newLastGood(cfg.CacheBytes),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_provider_vault_requests_total",
			Help: "Vault reads by object type and result: fetched (a value transferred), not_modified (a 304), throttled_retry (a 429 tried again) or error."}, []string{"object_type", "result"}),
		fromWatch: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_provider_watched_reads_total",
			Help: "Object reads answered from the cache, without a vault request, because the mount's vault watch vouched for them."}, []string{"object_type"}),
		mounts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_provider_mounts_total",
			Help: "Mount requests by result: ok or an error code."}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "coffer_provider_mount_duration_seconds", Help: "Mount latency.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_provider_last_known_good_mounts_total",
			Help: "Mounts answered with last-known-good files because the vault or the authority was unreachable (lastKnownGood)."}),
	}
	cfg.Registry.MustRegister(s.requests, s.fromWatch, s.mounts, s.latency, s.stale)
	s.watch = newWatcher(cfg.Vault, s.cache, cfg.Registry, cfg.Log)
	return s, nil
}

// Register adds the provider to a gRPC server: the upstream v1alpha1
// service, and Coffer's Push service for push rotation.
func (s *Server) Register(g *grpc.Server) {
	v1alpha1.RegisterCSIDriverProviderServer(g, s)
	push.Register(g, s.watch)
}

// Close ends the Push streams and the held reads; call it before a
// graceful stop of the gRPC server, which would otherwise wait on them.
func (s *Server) Close() { s.watch.close() }

// Version answers with the provider's name and version.
func (s *Server) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: s.cfg.Name, RuntimeVersion: version.Version}, nil
}

// mountError is a failed mount with its protocol code.
type mountError struct {
	code mounterr.Code
	msg  string
	down bool // the vault or the authority could not be reached at all (see down)
}

func (e *mountError) Error() string { return string(e.code) + ": " + e.msg }

func fail(code mounterr.Code, format string, args ...any) error {
	return &mountError{code: code, msg: fmt.Sprintf(format, args...)}
}

// failFrom is fail for an error caused by err, remembering whether err
// means the other side was down.
func failFrom(err error, code mounterr.Code, format string, args ...any) error {
	return &mountError{code: code, msg: fmt.Sprintf(format, args...), down: down(err)}
}

// down reports whether err means the vault or the authority could not be
// reached: a transport failure, a timeout, or a gateway's 502, 503 or 504.
// A refusal, a bad answer, a certificate that does not verify, or a
// cancelled call is not: last-known-good files bridge outages, not those.
func down(err error) bool {
	var (
		ke  *kvclient.Error
		ae  *authclient.Error
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		hne x509.HostnameError
		cie x509.CertificateInvalidError
	)
	gateway := func(status int) bool { return status == 502 || status == 503 || status == 504 }
	switch {
	case errors.Is(err, context.Canceled),
		errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cie):
		return false
	case errors.As(err, &ke) && ke.Status != 0:
		return gateway(ke.Status)
	case errors.As(err, &ae) && ae.Status != 0:
		return gateway(ae.Status)
	case errors.Is(err, context.DeadlineExceeded):
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// Mount returns a volume's files. Failures come back as MountResponse.error
// codes (NotFound, Forbidden, Throttled, Unreachable, InvalidParameter,
// Internal) with the explanation in the mounterr.Trailer trailer; the
// explanation names the objects and the identity, never a value.
func (s *Server) Mount(ctx context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	resp, err := s.mount(ctx, req)
	s.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		var me *mountError
		if !errors.As(err, &me) {
			me = &mountError{code: mounterr.Internal, msg: err.Error()}
		}
		s.mounts.WithLabelValues(string(me.code)).Inc()
		s.cfg.Log.Warn("mount failed", "code", me.code, "err", me.msg)
		grpc.SetTrailer(ctx, metadata.Pairs(mounterr.Trailer, printable(me.msg)))
		return &v1alpha1.MountResponse{Error: &v1alpha1.Error{Code: string(me.code)}}, nil
	}
	s.mounts.WithLabelValues("ok").Inc()
	return resp, nil
}

// printable makes s a valid gRPC header value: printable ASCII only, with
// anything else (YAML errors' newlines, an authority's CRLFs) as a space;
// a single bad byte would otherwise fail the whole call on the client.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = ' '
		}
	}
	return string(b)
}

// entry is one file to produce: an object at one version.
type entry struct {
	obj     azparams.Object
	version string // "" for the latest
	path    string
	id      string
	got     *fetched // already read (a history's current version), or nil
}

func (s *Server) mount(ctx context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	m, err := azparams.Parse(req.GetAttributes(), req.GetSecrets(), req.GetPermission())
	if err != nil {
		return nil, fail(mounterr.InvalidParameter, "%v", err)
	}
	base, resource, err := s.vault(m)
	if err != nil {
		return nil, err
	}
	if !m.LastKnownGood {
		return s.mountFrom(ctx, req, m, base, resource)
	}
	key := lastGoodKey(m, base, req.GetPermission())
	resp, err := s.mountFrom(ctx, req, m, base, resource)
	var me *mountError
	errors.As(err, &me)
	switch {
	case err == nil:
		s.good.put(key, resp, time.Now())
	case me != nil && me.down && ownToken(m):
		if good, at, ok := s.good.get(key, time.Now()); ok {
			s.stale.Inc()
			s.cfg.Log.Warn("the vault is unreachable: mounting the last-known-good files (lastKnownGood)", "mounted", at, "for", describe(m), "err", me.msg)
			return good, nil
		}
	case me != nil && (me.code == mounterr.Forbidden || me.code == mounterr.NotFound || me.code == mounterr.InvalidParameter):
		// A definite refusal: what was stored must not outlive it.
		s.good.drop(key)
	}
	return resp, err
}

// ownToken reports whether a workload identity's service-account token
// names the pod's own namespace and service account, which the last-known-
// good key trusts (the kubelet sets them with podInfoOnMount). It is read,
// not verified: the authority that would verify it is what is down, and
// the token came from the kubelet, as the names did. Other modes have no
// such token.
func ownToken(m *azparams.Mount) bool {
	if m.Auth.Mode != azparams.WorkloadIdentity {
		return true
	}
	return authclient.ReadClaims(m.Auth.Token).Subject == "system:serviceaccount:"+m.PodNS+":"+m.ServiceAccount
}

// mountFrom reads a volume's files from the vault.
func (s *Server) mountFrom(ctx context.Context, req *v1alpha1.MountRequest, m *azparams.Mount, base, resource string) (*v1alpha1.MountResponse, error) {
	who := describe(m)
	tok, err := s.token(ctx, m, resource)
	if err != nil {
		return nil, err
	}
	token := tok.Value
	rd := reader{base: base, token: token}
	principal := principalOf(tok.Claims)
	if principal != "" {
		rd.watch = streamKey(resource, principal)
	}
	entries, err := s.expand(ctx, m, rd)
	if err != nil {
		return nil, err
	}
	results := make([]*v1alpha1.File, len(entries))
	versions := make([]*v1alpha1.ObjectVersion, len(entries))
	watched := make([]watchItem, len(entries))
	errs := make([]error, len(entries))
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.cfg.Parallel)
	for i, e := range entries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f, err := e.got, error(nil)
			if f == nil {
				f, err = s.fetchPatiently(ctx, rd, e.obj.Type, e.obj.Name, e.version)
			}
			if err != nil && e.obj.Optional && objectMissing(err) {
				s.cfg.Log.Info("an optional object is missing; the volume goes without it", "object", e.obj.Type+"/"+e.obj.Name, "version", e.version)
				return // no file, no version: as if it were not listed
			}
			if err != nil {
				errs[i] = objectError(err, e.obj, who)
				return
			}
			b, err := content(e.obj, f)
			if err != nil {
				errs[i] = fail(mounterr.InvalidParameter, "%s %s: %v", e.obj.Type, e.obj.Name, err)
				return
			}
			results[i] = &v1alpha1.File{Path: e.path, Mode: int32(e.obj.Mode), Contents: b}
			versions[i] = &v1alpha1.ObjectVersion{Id: e.id, Version: f.Version}
			if e.version == "" && f.ETag != "" {
				watched[i] = watchItem{base: base, objType: e.obj.Type, name: e.obj.Name, etag: f.ETag}
			}
		}()
	}
	wg.Wait()
	if err := firstError(errs); err != nil {
		return nil, err
	}
	// Optional objects that are missing leave holes.
	results = slices.DeleteFunc(results, func(f *v1alpha1.File) bool { return f == nil })
	versions = slices.DeleteFunc(versions, func(v *v1alpha1.ObjectVersion) bool { return v == nil })
	if len(versions) == 0 {
		if slices.ContainsFunc(m.Objects, func(o azparams.Object) bool { return !o.Optional }) {
			return nil, fail(mounterr.NotFound, "the volume's objects have no enabled versions to mount")
		}
		return nil, fail(mounterr.NotFound, "every object of the volume is optional and none exists in the vault: there is nothing to mount")
	}
	total := 0
	for _, f := range results {
		total += len(f.Contents)
	}
	if total > s.cfg.MaxResponseBytes {
		return nil, fail(mounterr.InvalidParameter, "the volume's %d files total %d bytes, over the provider's %d-byte limit: mount fewer or smaller objects", len(results), total, s.cfg.MaxResponseBytes)
	}
	s.watch.register(registration{target: req.GetTargetPath(), token: token, expires: tok.Expires, resource: resource, principal: principal,
		items: slices.DeleteFunc(watched, func(it watchItem) bool { return it.name == "" })})
	return &v1alpha1.MountResponse{ObjectVersion: versions, Files: results}, nil
}

// firstError returns the most telling error: a refusal or a missing object
// before a transport failure, so one message explains the mount.
func firstError(errs []error) error {
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		var me *mountError
		if errors.As(err, &me) && me.code != mounterr.Unreachable {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// vault returns the mount's vault base URL and the token resource (the
// vault host's parent, as in Coffer's challenge).
func (s *Server) vault(m *azparams.Mount) (base, resource string, err error) {
	if m.VaultURL != "" {
		u, err := url.Parse(m.VaultURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return "", "", fail(mounterr.InvalidParameter, "vaultURL %q must be a vault's https base URL, such as https://myvault.vault.example.com:8443/", m.VaultURL)
		}
		_, parent, ok := strings.Cut(u.Host, ".")
		if !ok {
			return "", "", fail(mounterr.InvalidParameter, "vaultURL %q must name a vault on a subdomain", m.VaultURL)
		}
		return "https://" + u.Host, "https://" + parent, nil
	}
	return "https://" + strings.ToLower(m.VaultName) + "." + s.cfg.VaultSuffix, "https://" + s.cfg.VaultSuffix, nil
}

func describe(m *azparams.Mount) string {
	who := m.Auth.Mode.String()
	if m.Auth.ClientID != "" {
		who += " " + m.Auth.ClientID
	}
	if m.PodNS != "" {
		who += " for pod " + m.PodNS + "/" + m.PodName
	}
	return who
}

// token proves the mount's identity to the authority.
func (s *Server) token(ctx context.Context, m *azparams.Mount, resource string) (authclient.Token, error) {
	var tok authclient.Token
	var err error
	switch m.Auth.Mode {
	case azparams.PodIdentity, azparams.VMManagedIdentity:
		if s.cfg.NodeAgent == nil {
			return authclient.Token{}, fail(mounterr.Unreachable, "%s needs Coffer's node agent: start the provider with --node-agent-socket (the agent's --local-socket), or use workload identity (clientID) or a nodePublishSecretRef service principal", m.Auth.Mode)
		}
		if m.PodNS == "" || m.PodName == "" || m.PodUID == "" {
			return authclient.Token{}, fail(mounterr.InvalidParameter, "%s needs the pod's name, namespace and uid: the CSIDriver must have podInfoOnMount: true", m.Auth.Mode)
		}
		tok, err = s.cfg.NodeAgent.Token(ctx, authclient.PodRequest{
			VM: m.Auth.Mode == azparams.VMManagedIdentity, Namespace: m.PodNS, Name: m.PodName, UID: m.PodUID,
			PodToken: m.Auth.Token, Resource: resource, ClientID: m.Auth.ClientID,
		})
	case azparams.WorkloadIdentity:
		tok, err = s.cfg.Auth.Token(ctx, authclient.Credential{TenantID: m.TenantID, ClientID: m.Auth.ClientID, Assertion: m.Auth.Token}, resource+"/.default")
	case azparams.ServicePrincipal:
		tok, err = s.cfg.Auth.Token(ctx, authclient.Credential{TenantID: m.TenantID, ClientID: m.Auth.ClientID, Secret: m.Auth.Secret}, resource+"/.default")
	default:
		return authclient.Token{}, fail(mounterr.InvalidParameter, "no identity is configured for the mount")
	}
	if err != nil {
		var ae *authclient.Error
		code := mounterr.Unreachable
		if errors.As(err, &ae) {
			agent := m.Auth.Mode == azparams.PodIdentity || m.Auth.Mode == azparams.VMManagedIdentity
			switch {
			case ae.Status == 429:
				code = mounterr.Throttled
			case ae.Status == 404 && agent: // the node agent has not seen the pod yet
			case ae.Status >= 400 && ae.Status < 500:
				code = mounterr.Forbidden
			case ae.Status >= 200 && ae.Status < 300: // an answer without a usable token
				code = mounterr.Internal
			}
		}
		return authclient.Token{}, failFrom(err, code, "signing in as %s (tenant %s) failed: %v", describe(m), m.TenantID, err)
	}
	return tok, nil
}

// expand turns the objects into the entries to fetch: one per object, or,
// with objectVersionHistory N > 1, N versions as {file}/0, {file}/1, ...:
// the given version (or the current one) and the enabled versions before
// it, newest first (see historyOf for how ties within a second are
// decided). The current version is read here, after the listing, and its
// entry keeps what was read.
func (s *Server) expand(ctx context.Context, m *azparams.Mount, rd reader) ([]entry, error) {
	var out []entry
	for _, o := range m.Objects {
		if o.History <= 1 {
			out = append(out, entry{obj: o, version: o.Version, path: o.FileName(), id: o.Type + "/" + o.Name})
			continue
		}
		items, err := s.cfg.Vault.Versions(ctx, rd.base, rd.token, collection(o.Type), o.Name)
		if err != nil && o.Optional && objectMissing(err) {
			continue
		}
		if err != nil {
			return nil, objectError(err, o, describe(m))
		}
		// Read after the listing, so that every listed version but this
		// one is older than it.
		cur, err := s.fetchPatiently(ctx, rd, o.Type, o.Name, "")
		current := ""
		switch {
		case err == nil:
			current = cur.Version
		case currentDisabled(err):
			cur = nil
		case o.Optional && objectMissing(err):
			continue
		default:
			return nil, objectError(err, o, describe(m))
		}
		versions, ok := historyOf(items, current, o.Version, int(o.History))
		if !ok && o.Optional {
			continue
		}
		if !ok {
			return nil, fail(mounterr.NotFound, "%s %s has no enabled version %s to start objectVersionHistory from", o.Type, o.Name, o.Version)
		}
		for i, v := range versions {
			idx := strconv.Itoa(i)
			e := entry{obj: o, version: v, path: o.FileName() + "/" + idx, id: o.Type + "/" + o.Name + "/" + idx}
			if cur != nil && strings.EqualFold(v, cur.Version) {
				e.got = cur
			}
			out = append(out, e)
		}
	}
	return out, nil
}

func collection(objType string) string {
	switch objType {
	case azparams.TypeKey:
		return "keys"
	case azparams.TypeCert:
		return "certificates"
	}
	return "secrets"
}

// objectMissing reports whether err is the vault saying that the object
// (or the version) does not exist; a vault that does not exist, a route
// that does not, or a proxy's 404 is not a missing optional object.
func objectMissing(err error) bool {
	var ke *kvclient.Error
	if !errors.As(err, &ke) || ke.Status != 404 {
		return false
	}
	switch ke.Code {
	case "SecretNotFound", "KeyNotFound", "CertificateNotFound":
		return true
	}
	return false
}

// objectError classifies a vault failure for one object and says which
// object, which identity, and what to do.
func objectError(err error, o azparams.Object, who string) error {
	class := kvclient.Classify(err)
	what := o.Type + " " + o.Name
	if o.Version != "" {
		what += " version " + o.Version
	}
	switch class {
	case mounterr.NotFound:
		return fail(class, "%s was not found in the vault: %v", what, err)
	case mounterr.Forbidden:
		return fail(class, "%s is not readable by %s: %v", what, who, err)
	case mounterr.Throttled:
		return fail(class, "reading %s was throttled by the vault: %v", what, err)
	case mounterr.Unreachable:
		return failFrom(err, class, "reading %s: %v", what, err)
	}
	return fail(class, "reading %s: %v", what, err)
}
