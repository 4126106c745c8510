// Package authhttp serves the authority's OAuth2 and OpenID endpoints in
// Entra ID's shapes: /{tenant}/oauth2/v2.0/token, OpenID discovery, JWKS and
// instance discovery, and the ADFS-style discovery document of the default
// tenant that the Azure CLI's MSAL reads.
package authhttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
)

// maxFormBytes bounds a token request; a certificate-signed client assertion
// is a few kilobytes.
const maxFormBytes = 64 << 10

// DefaultTenant returns the installation's default tenant: the one an
// authority URL without a tenant (ADFS style, {host}/adfs) signs in to.
type DefaultTenant func(ctx context.Context) (string, error)

// Handler serves the authority's endpoints on the apex host.
type Handler struct {
	a             *authority.Authority
	defaultTenant DefaultTenant
	log           *slog.Logger
	mux           *http.ServeMux
}

// New returns the authority handler. defaultTenant may be nil: the ADFS
// discovery document then answers 404.
func New(a *authority.Authority, defaultTenant DefaultTenant, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{a: a, defaultTenant: defaultTenant, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", h.token)
	h.mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", h.openidConfig)
	// The Azure CLI (MSAL) skips instance discovery, which would call the
	// public cloud, only for an authority whose first path segment is
	// "adfs". It then reads this document and takes the tenant from the
	// token endpoint's first path segment, so the default tenant's
	// endpoints serve it unchanged.
	h.mux.HandleFunc("GET /adfs/.well-known/openid-configuration", h.adfsConfig)
	h.mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", h.jwks)
	h.mux.HandleFunc("GET /common/discovery/instance", h.instance)
	h.mux.HandleFunc("GET /{tenant}/oauth2/v2.0/authorize", func(w http.ResponseWriter, r *http.Request) {
		h.oauthError(w, &authority.OAuthError{Status: http.StatusBadRequest, Code: "unsupported_response_type", AADSTS: 70003,
			Description: "Coffer issues application tokens only; interactive sign-in is not supported."})
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Handles reports whether the handler has a route for r, so the server can
// send other apex paths elsewhere. A path that is not in its clean form
// (//{tenant}/oauth2/v2.0/token) is not the authority's: the mux would
// answer it with a redirect, which a token POST cannot follow, rather than
// with an error the client can read.
func (h *Handler) Handles(r *http.Request) bool {
	_, pattern := h.mux.Handler(r)
	p := r.URL.Path
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return pattern != "" && clean == p
}

type oauthErrorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
}

func (h *Handler) oauthError(w http.ResponseWriter, e *authority.OAuthError) {
	trace := authority.NewGUID()
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(e.RetryAfter))
	}
	now := time.Now().UTC().Format("2006-01-02 15:04:05Z")
	if e.Detail != "" {
		h.log.Info("token request refused", "aadsts", e.AADSTS, "trace", trace, "detail", e.Detail)
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, e.Status, oauthErrorBody{
		Error:            e.Code,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", e.AADSTS, e.Description, trace, trace, now),
		ErrorCodes:       []int{e.AADSTS},
		Timestamp:        now,
		TraceID:          trace,
		CorrelationID:    trace,
	})
}

func (h *Handler) token(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		h.oauthError(w, &authority.OAuthError{Status: http.StatusBadRequest, Code: "invalid_request", AADSTS: 900144,
			Description: "The token request must be a form post (Content-Type: application/x-www-form-urlencoded)."})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		msg := "The request body is not a valid form."
		status := http.StatusBadRequest
		if errors.As(err, &mbe) {
			msg = fmt.Sprintf("The request body is over the %d-byte limit.", maxFormBytes)
			status = http.StatusRequestEntityTooLarge
		}
		h.oauthError(w, &authority.OAuthError{Status: status, Code: "invalid_request", AADSTS: 900144, Description: msg})
		return
	}
	f := r.PostForm
	info := audit.From(r.Context())
	info.Operation, info.Tenant, info.AppID = "oauth2/token", r.PathValue("tenant"), f.Get("client_id")
	resp, err := h.a.Token(r.Context(), authority.TokenRequest{
		Tenant:              r.PathValue("tenant"),
		GrantType:           f.Get("grant_type"),
		ClientID:            f.Get("client_id"),
		ClientSecret:        f.Get("client_secret"),
		ClientAssertionType: f.Get("client_assertion_type"),
		ClientAssertion:     f.Get("client_assertion"),
		Scope:               f.Get("scope"),
		ActFor:              authority.Selector{ClientID: f.Get("mi_client_id"), ObjectID: f.Get("mi_object_id"), ResourceID: f.Get("mi_res_id")},
	})
	var oe *authority.OAuthError
	switch {
	case errors.As(err, &oe):
		info.Decision = "deny"
		h.oauthError(w, oe)
		return
	case err != nil:
		h.log.ErrorContext(r.Context(), "token grant failed", "err", err)
		h.oauthError(w, &authority.OAuthError{Status: http.StatusInternalServerError, Code: "temporarily_unavailable", AADSTS: 50000,
			Description: "There was an error issuing a token; see the server log."})
		return
	}
	info.Decision, info.Principal, info.Object = "allow", resp.Subject.ObjectID, resp.Resource
	if resp.Subject.ResourceID != "" {
		info.Object = resp.Subject.ResourceID + " -> " + resp.Resource
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	httpjson.Write(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     resp.ExpiresIn,
		"ext_expires_in": resp.ExpiresIn,
		"access_token":   resp.AccessToken,
	})
}

