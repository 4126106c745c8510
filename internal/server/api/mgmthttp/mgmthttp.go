// Package mgmthttp serves Coffer's management API under /coffer/v1 on the
// apex host: vaults, their access policies and event subscriptions, service principals, managed
// identities and federated credentials, node pools, role assignments, and
// operator actions; and the few Azure Resource Manager routes the Azure CLI
// signs in with (/metadata/endpoints, /subscriptions). It takes tokens for
// the management audience only, and every operation checks its own RBAC
// action at its own scope.
package mgmthttp

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/events"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// Prefix is the path prefix of every management route.
const Prefix = "/coffer/v1/"

const maxBody = 64 << 10

// ActionOperator covers installation-wide key operations; only Owner holds it.
const ActionOperator = "Coffer.Operator/keys/action"

// actionDirectoryRead lists the directory's principals.
const actionDirectoryRead = "Microsoft.Directory/servicePrincipals/read"

// RootKeyRotation reports a finished root key rotation.
type RootKeyRotation struct {
	RootKeyID string `json:"rootKeyId"`
	// FromEnv is set when the server reads its root key from the environment
	// and so could not persist the new key itself.
	FromEnv bool `json:"fromEnv"`
}

// Operator performs installation-wide key operations.
type Operator interface {
	// RotateRootKey re-wraps the data keys with a new root key: provided, or
	// one the server generates when it owns a root key file.
	RotateRootKey(ctx context.Context, provided *rootkey.Key) (RootKeyRotation, error)
	RotateDataKey(ctx context.Context) (uint32, error)
}

// Deps are the services the handler calls.
type Deps struct {
	Endpoints endpoint.Endpoints
	Authority *authority.Authority
	Vaults    *vault.Registry
	Roles     *rbac.Assignments
	Access    *access.Authorizer
	Operator  Operator
	Events    *events.Service
	Log       *slog.Logger
}

// Handler serves the management API.
type Handler struct {
	Deps
	mux *http.ServeMux
}

