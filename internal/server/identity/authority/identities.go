package authority

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
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

// MaxFederatedCredentials is Azure's limit per identity.
const MaxFederatedCredentials = 20

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

// ValidateFederatedCredential checks a credential as Entra ID does: an
// https issuer, a subject, exactly one audience.
func ValidateFederatedCredential(c federation.Credential) error {
	if !credNameRE.MatchString(c.Name) {
		return fmt.Errorf("%w: federated credential name %q is invalid: use 3-120 letters, digits, '-' and '_', starting with a letter or digit", ErrInvalid, c.Name)
	}
	u, err := url.Parse(c.Issuer)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%w: issuer %q must be an https URL without query or fragment", ErrInvalid, c.Issuer)
	}
	if strings.TrimSpace(c.Subject) == "" || len(c.Subject) > 600 {
		return fmt.Errorf("%w: subject must be 1 to 600 characters, such as system:serviceaccount:{namespace}:{name}", ErrInvalid)
	}
	if len(c.Audiences) != 1 || c.Audiences[0] == "" || len(c.Audiences[0]) > 600 {
		return fmt.Errorf("%w: give exactly one audience (usually %s)", ErrInvalid, federation.DefaultAudience)
	}
	return nil
}

// AddFederatedCredential adds (or, by name, replaces) a federated identity
// credential on a managed identity or service principal.
func (a *Authority) AddFederatedCredential(ctx context.Context, tenant, appID string, c federation.Credential) (Principal, error) {
	if err := ValidateFederatedCredential(c); err != nil {
		return Principal{}, err
	}
	return a.updatePrincipal(ctx, tenant, appID, func(p *Principal) error {
		if p.SystemAssigned {
			return fmt.Errorf("%w: system-assigned identities cannot have federated credentials", ErrInvalid)
		}
		for _, old := range p.Federated {
			if old.Name != c.Name && old.Issuer == c.Issuer && old.Subject == c.Subject {
				return fmt.Errorf("%w: federated credential %s already trusts issuer %s and subject %s", ErrExists, old.Name, c.Issuer, c.Subject)
			}
		}
		p.Federated = slices.DeleteFunc(p.Federated, func(o federation.Credential) bool { return o.Name == c.Name })
		if len(p.Federated) >= MaxFederatedCredentials {
			return fmt.Errorf("%w: %s already has %d federated credentials, the limit", ErrInvalid, p.DisplayName, MaxFederatedCredentials)
		}
		p.Federated = append(p.Federated, c)
		return nil
	})
}

// DeleteFederatedCredential removes a federated credential by name.
func (a *Authority) DeleteFederatedCredential(ctx context.Context, tenant, appID, name string) (Principal, error) {
	return a.updatePrincipal(ctx, tenant, appID, func(p *Principal) error {
		n := len(p.Federated)
		p.Federated = slices.DeleteFunc(p.Federated, func(o federation.Credential) bool { return o.Name == name })
		if len(p.Federated) == n {
			return fmt.Errorf("%w: %s has no federated credential named %s", ErrNotFound, p.DisplayName, name)
		}
		return nil
	})
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