func (h *Handler) tenantOK(w http.ResponseWriter, r *http.Request) (string, bool) {
	tenant := strings.ToLower(r.PathValue("tenant"))
	if _, err := h.a.Tenant(r.Context(), tenant); err != nil || !authority.IsGUID(tenant) {
		h.oauthError(w, &authority.OAuthError{Status: http.StatusBadRequest, Code: "invalid_tenant", AADSTS: 90002,
			Description: fmt.Sprintf("Tenant '%s' not found.", r.PathValue("tenant"))})
		return "", false
	}
	return tenant, true
}

func (h *Handler) openidConfig(w http.ResponseWriter, r *http.Request) {
	tenant, ok := h.tenantOK(w, r)
	if !ok {
		return
	}
	httpjson.Write(w, http.StatusOK, h.discovery(tenant))
}

// adfsConfig serves the default tenant's discovery document at the path
// MSAL derives from an ADFS authority ({host}/adfs).
func (h *Handler) adfsConfig(w http.ResponseWriter, r *http.Request) {
	if h.defaultTenant == nil {
		h.oauthError(w, &authority.OAuthError{Status: http.StatusNotFound, Code: "invalid_tenant", AADSTS: 90002,
			Description: "This installation has no default tenant; use https://{host}/{tenant} as the authority."})
		return
	}
	tenant, err := h.defaultTenant(r.Context())
	if errors.Is(err, authority.ErrNotFound) {
		h.oauthError(w, &authority.OAuthError{Status: http.StatusNotFound, Code: "invalid_tenant", AADSTS: 90002,
			Description: "This installation has no default tenant yet (run `coffer operator init`)."})
		return
	}
	if err != nil {
		h.log.ErrorContext(r.Context(), "default tenant lookup failed", "err", err)
		h.oauthError(w, &authority.OAuthError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", AADSTS: 50000,
			Description: "The default tenant could not be read; see the server log.", RetryAfter: 5})
		return
	}
	httpjson.Write(w, http.StatusOK, h.discovery(tenant))
}

// discovery is a tenant's OpenID configuration.
func (h *Handler) discovery(tenant string) map[string]any {
	base := h.a.Host() + "/" + tenant
	return map[string]any{
		"issuer":                                h.a.Issuer(tenant),
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"},
		"response_types_supported":              []string{"token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"grant_types_supported":                 []string{"client_credentials"},
		"tenant_region_scope":                   nil,
		"cloud_instance_name":                   strings.TrimPrefix(h.a.Host(), "https://"),
	}
}

func (h *Handler) jwks(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.tenantOK(w, r); !ok {
		return
	}
	w.Header().Set("Cache-Control", "max-age=300")
	httpjson.Write(w, http.StatusOK, h.a.JWKS())
}

// instance answers MSAL's instance discovery for this authority, for clients
// that cannot turn it off.
func (h *Handler) instance(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(h.a.Host(), "https://")
	ae := r.URL.Query().Get("authorization_endpoint")
	tenant := "common"
	if parts := strings.Split(strings.TrimPrefix(ae, "https://"), "/"); len(parts) > 1 && parts[1] != "" {
		tenant = parts[1]
	}
	httpjson.Write(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": h.a.Host() + "/" + tenant + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host,
			"preferred_cache":   host,
			"aliases":           []string{host},
		}},
	})
}
