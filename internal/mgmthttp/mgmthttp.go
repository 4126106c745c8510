// Package mgmthttp serves Coffer's management API under /coffer/v1 on the
// apex host: vaults, service principals and operator actions. It takes
// tokens for the management audience only.
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

	"github.com/cofferhq/coffer/internal/access"
	"github.com/cofferhq/coffer/internal/authority"
	"github.com/cofferhq/coffer/internal/endpoint"
	"github.com/cofferhq/coffer/internal/httpjson"
	"github.com/cofferhq/coffer/internal/rootkey"
	"github.com/cofferhq/coffer/internal/token"
	"github.com/cofferhq/coffer/internal/vault"
)

// Prefix is the path prefix of every management route.
const Prefix = "/coffer/v1/"

const maxBody = 64 << 10

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

// Handler serves the management API.
type Handler struct {
	ep       endpoint.Endpoints
	auth     *authority.Authority
	vaults   *vault.Registry
	operator Operator
	log      *slog.Logger
	mux      *http.ServeMux
}

// New returns the management handler.
func New(ep endpoint.Endpoints, a *authority.Authority, vaults *vault.Registry, op Operator, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{ep: ep, auth: a, vaults: vaults, operator: op, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /coffer/v1/vaults", h.admin(h.listVaults))
	h.mux.HandleFunc("POST /coffer/v1/vaults", h.admin(h.createVault))
	h.mux.HandleFunc("GET /coffer/v1/vaults/{name}", h.admin(h.showVault))
	h.mux.HandleFunc("GET /coffer/v1/service-principals", h.admin(h.listSPs))
	h.mux.HandleFunc("POST /coffer/v1/service-principals", h.admin(h.createSP))
	h.mux.HandleFunc("POST /coffer/v1/service-principals/{appId}/reset-secret", h.admin(h.resetSecret))
	h.mux.HandleFunc("POST /coffer/v1/operator/rotate-root-key", h.admin(h.rotateRootKey))
	h.mux.HandleFunc("POST /coffer/v1/operator/rotate-data-key", h.admin(h.rotateDataKey))
	h.mux.HandleFunc("POST /coffer/v1/operator/rotate-signing-key", h.admin(h.rotateSigningKey))
	h.mux.HandleFunc("/coffer/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "NotFound", "No management operation matches "+r.Method+" "+r.URL.Path+".")
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	var b errBody
	b.Error.Code, b.Error.Message = code, msg
	httpjson.Write(w, status, b)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, vault.ErrInvalid):
		writeErr(w, http.StatusBadRequest, "BadParameter", err.Error())
	case errors.Is(err, vault.ErrExists):
		writeErr(w, http.StatusConflict, "Conflict", err.Error())
	case errors.Is(err, vault.ErrNotFound), errors.Is(err, authority.ErrNotFound):
		writeErr(w, http.StatusNotFound, "NotFound", err.Error())
	default:
		var mbe *http.MaxBytesError
		var se *json.SyntaxError
		var ute *json.UnmarshalTypeError
		var be badRequest
		switch {
		case errors.As(err, &mbe):
			writeErr(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The request body is over the "+strconv.FormatInt(mbe.Limit, 10)+"-byte limit.")
		case errors.As(err, &se), errors.As(err, &ute):
			writeErr(w, http.StatusBadRequest, "BadParameter", "The request body is not valid JSON: "+err.Error())
		case errors.As(err, &be):
			writeErr(w, http.StatusBadRequest, "BadParameter", be.Error())
		default:
			h.log.ErrorContext(r.Context(), "management request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeErr(w, http.StatusInternalServerError, "InternalServerError", "The server could not complete the request; see its log for details.")
		}
	}
}

type badRequest string

func (b badRequest) Error() string { return string(b) }

// admin authenticates the caller and requires an administrator. Fine-grained
// management roles come with RBAC; until then only admins manage.
func (h *Handler) admin(next func(http.ResponseWriter, *http.Request, access.Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		c, err := h.auth.Verifier().Verify(strings.TrimSpace(raw), token.Expect{
			Audiences: []string{endpoint.ManagementResource},
			IssuerFor: h.auth.Issuer,
		})
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="`+h.ep.AuthorityURL()+`", resource="`+endpoint.ManagementResource+`"`)
			writeErr(w, http.StatusUnauthorized, "Unauthorized", err.Error())
			return
		}
		p := access.Principal{TenantID: c.TenantID, ObjectID: c.ObjectID, AppID: c.AppID}
		sp, err := h.auth.ServicePrincipalByObjectID(r.Context(), c.TenantID, c.ObjectID)
		if err != nil || !sp.Admin {
			writeErr(w, http.StatusForbidden, "Forbidden", "The application '"+p.String()+"' is not an administrator of tenant "+c.TenantID+"; management operations need an administrator.")
			return
		}
		next(w, r, p)
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return nil
	}
	return json.Unmarshal(body, v)
}

// VaultOut is a vault as the management API shows it.
type VaultOut struct {
	vault.Vault
	VaultURI      string `json:"vaultUri"`
	RecoveryLevel string `json:"recoveryLevel"`
}

func (h *Handler) vaultOut(v vault.Vault) VaultOut {
	return VaultOut{Vault: v, VaultURI: h.ep.VaultURL(v.Name), RecoveryLevel: v.RecoveryLevel()}
}

func (h *Handler) listVaults(w http.ResponseWriter, r *http.Request, p access.Principal) {
	out := []VaultOut{}
	for _, v := range h.vaults.List(p.TenantID) {
		out = append(out, h.vaultOut(v))
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"value": out})
}

// CreateVaultIn is the body of a vault creation.
type CreateVaultIn struct {
	Name            string `json:"name"`
	RetentionDays   int    `json:"softDeleteRetentionInDays"`
	PurgeProtection bool   `json:"enablePurgeProtection"`
	EnforceValidity bool   `json:"enforceSecretValidity"`
}

func (h *Handler) createVault(w http.ResponseWriter, r *http.Request, p access.Principal) {
	var in CreateVaultIn
	if err := readJSON(w, r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	v, err := h.vaults.Create(r.Context(), vault.Vault{
		Name: in.Name, TenantID: p.TenantID, CreatedBy: p.ObjectID,
		RetentionDays: in.RetentionDays, PurgeProtection: in.PurgeProtection, EnforceValidity: in.EnforceValidity,
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, h.vaultOut(v))
}

func (h *Handler) showVault(w http.ResponseWriter, r *http.Request, p access.Principal) {
	v, err := h.vaults.Get(r.PathValue("name"))
	if err != nil || v.TenantID != p.TenantID {
		h.fail(w, r, vault.ErrNotFound)
		return
	}
	httpjson.Write(w, http.StatusOK, h.vaultOut(*v))
}

// SPOut is a service principal as the management API shows it. Password is
// set only when a secret was just created.
type SPOut struct {
	AppID       string `json:"appId"`
	ObjectID    string `json:"objectId"`
	DisplayName string `json:"displayName"`
	Tenant      string `json:"tenant"`
	Admin       bool   `json:"admin,omitempty"`
	Password    string `json:"password,omitempty"`
}

func spOut(sp authority.ServicePrincipal, password string) SPOut {
	return SPOut{AppID: sp.AppID, ObjectID: sp.ObjectID, DisplayName: sp.DisplayName, Tenant: sp.TenantID, Admin: sp.Admin, Password: password}
}

func (h *Handler) listSPs(w http.ResponseWriter, r *http.Request, p access.Principal) {
	sps, err := h.auth.ListServicePrincipals(r.Context(), p.TenantID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []SPOut{}
	for _, sp := range sps {
		out = append(out, spOut(sp, ""))
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"value": out})
}

// CreateSPIn is the body of a service principal creation.
type CreateSPIn struct {
	DisplayName string `json:"displayName"`
}

func (h *Handler) createSP(w http.ResponseWriter, r *http.Request, p access.Principal) {
	var in CreateSPIn
	if err := readJSON(w, r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	sp, secret, err := h.auth.CreateServicePrincipal(r.Context(), p.TenantID, in.DisplayName, false)
	if err != nil {
		h.fail(w, r, badRequest(err.Error()))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, http.StatusCreated, spOut(sp, secret))
}

func (h *Handler) resetSecret(w http.ResponseWriter, r *http.Request, p access.Principal) {
	secret, err := h.auth.AddClientSecret(r.Context(), p.TenantID, r.PathValue("appId"), true)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sp, err := h.auth.ServicePrincipal(r.Context(), p.TenantID, r.PathValue("appId"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, http.StatusOK, spOut(sp, secret))
}

// RotateRootKeyIn optionally carries the new root key, base64, for servers
// that read their root key from the environment.
type RotateRootKeyIn struct {
	NewRootKey string `json:"newRootKey,omitempty"`
}

func (h *Handler) rotateRootKey(w http.ResponseWriter, r *http.Request, _ access.Principal) {
	var in RotateRootKeyIn
	if err := readJSON(w, r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	var provided *rootkey.Key
	if in.NewRootKey != "" {
		k, err := rootkey.Parse(in.NewRootKey)
		if err != nil {
			h.fail(w, r, badRequest("newRootKey: "+err.Error()))
			return
		}
		provided = &k
	}
	out, err := h.operator.RotateRootKey(r.Context(), provided)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (h *Handler) rotateDataKey(w http.ResponseWriter, r *http.Request, _ access.Principal) {
	term, err := h.operator.RotateDataKey(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"activeTerm": term})
}

func (h *Handler) rotateSigningKey(w http.ResponseWriter, r *http.Request, _ access.Principal) {
	kid, err := h.auth.RotateSigningKey(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"kid": kid})
}

// BadRequest wraps a message as a 400 for Operator implementations.
func BadRequest(msg string) error { return badRequest(msg) }
