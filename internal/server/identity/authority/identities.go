package authority

import (
	"context"
	"fmt"
	"regexp"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
)

// Azure's rules: identity names are 3-128 characters of letters, digits,
// '-' and '_', starting with a letter or digit; resource groups are 1-90
// characters of letters, digits, '-', '_', '.' and parentheses.
var (
	identityNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$`)
	rgNameRE       = regexp.MustCompile(`^[-\w._()]{0,89}[-\w_()]$`)
	credNameRE     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{2,119}$`)
)

func validateRG(rg string) error {
	if !rgNameRE.MatchString(rg) {
		return fmt.Errorf("%w: resource group %q is invalid: use 1-90 letters, digits, '-', '_', '.' or parentheses, not ending in '.'", ErrInvalid, rg)
	}
	return nil
}

// CreateManagedIdentity creates a user-assigned managed identity in a
// resource group, as `az identity create` does.
func (a *Authority) CreateManagedIdentity(ctx context.Context, tenant, rg, name string) (Principal, error) {
	t, err := a.Tenant(ctx, tenant)
	if err != nil {
		return Principal{}, err
	}
	if !identityNameRE.MatchString(name) {
		return Principal{}, fmt.Errorf("%w: identity name %q is invalid: use 3-128 letters, digits, '-' and '_', starting with a letter or digit", ErrInvalid, name)
	}
	if err := validateRG(rg); err != nil {
		return Principal{}, err
	}
	p := Principal{
		Type: TypeManagedIdentity, TenantID: tenant, AppID: NewGUID(), ObjectID: NewGUID(),
		DisplayName: name, Name: name, Created: a.now().Unix(),
		SubscriptionID: t.SubscriptionID, ResourceGroup: rg, ResourceID: rbac.IdentityID(t.SubscriptionID, rg, name),
	}
	if err := a.createPrincipal(ctx, p); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// NodePool is what CreateNodePool made.
type NodePool struct {
	Name           string
	ResourceID     string
	Agent          Principal // the node agents' own principal
	AgentSecret    string    // shown once
	SystemAssigned Principal // the pool's system-assigned identity
}

// CreateNodePool creates what the node agents of a Kubernetes node pool
// need: a system-assigned identity for the pool (as an AKS VM scale set has),
// a service principal the agents authenticate as, and the Managed Identity
// Operator role for that principal on the pool's identity.
func (a *Authority) CreateNodePool(ctx context.Context, tenant, rg, name string) (NodePool, error) {
	t, err := a.Tenant(ctx, tenant)
	if err != nil {
		return NodePool{}, err
	}
	if !identityNameRE.MatchString(name) {
		return NodePool{}, fmt.Errorf("%w: node pool name %q is invalid: use 3-128 letters, digits, '-' and '_'", ErrInvalid, name)
	}
	if err := validateRG(rg); err != nil {
		return NodePool{}, err
	}
	if a.cfg.Roles == nil {
		return NodePool{}, fmt.Errorf("node pools need role assignments, which this authority was built without")
	}
	poolID := rbac.NodePoolID(t.SubscriptionID, rg, name)
	sys := Principal{
		Type: TypeManagedIdentity, TenantID: tenant, AppID: NewGUID(), ObjectID: NewGUID(), DisplayName: name,
		Name: name, Created: a.now().Unix(), SubscriptionID: t.SubscriptionID, ResourceGroup: rg,
		ResourceID: poolID, SystemAssigned: true, NodePool: name,
	}
	if err := a.createPrincipal(ctx, sys); err != nil {
		return NodePool{}, err
	}
	agent, secret, err := a.CreateServicePrincipal(ctx, tenant, name+"-node-agent")
	if err != nil {
		return NodePool{}, err
	}
	agent, err = a.updatePrincipal(ctx, tenant, agent.AppID, func(p *Principal) error { p.NodePool = name; return nil })
	if err != nil {
		return NodePool{}, err
	}
	if _, err := a.cfg.Roles.Create(ctx, rbac.Assignment{
		TenantID: tenant, RoleID: rbac.ManagedIdentityOperatorID, PrincipalID: agent.ObjectID,
		PrincipalType: TypeServicePrincipal, Scope: poolID, CreatedBy: "coffer nodepool create",
	}); err != nil {
		return NodePool{}, err
	}
	return NodePool{Name: name, ResourceID: poolID, Agent: agent, AgentSecret: secret, SystemAssigned: sys}, nil
}

// NodePoolAgent returns the principal a node pool's agents authenticate as.
func (a *Authority) NodePoolAgent(ctx context.Context, tenant, pool string) (Principal, error) {
	sps, err := a.ListPrincipals(ctx, tenant, TypeServicePrincipal)
	if err != nil {
		return Principal{}, err
	}
	for _, sp := range sps {
		if pool != "" && sp.NodePool == pool {
			return sp, nil
		}
	}
	return Principal{}, fmt.Errorf("%w: node pool %s has no agent principal", ErrNotFound, pool)
}
