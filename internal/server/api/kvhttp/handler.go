// Package kvhttp serves the Azure Key Vault REST dialect for every vault,
// addressed by Host as https://{vault}.{suffix}:{port}/.
package kvhttp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
	"github.com/cofferhq/coffer/internal/server/throttle"
)

// Body limits, applied before any byte of a body is parsed.
const (
	maxSecretBody  = 256 << 10 // a 25 KiB value can grow six-fold when JSON-escaped
	maxRestoreBody = object.MaxBackupBytes*4/3 + 4<<10
	maxKeyBody     = 64 << 10 // an imported RSA-4096 JWK is about 4 KiB
	maxCertBody    = 256 << 10
	maxEmptyBody   = 4 << 10
)

// Handler serves the vault data plane.
type Handler struct {
	ep       endpoint.Endpoints
	access   *access.Authorizer
	vaults   *vault.Registry
	secrets  *secret.Service
	keys     *key.Service
	certs    *cert.Service
	verifier *token.Verifier
	issuer   func(tenant string) string
	// audiences are the vault resource, with and without its slash: the
	// same for every request, so built once.
	audiences []string
	feed      *changes.Feed
	limiter   *throttle.Limiter
	held      atomic.Int64 // reads being held
	log       *slog.Logger
	mux       http.Handler

	// The vault watch (watch.go).
	noWatch      bool
	sync         func(context.Context) (context.Context, error)
	record       func(audit.Entry)
	reauthorize  time.Duration
	writeTimeout time.Duration
	watchCounters
}

// Deps are the domain services the handler calls.
type Deps struct {
	Endpoints endpoint.Endpoints
	Access    *access.Authorizer
	Vaults    *vault.Registry
	Secrets   *secret.Service
	Keys      *key.Service
	Certs     *cert.Service
	Verifier  *token.Verifier
	// Issuer returns the token issuer of a tenant.
	Issuer func(tenant string) string
	// Changes wakes held conditional reads (Prefer: wait) when their
	// object changes; nil: reads are never held.
	Changes *changes.Feed
	// Limiter answers 429 Throttled for the vaults' static limits and
	// overload protection; nil throttles nothing.
	Limiter *throttle.Limiter
	// NoWatch turns the vault watch off (ServeWatch answers 404, as a
	// server without it would); it needs Changes.
	NoWatch bool
	// Sync catches up with the store (see barrier.Barrier.Sync), for the
	// vault watch's re-authorization passes; nil: a store only this
	// process writes.
	Sync func(context.Context) (context.Context, error)
	// Audit records the vault watch's decisions about each object, which
	// a stream's one request line cannot hold; nil records none.
	Audit func(audit.Entry)
	// WatchReauthorize is the period of the vault watch's
	// re-authorization passes (default 30 s).
	WatchReauthorize time.Duration
	// WatchWriteTimeout bounds the write of one batch of the vault
	// watch's records (default 30 s).
	WatchWriteTimeout time.Duration
	Log               *slog.Logger
}

// New returns the data-plane handler.
func New(d Deps) *Handler {
	h := &Handler{ep: d.Endpoints, access: d.Access, vaults: d.Vaults, secrets: d.Secrets, keys: d.Keys, certs: d.Certs, verifier: d.Verifier, issuer: memoIssuer(d.Issuer), audiences: []string{d.Endpoints.Resource(), d.Endpoints.Resource() + "/"}, feed: d.Changes, limiter: d.Limiter, log: d.Log,
		noWatch: d.NoWatch, sync: d.Sync, record: d.Audit, reauthorize: d.WatchReauthorize, writeTimeout: d.WatchWriteTimeout}
	if h.reauthorize <= 0 {
		h.reauthorize = defaultReauthorize
	}
	if h.writeTimeout <= 0 {
		h.writeTimeout = defaultWatchWriteTimeout
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	m := http.NewServeMux()
	secretRoutes{base{h, access.Secrets}}.register(m)
	if h.keys != nil {
		keyRoutes{base{h, access.Keys}}.register(m)
	}
	if h.certs != nil {
		certRoutes{base{h, access.Certificates}}.register(m)
	}
	m.HandleFunc("/", notFound)
	h.mux = refuseDotSegments(collapseSlashes(m))
	return h
}

// memoIssuer remembers each tenant's issuer, which every request checks
// its token against: building the string was an allocation per request.
// Tenants are few; past maxMemoTenants, the rest are built each time.
func memoIssuer(issuer func(string) string) func(string) string {
	if issuer == nil {
		return nil
	}
	var m sync.Map
	var n atomic.Int32
	return func(tenant string) string {
		if v, ok := m.Load(tenant); ok {
			return v.(string)
		}
		iss := issuer(tenant)
		if n.Add(1) <= maxMemoTenants {
			m.Store(tenant, iss)
		}
		return iss
	}
}

const maxMemoTenants = 1024

// notFound answers a request no operation matches, by path or by method,
// in Key Vault's error shape; every mux of the handler ends in it, so
// ServeMux's plain-text 404 and 405 never reach a client.
func notFound(w http.ResponseWriter, r *http.Request) {
	writeErr(w, http.StatusNotFound, "NotFound", "", "No Key Vault operation matches "+r.Method+" "+r.URL.Path+".")
}

// call is what the middleware established about a request.
type call struct {
	vault      *vault.Vault
	principal  access.Principal
	apiVersion string
	audit      *audit.Info
	rawQuery   string // read with queryGet: most requests carry one parameter
}

type callKey struct{}

func callOf(r *http.Request) *call { return r.Context().Value(callKey{}).(*call) }

// ServeHTTP resolves the vault from the Host header, authenticates the
// caller, checks the api-version, and dispatches. The 401 challenge is sent
// before any body is read, since the SDK's first request has its body
// stripped.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	_, name := h.ep.Parse(r.Host)
	h.ServeContext(ctx, w, r, name, audit.From(ctx), nil)
}

