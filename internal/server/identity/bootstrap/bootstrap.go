// Package bootstrap creates what a new installation needs before anyone can
// log in: a tenant and its first administrator.
package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

const stateKey = "bootstrap/state"

// Store is the slice of the barrier bootstrap uses.
type Store interface {
	Get(ctx context.Context, key string) (barrier.Record, error)
	Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error
}

// State records the installation's first tenant and administrator.
type State struct {
	TenantID      string `json:"tenantId"`
	AdminAppID    string `json:"adminAppId"`
	AdminObjectID string `json:"adminObjectId"`
}

// Load returns the recorded state; ok is false on a new installation.
func Load(ctx context.Context, st Store) (State, bool, error) {
	rec, err := st.Get(ctx, stateKey)
	if errors.Is(err, barrier.ErrNotFound) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, err
	}
	var s State
	if err := json.Unmarshal(rec.Value, &s); err != nil {
		return State{}, false, fmt.Errorf("decode bootstrap state: %w", err)
	}
	return s, true, nil
}

// Roles grants the administrator its roles.
type Roles interface {
	Create(ctx context.Context, a rbac.Assignment) (rbac.Assignment, error)
}

// Ensure creates the tenant and the administrator on first use. The
// administrator holds Owner (all management) and Key Vault Administrator
// (all data in RBAC vaults) at the tenant root. On first use it returns the
// administrator's client secret, shown only then; later it returns the
// recorded state and an empty secret.
func Ensure(ctx context.Context, st Store, a *authority.Authority, roles Roles) (State, string, error) {
	if s, ok, err := Load(ctx, st); err != nil || ok {
		return s, "", err
	}
	t, err := a.CreateTenant(ctx, "Coffer")
	if err != nil {
		return State{}, "", fmt.Errorf("create tenant: %w", err)
	}
	sp, secret, err := a.CreateServicePrincipal(ctx, t.ID, "coffer-admin")
	if err != nil {
		return State{}, "", fmt.Errorf("create administrator: %w", err)
	}
	for _, role := range []string{rbac.OwnerID, rbac.KeyVaultAdministratorID} {
		if _, err := roles.Create(ctx, rbac.Assignment{TenantID: t.ID, RoleID: role, PrincipalID: sp.ObjectID,
			PrincipalType: authority.TypeServicePrincipal, Scope: rbac.Root, CreatedBy: "bootstrap"}); err != nil {
			return State{}, "", fmt.Errorf("grant the administrator its roles: %w", err)
		}
	}
	s := State{TenantID: t.ID, AdminAppID: sp.AppID, AdminObjectID: sp.ObjectID}
	b, _ := json.Marshal(s)
	if err := st.Apply(ctx, []barrier.Cond{{Key: stateKey}}, []barrier.Op{{Key: stateKey, Value: b}}); err != nil {
		return State{}, "", fmt.Errorf("record bootstrap state: %w", err)
	}
	return s, secret, nil
}

// AdminSecret returns candidate if it is still a valid secret of the
// administrator, or replaces the administrator's secrets with a new one.
func AdminSecret(ctx context.Context, a *authority.Authority, s State, candidate string) (secret string, rotated bool, err error) {
	if candidate != "" && a.VerifyClientSecret(ctx, s.TenantID, s.AdminAppID, candidate) {
		return candidate, false, nil
	}
	secret, err = a.AddClientSecret(ctx, s.TenantID, s.AdminAppID, true)
	return secret, err == nil, err
}
