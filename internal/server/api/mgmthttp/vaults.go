package mgmthttp

import (
	"fmt"
	"net/http"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/throttle"
)

// VaultOut is a vault as the management API shows it.
type VaultOut struct {
	vault.Vault
	ID            string `json:"id"`
	VaultURI      string `json:"vaultUri"`
	RecoveryLevel string `json:"recoveryLevel"`
}

func (h *Handler) vaultOut(v vault.Vault) VaultOut {
	return VaultOut{Vault: v, ID: v.ID(), VaultURI: h.Endpoints.VaultURL(v.Name), RecoveryLevel: v.RecoveryLevel()}
}

func (h *Handler) listVaults(r *http.Request, p access.Principal, _ none) (any, error) {
	var out []VaultOut
	for _, v := range h.Vaults.List(p.TenantID) {
		if h.Access.Manage(p, rbac.ActionVaultRead, v.ID()) == nil {
			out = append(out, h.vaultOut(v))
		}
	}
	return list(out), nil
}

// CreateVaultIn is the body of a vault creation.
type CreateVaultIn struct {
	Name            string `json:"name"`
	ResourceGroup   string `json:"resourceGroup"`
	RetentionDays   int    `json:"softDeleteRetentionInDays"`
	PurgeProtection bool   `json:"enablePurgeProtection"`
	EnforceValidity bool   `json:"enforceSecretValidity"`
	RBAC            bool   `json:"enableRbacAuthorization"`
}

func (h *Handler) createVault(r *http.Request, p access.Principal, in CreateVaultIn) (any, error) {
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return nil, err
	}
	if in.ResourceGroup == "" {
		in.ResourceGroup = vault.DefaultResourceGroup
	}
	if err := h.authorize(r, p, rbac.ActionVaultWrite, rbac.ResourceGroupScope(sub, in.ResourceGroup)); err != nil {
		return nil, err
	}
	v, err := h.Vaults.Create(r.Context(), vault.Vault{
		Name: in.Name, TenantID: p.TenantID, SubscriptionID: sub, ResourceGroup: in.ResourceGroup, CreatedBy: p.ObjectID,
		RetentionDays: in.RetentionDays, PurgeProtection: in.PurgeProtection, EnforceValidity: in.EnforceValidity, RBAC: in.RBAC,
	})
	return h.vaultOut(v), err
}

// vaultFor returns the named vault of the caller's tenant, authorized for action.
func (h *Handler) vaultFor(r *http.Request, p access.Principal, action string) (*vault.Vault, error) {
	v, err := h.Vaults.Get(r.PathValue("name"))
	if err != nil || v.TenantID != p.TenantID {
		return nil, fmt.Errorf("%w: %s", vault.ErrNotFound, r.PathValue("name"))
	}
	return v, h.authorize(r, p, action, v.ID())
}

func (h *Handler) showVault(r *http.Request, p access.Principal, _ none) (any, error) {
	v, err := h.vaultFor(r, p, rbac.ActionVaultRead)
	if err != nil {
		return nil, err
	}
	return h.vaultOut(*v), nil
}

// UpdateVaultIn changes a vault's settings; a nil field is left as it is.
type UpdateVaultIn struct {
	// Throttle is the static limits in the CLI's form: keyvault, off, or
	// requests=N,key-creates=N,per-principal=N (per 10 seconds).
	Throttle *string `json:"throttle"`
}

func (h *Handler) updateVault(r *http.Request, p access.Principal, in UpdateVaultIn) (any, error) {
	v, err := h.vaultFor(r, p, rbac.ActionVaultWrite)
	if err != nil {
		return nil, err
	}
	var limits throttle.Limits
	if in.Throttle != nil {
		if limits, err = throttle.Parse(*in.Throttle); err != nil {
			return nil, badRequest(err.Error())
		}
	}
	out, err := h.Vaults.Update(r.Context(), v.Name, func(v *vault.Vault) error {
		if in.Throttle != nil {
			v.Throttle = limits
		}
		return nil
	})
	return h.vaultOut(out), err
}

// PolicyIn sets or deletes one principal's access policy. The principal is
// an object id, or (Spn) an app id or display name to resolve. A nil
// permission list leaves that kind unchanged.
type PolicyIn struct {
	ObjectID     string    `json:"objectId"`
	Spn          string    `json:"spn"`
	Secrets      *[]string `json:"secrets"`
	Keys         *[]string `json:"keys"`
	Certificates *[]string `json:"certificates"`
}

func (h *Handler) policyTarget(r *http.Request, p access.Principal, in PolicyIn) (string, error) {
	switch {
	case (in.ObjectID == "") == (in.Spn == ""):
		return "", badRequest("give exactly one of objectId and spn")
	case in.ObjectID != "":
		return in.ObjectID, nil
	}
	sp, err := h.Authority.Resolve(r.Context(), p.TenantID, in.Spn)
	return sp.ObjectID, err
}

func (h *Handler) setPolicy(r *http.Request, p access.Principal, in PolicyIn) (any, error) {
	return h.changePolicy(r, p, in, false)
}

func (h *Handler) deletePolicy(r *http.Request, p access.Principal, in PolicyIn) (any, error) {
	return h.changePolicy(r, p, in, true)
}

func (h *Handler) changePolicy(r *http.Request, p access.Principal, in PolicyIn, remove bool) (any, error) {
	v, err := h.vaultFor(r, p, rbac.ActionAccessPolicyWrite)
	if err != nil {
		return nil, err
	}
	oid, err := h.policyTarget(r, p, in)
	if err != nil {
		return nil, err
	}
	var perms vault.Permissions
	for kind, dst := range map[string]*[]string{"secrets": &perms.Secrets, "keys": &perms.Keys, "certificates": &perms.Certificates} {
		given := map[string]*[]string{"secrets": in.Secrets, "keys": in.Keys, "certificates": in.Certificates}[kind]
		if given == nil {
			continue
		}
		if *dst, err = vault.ValidatePermissions(kind, *given); err != nil {
			return nil, err
		}
	}
	out, err := h.Vaults.Update(r.Context(), v.Name, func(v *vault.Vault) error {
		return setPolicy(v, oid, in, perms, remove)
	})
	return h.vaultOut(out), err
}

// setPolicy merges one principal's policy the way `az keyvault set-policy`
// does: the kinds given replace that principal's lists, the others stay.
func setPolicy(v *vault.Vault, oid string, in PolicyIn, perms vault.Permissions, remove bool) error {
	i := -1
	for j, ap := range v.AccessPolicies {
		if ap.ObjectID == oid {
			i = j
		}
	}
	if remove {
		if i < 0 {
			return fmt.Errorf("%w: vault %s has no access policy for object %s", vault.ErrNotFound, v.Name, oid)
		}
		v.AccessPolicies = append(v.AccessPolicies[:i:i], v.AccessPolicies[i+1:]...)
		return nil
	}
	if in.Secrets == nil && in.Keys == nil && in.Certificates == nil {
		return badRequest("give at least one of secret, key or certificate permissions")
	}
	if i < 0 {
		v.AccessPolicies = append(v.AccessPolicies, vault.AccessPolicy{TenantID: v.TenantID, ObjectID: oid})
		i = len(v.AccessPolicies) - 1
	}
	ap := &v.AccessPolicies[i]
	if in.Secrets != nil {
		ap.Permissions.Secrets = perms.Secrets
	}
	if in.Keys != nil {
		ap.Permissions.Keys = perms.Keys
	}
	if in.Certificates != nil {
		ap.Permissions.Certificates = perms.Certificates
	}
	return nil
}