// ServeContext is ServeHTTP for a request to the vault name (from its
// Host, which the caller has parsed already) whose context is to be ctx,
// and whose audit line and flight (nil if it has none) are given rather
// than carried in ctx: the request is copied to carry ctx once, with the
// call's own value, rather than once per layer and value.
func (h *Handler) ServeContext(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, info *audit.Info, flight *throttle.Flight) {
	info.Vault = name
	v, err := h.vaults.Get(name)
	if err != nil {
		h.fail(w, r.WithContext(ctx), access.Secrets, err)
		return
	}
	p, err := h.authenticate(r, v)
	if err != nil {
		info.Decision = "unauthenticated"
		drain(r)
		h.fail(w, r.WithContext(ctx), access.Secrets, err)
		return
	}
	info.Tenant, info.Principal, info.AppID = p.TenantID, p.ObjectID, p.AppID
	ver := queryGet(r.URL.RawQuery, "api-version")
	switch {
	case ver == "":
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The 'api-version' query parameter is missing. Coffer supports 2015-06-01, 2016-10-01, 7.0 to 7.6, their previews, 2025-07-01 and "+Latest+".")
		return
	case !supportedVersion(ver):
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The specified version ("+ver+") is not recognized. Consider using the latest supported version ("+Latest+").")
		return
	}
	if h.limiter != nil {
		d := h.limiter.Admit(v.Name, v.Throttle, p.ObjectID, classOf(r), WaitPreference(r) > 0)
		if !d.OK {
			info.Decision = "throttled"
			drain(r)
			h.throttled(w, r.WithContext(ctx), d, flight)
			return
		}
		defer d.Release()
	}
	ctx = context.WithValue(ctx, callKey{}, &call{vault: v, principal: p, apiVersion: ver, audit: info, rawQuery: r.URL.RawQuery})
	h.mux.ServeHTTP(w, r.WithContext(ctx))
}

// classOf is what a request costs the vault's limits (see package
// throttle): key creations count as such, conditional and held reads as a
// quarter.
func classOf(r *http.Request) throttle.Class {
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case r.Method == http.MethodPost && strings.HasPrefix(p, "/keys/") && (strings.HasSuffix(p, "/create") || strings.HasSuffix(p, "/rotate")),
		r.Method == http.MethodPut && strings.HasPrefix(p, "/keys/") && strings.Count(p, "/") == 2:
		return throttle.KeyCreate
	case r.Method == http.MethodGet && header(r, "If-None-Match") != "":
		return throttle.Light
	}
	return throttle.Full
}

// throttled answers Key Vault's 429 Throttled, after the decision's
// tarpit: a flooding client that retries at once is slowed, at no CPU
// cost.
func (h *Handler) throttled(w http.ResponseWriter, r *http.Request, d throttle.Decision, flight *throttle.Flight) {
	if d.Tarpit > 0 {
		flight.Done() // a waiting refusal takes no place
		t := time.NewTimer(d.Tarpit)
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	secs := throttle.RetryAfterSeconds(d.RetryAfter)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeErr(w, http.StatusTooManyRequests, "Throttled", "", fmt.Sprintf("Request was not processed because too many requests were received: %s. Retry after %d second(s).", d.Reason, secs))
}

// recheck authenticates a held request again, against the vault as it is
// now: its token may have expired, and the vault's policies, its
// permission model, or the vault itself may have changed meanwhile.
func (h *Handler) recheck(r *http.Request) error {
	c := callOf(r)
	v, err := h.vaults.Get(c.vault.Name)
	if err != nil {
		return err
	}
	p, err := h.authenticate(r, v)
	if err != nil {
		c.audit.Decision = "unauthenticated"
		return err
	}
	c.vault, c.principal = v, p
	return nil
}

// holdSlot takes one of the MaxHeld places for a held read.
func (h *Handler) holdSlot() bool {
	if h.held.Add(1) > MaxHeld {
		h.held.Add(-1)
		return false
	}
	return true
}

func (h *Handler) releaseSlot() { h.held.Add(-1) }

// Held returns how many reads are being held now (at most MaxHeld), for
// the server's coffer_held_reads gauge: how close it is to the cap.
func (h *Handler) Held() int64 { return h.held.Load() }

func (h *Handler) authenticate(r *http.Request, v *vault.Vault) (access.Principal, error) {
	raw, _ := strings.CutPrefix(header(r, "Authorization"), "Bearer ")
	c, err := h.verifier.Verify(strings.TrimSpace(raw), token.Expect{
		Issuer:    h.issuer(v.TenantID),
		Audiences: h.audiences,
		TenantID:  v.TenantID,
	})
	if err != nil {
		return access.Principal{}, err
	}
	return access.Principal{TenantID: c.TenantID, ObjectID: c.ObjectID, AppID: c.AppID}, nil
}

// challenge sets the Bearer challenge the Azure SDKs parse: the authority
// with the vault's tenant, and the resource that is the parent of the
// vault's host.
func (h *Handler) challenge(w http.ResponseWriter, r *http.Request) {
	tenant := ""
	if _, name := h.ep.Parse(r.Host); name != "" {
		if v, err := h.vaults.Get(name); err == nil {
			tenant = v.TenantID
		}
	}
	w.Header().Set("WWW-Authenticate", `Bearer authorization="`+h.ep.AuthorityURL()+"/"+tenant+`", resource="`+h.ep.Resource()+`"`)
}

// drain discards a small unread body so the connection can be reused, and
// gives up on large ones rather than read them for an unauthenticated caller.
func drain(r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, maxEmptyBody))
}
