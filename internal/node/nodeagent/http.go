package nodeagent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
)

// The paths, matched without regard to case as IMDS does.
const (
	imdsTokenPath       = "/metadata/identity/oauth2/token"
	appServiceTokenPath = "/msi/token"
	// AppServiceAPIVersion is the App Service protocol version served.
	AppServiceAPIVersion = "2019-08-01"
)

var apiVersionRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)

// Handler serves the IMDS token endpoint and the App Service protocol, for
// pods and the node. Nothing is ever proxied: other /metadata paths answer
// 404.
func (a *Agent) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.ToLower(strings.TrimSuffix(r.URL.Path, "/"))
		switch {
		case path == imdsTokenPath || path == appServiceTokenPath:
			// Limited per pod before any work, so that a flooding pod
			// is refused cheaply and the others are still served.
			release, f := a.pods.admit(r)
			if f != nil {
				a.refuseFlood(w, r, path, f)
				return
			}
			defer release()
			if path == imdsTokenPath {
				a.serveIMDS(w, r)
			} else {
				a.serveAppService(w, r)
			}
		case path == "/healthz":
			a.serveHealth(w)
		case strings.HasPrefix(path, "/metadata"):
			writeError(w, fail(http.StatusNotFound, "not_found", "the node agent serves only %s from the instance metadata service; %s is not available here", imdsTokenPath, r.URL.Path))
		default:
			writeError(w, fail(http.StatusNotFound, "not_found", "no such endpoint: %s", r.URL.Path))
		}
	})
}

func (a *Agent) serveHealth(w http.ResponseWriter) {
	if !a.cfg.Cluster.Synced() {
		http.Error(w, "caches not synced", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok"))
}

// preflight checks what every token request needs, and reads the query.
func preflight(r *http.Request) (Request, error) {
	if r.Method != http.MethodGet {
		return Request{}, fail(http.StatusMethodNotAllowed, "invalid_request", "use GET, not %s", r.Method)
	}
	// IMDS refuses forwarded requests: a server-side request forgery
	// through a proxy must not reach it.
	if r.Header.Get("X-Forwarded-For") != "" {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "requests with an X-Forwarded-For header are refused: call the endpoint directly")
	}
	q := r.URL.Query()
	for name, vs := range q {
		if len(vs) > 1 {
			return Request{}, fail(http.StatusBadRequest, "invalid_request", "query parameter %s is repeated", name)
		}
	}
	v := q.Get("api-version")
	if v == "" {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "api-version is required, such as api-version=2018-02-01")
	}
	if !apiVersionRE.MatchString(v) {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "api-version %q is not a date such as 2018-02-01", v)
	}
	res := strings.TrimSuffix(strings.TrimSpace(q.Get("resource")), "/.default")
	if res == "" {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "resource is required: the audience of the token, such as resource=https://vault.example.com")
	}
	if len(res) > 1024 {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "resource is longer than 1024 characters")
	}
	var sel authclient.Selector
	set := 0
	for _, p := range []struct {
		name string
		dst  *string
	}{{"client_id", &sel.ClientID}, {"object_id", &sel.ObjectID}, {"principal_id", &sel.ObjectID}, {"msi_res_id", &sel.ResourceID}, {"mi_res_id", &sel.ResourceID}} {
		if v := q.Get(p.name); v != "" {
			*p.dst = v
			set++
		}
	}
	if set > 1 {
		return Request{}, fail(http.StatusBadRequest, "invalid_request", "select the identity with one of client_id, object_id and msi_res_id (mi_res_id), not %d of them", set)
	}
	return Request{Resource: res, Select: sel}, nil
}

func (a *Agent) serveIMDS(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, err := preflight(r)
	if err == nil && !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		err = fail(http.StatusBadRequest, "invalid_request", "Required metadata header not specified: send Metadata: true")
	}
	var g Grant
	var c Caller
	if err == nil {
		c, err = a.callerFromRequest(r.Context(), r, bearer(r.Header.Get("Authorization")))
	}
	if err == nil {
		g, err = a.Token(r.Context(), c, req)
	}
	a.finish(w, "imds", c, req, start, err)
	if err == nil {
		writeJSON(w, http.StatusOK, imdsBody(g))
	}
}