// New returns the management handler.
func New(d Deps) *Handler {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	h := &Handler{Deps: d, mux: http.NewServeMux()}
	route := func(pattern string, fn http.HandlerFunc) { h.mux.HandleFunc(pattern, fn) }
	route("GET /coffer/v1/vaults", handle(h, http.StatusOK, h.listVaults))
	route("POST /coffer/v1/vaults", handle(h, http.StatusCreated, h.createVault))
	route("GET /coffer/v1/vaults/{name}", handle(h, http.StatusOK, h.showVault))
	route("PATCH /coffer/v1/vaults/{name}", handle(h, http.StatusOK, h.updateVault))
	route("POST /coffer/v1/vaults/{name}/set-policy", handle(h, http.StatusOK, h.setPolicy))
	route("POST /coffer/v1/vaults/{name}/delete-policy", handle(h, http.StatusOK, h.deletePolicy))
	route("GET /coffer/v1/vaults/{name}/event-subscriptions", handle(h, http.StatusOK, h.listEventSubs))
	route("PUT /coffer/v1/vaults/{name}/event-subscriptions/{sub}", handle(h, http.StatusCreated, h.createEventSub))
	route("GET /coffer/v1/vaults/{name}/event-subscriptions/{sub}", handle(h, http.StatusOK, h.showEventSub))
	route("DELETE /coffer/v1/vaults/{name}/event-subscriptions/{sub}", handle(h, http.StatusNoContent, h.deleteEventSub))
	route("GET /coffer/v1/service-principals", handle(h, http.StatusOK, h.listSPs))
	route("POST /coffer/v1/service-principals", handle(h, http.StatusCreated, h.createSP))
	route("POST /coffer/v1/service-principals/{appId}/credentials", handle(h, http.StatusOK, h.resetCredentials))
	route("GET /coffer/v1/identities", handle(h, http.StatusOK, h.listIdentities))
	route("POST /coffer/v1/identities", handle(h, http.StatusCreated, h.createIdentity))
	route("GET /coffer/v1/identities/{rg}/{name}", handle(h, http.StatusOK, h.showIdentity))
	route("GET /coffer/v1/identities/{rg}/{name}/federated-credentials", handle(h, http.StatusOK, h.listFederated))
	route("PUT /coffer/v1/identities/{rg}/{name}/federated-credentials/{cred}", handle(h, http.StatusOK, h.putFederated))
	route("DELETE /coffer/v1/identities/{rg}/{name}/federated-credentials/{cred}", handle(h, http.StatusNoContent, h.deleteFederated))
	route("POST /coffer/v1/node-pools", handle(h, http.StatusCreated, h.createNodePool))
	route("POST /coffer/v1/node-pools/{rg}/{name}/identities", handle(h, http.StatusOK, h.assignNodePoolIdentities))
	route("GET /coffer/v1/role-assignments", handle(h, http.StatusOK, h.listAssignments))
	route("POST /coffer/v1/role-assignments", handle(h, http.StatusCreated, h.createAssignment))
	route("DELETE /coffer/v1/role-assignments/{id}", handle(h, http.StatusNoContent, h.deleteAssignment))
	route("GET /coffer/v1/role-definitions", handle(h, http.StatusOK, h.listRoles))
	route("POST /coffer/v1/role-definitions", handle(h, http.StatusCreated, h.createRole))
	route("POST /coffer/v1/operator/rotate-root-key", handle(h, http.StatusOK, h.rotateRootKey))
	route("POST /coffer/v1/operator/rotate-data-key", handle(h, http.StatusOK, h.rotateDataKey))
	route("POST /coffer/v1/operator/rotate-signing-key", handle(h, http.StatusOK, h.rotateSigningKey))
	h.armRoutes()
	h.mux.HandleFunc("/coffer/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "NotFound", "No management operation matches "+r.Method+" "+r.URL.Path+".")
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// writeErr sends an error in Azure's shape, as ARM answers.
func writeErr(w http.ResponseWriter, status int, code, msg string) {
	azerror.Write(w, status, code, "", msg)
}

// badRequest is a client error with a message that says what to fix.
type badRequest string

func (b badRequest) Error() string { return string(b) }

// BadRequest wraps a message as a 400 for Operator implementations.
func BadRequest(msg string) error { return badRequest(msg) }

// fail converts an error to the wire form, once, at the boundary.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var (
		de  *access.DeniedError
		mbe *http.MaxBytesError
		be  *bodyError
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
		br  badRequest
		snf *subscriptionNotFound
	)
	if sf, ok := httpjson.Storage(err); ok {
		if sf.RetryAfter {
			w.Header().Set("Retry-After", "1")
		}
		h.storageFailed(r, err)
		writeErr(w, sf.Status, sf.Code, sf.Message)
		return
	}
	switch {
	case errors.As(err, &snf):
		writeErr(w, http.StatusNotFound, "SubscriptionNotFound", snf.Error())
	case errors.As(err, &de):
		audit.From(r.Context()).Decision = "deny"
		writeErr(w, http.StatusForbidden, "AuthorizationFailed", de.Error())
	case errors.Is(err, vault.ErrInvalid), errors.Is(err, events.ErrInvalid), errors.Is(err, authority.ErrInvalid), errors.Is(err, authority.ErrAmbiguous), errors.As(err, &br):
		writeErr(w, http.StatusBadRequest, "BadParameter", err.Error())
	case errors.Is(err, rbac.ErrInvalidRole):
		writeErr(w, http.StatusBadRequest, "BadParameter", err.Error())
	case errors.Is(err, vault.ErrExists), errors.Is(err, events.ErrExists), errors.Is(err, authority.ErrExists), errors.Is(err, rbac.ErrExists):
		writeErr(w, http.StatusConflict, "Conflict", err.Error())
	case errors.Is(err, vault.ErrNotFound), errors.Is(err, events.ErrNotFound), errors.Is(err, authority.ErrNotFound), errors.Is(err, rbac.ErrNotFound):
		writeErr(w, http.StatusNotFound, "NotFound", err.Error())
	case errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The request body is over the "+strconv.FormatInt(mbe.Limit, 10)+"-byte limit.")
	case errors.As(err, &be) && errors.As(be.err, &ute):
		writeErr(w, http.StatusBadRequest, "BadParameter", "The request body's field '"+ute.Field+"' must not be a JSON "+ute.Value+".")
	case errors.As(err, &be) && errors.As(be.err, &se):
		writeErr(w, http.StatusBadRequest, "BadParameter", "The request body is not valid JSON: "+se.Error()+".")
	case errors.As(err, &be):
		writeErr(w, http.StatusBadRequest, "BadParameter", "The request body does not parse: "+be.err.Error()+".")
	default:
		h.Log.ErrorContext(r.Context(), "management request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusInternalServerError, "InternalServerError", "The server could not complete the request; see its log for details.")
	}
}

// none is the body of operations that take none.
type none struct{}

// list wraps a collection the way Azure lists do.
func list[T any](items []T) map[string]any {
	if items == nil {
		items = []T{}
	}
	return map[string]any{"value": items}
}

// handle adapts an operation: it authenticates the caller, decodes the JSON
// body (capped) into In, runs fn, and writes its result with status, or
// converts its error. Every answer is marked no-store: some carry
// credentials, and none should sit in a cache.
func handle[In any](h *Handler, status int, fn func(r *http.Request, p access.Principal, in In) (any, error)) http.HandlerFunc {
	return h.authenticated(func(w http.ResponseWriter, r *http.Request, p access.Principal) {
		w.Header().Set("Cache-Control", "no-store")
		var in In
		if err := readJSON(w, r, &in); err != nil {
			h.fail(w, r, err)
			return
		}
		out, err := fn(r, p, in)
		switch {
		case err != nil:
			h.fail(w, r, err)
		case status == http.StatusNoContent:
			w.WriteHeader(status)
		default:
			httpjson.Write(w, status, out)
		}
	})
}

// authenticated verifies the management token and records the caller for
// the audit log; each operation then authorizes its own action.
func (h *Handler) authenticated(next func(http.ResponseWriter, *http.Request, access.Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		info := audit.From(r.Context())
		raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		c, err := h.Authority.Verifier().Verify(strings.TrimSpace(raw), token.Expect{
			Audiences: []string{endpoint.ManagementResource},
			IssuerFor: h.Authority.Issuer,
		})
		if err != nil {
			info.Decision = "unauthenticated"
			w.Header().Set("WWW-Authenticate", `Bearer authorization="`+h.Endpoints.AuthorityURL()+`", resource="`+endpoint.ManagementResource+`"`)
			writeErr(w, http.StatusUnauthorized, "Unauthorized", err.Error())
			return
		}
		info.Tenant, info.Principal, info.AppID = c.TenantID, c.ObjectID, c.AppID
		next(w, r, access.Principal{TenantID: c.TenantID, ObjectID: c.ObjectID, AppID: c.AppID})
	}
}

// authorize checks a management action at a scope, recording it for audit.
func (h *Handler) authorize(r *http.Request, p access.Principal, action, scope string) error {
	info := audit.From(r.Context())
	info.Operation, info.Object = action, scope
	if err := h.Access.Manage(p, action, scope); err != nil {
		info.Decision = "deny"
		return err
	}
	info.Decision = "allow"
	return nil
}

// bodyError is a request body that is not JSON of the operation's shape.
// It marks the one place a JSON error is the client's: the services
// return the same errors for stored records that do not decode, and those
// are the server's.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &bodyError{err}
	}
	return nil
}

// subscription returns the caller's tenant subscription.
func (h *Handler) subscription(ctx context.Context, p access.Principal) (string, error) {
	t, err := h.Authority.Tenant(ctx, p.TenantID)
	return t.SubscriptionID, err
}

// storageFailed logs a store failure once, at warn: an operator must see
// a full disk or an unreachable etcd.
func (h *Handler) storageFailed(r *http.Request, err error) {
	h.Log.WarnContext(r.Context(), "request refused: storage", "method", r.Method, "path", r.URL.Path, "err", err)
}
