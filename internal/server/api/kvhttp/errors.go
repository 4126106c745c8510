package kvhttp

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// writeErr sends a Key Vault error response.
func writeErr(w http.ResponseWriter, status int, code, inner, msg string) {
	azerror.Write(w, status, code, inner, msg)
}

// notFoundCode is the Azure code for a missing object of each kind.
var notFoundCode = map[access.Kind]string{
	access.Secrets:      "SecretNotFound",
	access.Keys:         "KeyNotFound",
	access.Certificates: "CertificateNotFound",
}

// fail converts any error into Key Vault's wire form, once, at the boundary.
// Unexpected errors become a 500 with a generic message and are logged; their
// text never reaches the client.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, kind access.Kind, err error) {
	var (
		oe  *object.Error
		de  *access.DeniedError
		te  *token.Error
		mbe *http.MaxBytesError
		be  *bodyError
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
	)
	if sf, ok := httpjson.Storage(err); ok {
		if sf.RetryAfter {
			w.Header().Set("Retry-After", "1")
		}
		h.storageFailed(r, err)
		writeErr(w, sf.Status, sf.Code, "", sf.Message)
		return
	}
	switch {
	case errors.As(err, &te):
		h.challenge(w, r)
		writeErr(w, http.StatusUnauthorized, "Unauthorized", "", te.Error())
	case errors.As(err, &de):
		inner := "AccessDenied"
		if de.RBAC {
			inner = "ForbiddenByRbac"
		}
		writeErr(w, http.StatusForbidden, "Forbidden", inner, de.Error())
	case errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "", "The request body is larger than the "+strconv.FormatInt(mbe.Limit, 10)+"-byte limit for this operation.")
	case errors.As(err, &be) && errors.As(be.err, &ute):
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The request body's field '"+ute.Field+"' must not be a JSON "+ute.Value+".")
	case errors.As(err, &be) && errors.As(be.err, &se):
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The request body is not valid JSON: "+se.Error()+".")
	case errors.As(err, &oe):
		status, code := objectStatus(oe.Kind, kind)
		if oe.Code != "" {
			code = oe.Code
		}
		writeErr(w, status, code, oe.Inner, oe.Message)
	case errors.Is(err, object.ErrNotFound):
		writeErr(w, http.StatusNotFound, notFoundCode[kind], "", "The object was not found in this key vault.")
	case errors.Is(err, vault.ErrNotFound):
		name := vaultName(r.Host, h.ep)
		writeErr(w, http.StatusNotFound, "VaultNotFound", "", "Vault "+name+" does not exist on this server: create it with `coffer vault create --name "+name+"`, or check the vault URL.")
	case errors.Is(err, object.ErrBusy):
		w.Header().Set("Retry-After", "1")
		writeErr(w, http.StatusTooManyRequests, "Throttled", "", "The object is being changed by many requests at once; retry after 1 second.")
	default:
		h.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusInternalServerError, "InternalServerError", "", "The server could not complete the request; see its log for details.")
	}
}

func vaultName(host string, ep endpoint.Endpoints) string {
	_, name := ep.Parse(host)
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

func objectStatus(sentinel error, kind access.Kind) (int, string) {
	switch sentinel {
	case object.ErrNotFound:
		return http.StatusNotFound, notFoundCode[kind]
	case object.ErrDeleted, object.ErrExists:
		return http.StatusConflict, "Conflict"
	case object.ErrInvalid:
		return http.StatusBadRequest, "BadParameter"
	case object.ErrForbidden:
		return http.StatusForbidden, "Forbidden"
	case object.ErrBusy:
		return http.StatusTooManyRequests, "Throttled"
	}
	slog.Warn("unmapped object error kind", "kind", sentinel)
	return http.StatusInternalServerError, "InternalServerError"
}

// storageFailed logs a store failure once, at warn: an operator must see
// a full disk or an unreachable etcd.
func (h *Handler) storageFailed(r *http.Request, err error) {
	h.log.WarnContext(r.Context(), "request refused: storage", "method", r.Method, "path", r.URL.Path, "err", err)
}