// serveAppService answers the App Service protocol (IDENTITY_ENDPOINT with
// X-IDENTITY-HEADER). The header is either the node's shared secret, and
// then the caller is found as for IMDS, or the pod's service-account
// token, which proves the pod by itself.
func (a *Agent) serveAppService(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, err := preflight(r)
	hdr := r.Header.Get("X-IDENTITY-HEADER")
	if err == nil && r.URL.Query().Get("api-version") != AppServiceAPIVersion {
		err = fail(http.StatusBadRequest, "invalid_request", "the App Service endpoint serves api-version=%s", AppServiceAPIVersion)
	}
	if err == nil && hdr == "" {
		err = fail(http.StatusBadRequest, "invalid_request", "X-IDENTITY-HEADER is required")
	}
	var c Caller
	var g Grant
	if err == nil {
		switch {
		case a.cfg.IdentityHeader != "" && subtle.ConstantTimeCompare([]byte(hdr), []byte(a.cfg.IdentityHeader)) == 1:
			c, err = a.callerFromRequest(r.Context(), r, bearer(r.Header.Get("Authorization")))
		case strings.Count(hdr, ".") == 2:
			if err = a.synced(); err == nil {
				c, err = a.callerFromToken(r.Context(), hdr, a.cfg.TokenAudiences, "service-account token")
			}
		default:
			err = fail(http.StatusUnauthorized, "unauthorized_client", "X-IDENTITY-HEADER is neither the node's identity header nor a service-account token")
		}
	}
	if err == nil {
		g, err = a.Token(r.Context(), c, req)
	}
	a.finish(w, "appservice", c, req, start, err)
	if err == nil {
		writeJSON(w, http.StatusOK, map[string]string{
			"access_token": g.Token.Value, "expires_on": strconv.FormatInt(g.Token.Expires.Unix(), 10),
			"resource": g.Resource, "token_type": "Bearer", "client_id": g.ClientID,
		})
	}
}

// finish logs and counts a request, and writes its error. Neither the log
// nor the error carries a token.
func (a *Agent) finish(w http.ResponseWriter, endpoint string, c Caller, req Request, start time.Time, err error) {
	code := http.StatusOK
	if err != nil {
		f := asFailure(err)
		code = f.Status
		writeError(w, f)
		attrs := []any{"endpoint", endpoint, "caller", c.String(), "resource", req.Resource, "status", code, "reason", f.Message}
		if f.cause != nil {
			attrs = append(attrs, "error", f.cause.Error())
		}
		a.cfg.Log.Info("token request refused", attrs...)
	} else {
		a.cfg.Log.Debug("token issued", "endpoint", endpoint, "caller", c.String(), "resource", req.Resource)
	}
	a.metrics.observe(endpoint, code, time.Since(start))
}

// refuseFlood answers a request over its pod's limit. It is counted but
// logged at debug only: a flood would otherwise flood the log too.
func (a *Agent) refuseFlood(w http.ResponseWriter, r *http.Request, path string, f *Failure) {
	endpoint := "imds"
	if path == appServiceTokenPath {
		endpoint = "appservice"
	}
	writeError(w, f)
	a.cfg.Log.Debug("token request refused: over the pod's limit", "endpoint", endpoint, "source", r.RemoteAddr, "reason", f.Message)
	a.metrics.observe(endpoint, f.Status, 0)
}

// asFailure is err as the wire shows it: a Failure as it is, anything
// else as a fixed message, with err kept for the log.
func asFailure(err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return notReady(http.StatusServiceUnavailable, msgTimeout).because(err)
	}
	return fail(http.StatusInternalServerError, "internal_error", msgInternal).because(err)
}

func bearer(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// imdsBody is IMDS's answer: every field a string.
func imdsBody(g Grant) map[string]string {
	now := time.Now().Unix()
	exp := g.Token.Expires.Unix()
	nbf := g.Token.Claims.NotBefore
	if nbf == 0 {
		nbf = now
	}
	in := strconv.FormatInt(max(exp-now, 0), 10)
	return map[string]string{
		"access_token": g.Token.Value, "client_id": g.ClientID,
		"expires_in": in, "ext_expires_in": in, "expires_on": strconv.FormatInt(exp, 10),
		"not_before": strconv.FormatInt(nbf, 10), "resource": g.Resource, "token_type": "Bearer",
	}
}

func writeError(w http.ResponseWriter, f *Failure) {
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(max(f.RetryAfter.Round(time.Second), time.Second)/time.Second)))
	}
	writeJSON(w, f.Status, map[string]string{"error": f.Code, "error_description": f.Message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Serve answers token requests on imds (IMDS and App Service) and, if
// local is not nil, the provider's requests on local, until ctx ends.
func (a *Agent) Serve(ctx context.Context, imds, local net.Listener) error {
	servers := []*http.Server{{Handler: http.MaxBytesHandler(a.Handler(), 64<<10), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}}
	lns := []net.Listener{imds}
	if local != nil {
		servers = append(servers, &http.Server{Handler: http.MaxBytesHandler(a.LocalHandler(), 64<<10), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second})
		lns = append(lns, local)
	}
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.Serve(lns[i]) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(sctx)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
