package mgmthttp

import (
	"net/http"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// RotateRootKeyIn optionally carries the new root key, base64, for servers
// that read their root key from the environment.
type RotateRootKeyIn struct {
	NewRootKey string `json:"newRootKey,omitempty"`
}

func (h *Handler) rotateRootKey(r *http.Request, p access.Principal, in RotateRootKeyIn) (any, error) {
	if err := h.authorize(r, p, ActionOperator, rbac.Root); err != nil {
		return nil, err
	}
	var provided *rootkey.Key
	if in.NewRootKey != "" {
		k, err := rootkey.Parse(in.NewRootKey)
		if err != nil {
			return nil, badRequest("newRootKey: " + err.Error())
		}
		provided = &k
	}
	return h.Operator.RotateRootKey(r.Context(), provided)
}

func (h *Handler) rotateDataKey(r *http.Request, p access.Principal, _ none) (any, error) {
	if err := h.authorize(r, p, ActionOperator, rbac.Root); err != nil {
		return nil, err
	}
	term, err := h.Operator.RotateDataKey(r.Context())
	return map[string]any{"activeTerm": term}, err
}

func (h *Handler) rotateSigningKey(r *http.Request, p access.Principal, _ none) (any, error) {
	if err := h.authorize(r, p, ActionOperator, rbac.Root); err != nil {
		return nil, err
	}
	kid, err := h.Authority.RotateSigningKey(r.Context())
	return map[string]any{"kid": kid}, err
}
