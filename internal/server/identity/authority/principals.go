package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Principal types.
const (
	TypeServicePrincipal = "ServicePrincipal"
	TypeManagedIdentity  = "ManagedIdentity"
)

const (
	principalPrefix = "authority/principals/"
	objectPrefix    = "authority/objects/"
	resourcePrefix  = "authority/resources/"
)

// Principal is a service principal or a managed identity. AppID is its
// client id, ObjectID its object (principal) id.
type Principal struct {
	Type         string             `json:"type"`
	TenantID     string             `json:"tenantId"`
	AppID        string             `json:"appId"`
	ObjectID     string             `json:"objectId"`
	DisplayName  string             `json:"displayName"`
	Created      int64              `json:"created"`
	Secrets      []SecretCredential `json:"secrets,omitempty"`
	Certificates []CertCredential   `json:"certificates,omitempty"`
	// LegacyFederated holds the federated credentials of records written
	// before they got their own records (federated.go); Open moves them.
	LegacyFederated []federation.Credential `json:"federatedCredentials,omitempty"`
	// FederatedCount is how many federated credentials the principal has.
	FederatedCount int `json:"federatedCredentialCount,omitempty"`

	// Managed identities only.
	ResourceID     string `json:"resourceId,omitempty"`
	SubscriptionID string `json:"subscriptionId,omitempty"`
	ResourceGroup  string `json:"resourceGroup,omitempty"`
	Name           string `json:"name,omitempty"`
	SystemAssigned bool   `json:"systemAssigned,omitempty"`
	// NodePool names the node pool a system-assigned identity or a node
	// agent principal belongs to.
	NodePool string `json:"nodePool,omitempty"`
}

// ManagedIdentity reports whether p is a managed identity.
func (p *Principal) ManagedIdentity() bool { return p.Type == TypeManagedIdentity }

func principalKey(tenant, appID string) string {
	return principalPrefix + tenant + "/" + strings.ToLower(appID)
}

// createPrincipal stores p with its object-id and resource-id indexes;
// either id already in use is a conflict.
func (a *Authority) createPrincipal(ctx context.Context, p Principal) error {
	b, _ := json.Marshal(p)
	ref, _ := json.Marshal(p.AppID)
	pk, ok := principalKey(p.TenantID, p.AppID), objectPrefix+p.TenantID+"/"+p.ObjectID
	conds := []barrier.Cond{{Key: pk}, {Key: ok}}
	ops := []barrier.Op{{Key: pk, Value: b}, {Key: ok, Value: ref}}
	if p.ResourceID != "" {
		rk := resourcePrefix + p.TenantID + "/" + strings.ToLower(p.ResourceID)
		conds = append(conds, barrier.Cond{Key: rk})
		ops = append(ops, barrier.Op{Key: rk, Value: ref})
	}
	err := a.st.Apply(ctx, conds, ops)
	if errors.Is(err, barrier.ErrConflict) {
		return fmt.Errorf("%w: %s", ErrExists, p.ResourceID)
	}
	return err
}

// updatePrincipal changes a principal with fn under compare-and-swap.
func (a *Authority) updatePrincipal(ctx context.Context, tenant, appID string, fn func(*Principal) error) (Principal, error) {
	for range 8 {
		var p Principal
		rev, err := a.getJSON(ctx, principalKey(tenant, appID), &p, "application "+appID+" in tenant "+tenant)
		if err != nil {
			return Principal{}, err
		}
		if err := fn(&p); err != nil {
			return Principal{}, err
		}
		b, _ := json.Marshal(p)
		err = a.st.Apply(ctx, []barrier.Cond{{Key: principalKey(tenant, appID), Rev: rev}}, []barrier.Op{{Key: principalKey(tenant, appID), Value: b}})
		if errors.Is(err, barrier.ErrConflict) {
			continue
		}
		return p, err
	}
	return Principal{}, fmt.Errorf("principal %s kept changing; retry", appID)
}

// Principal returns a principal by its app (client) id.
func (a *Authority) Principal(ctx context.Context, tenant, appID string) (Principal, error) {
	var p Principal
	_, err := a.getJSON(ctx, principalKey(tenant, appID), &p, "application or identity with client id "+appID+" in tenant "+tenant)
	return p, err
}

func (a *Authority) byIndex(ctx context.Context, key, what string) (Principal, error) {
	var appID string
	if _, err := a.getJSON(ctx, key, &appID, what); err != nil {
		return Principal{}, err
	}
	tenant := strings.SplitN(strings.TrimPrefix(strings.TrimPrefix(key, objectPrefix), resourcePrefix), "/", 2)[0]
	return a.Principal(ctx, tenant, appID)
}

// PrincipalByObjectID returns a principal by its object id.
func (a *Authority) PrincipalByObjectID(ctx context.Context, tenant, objectID string) (Principal, error) {
	return a.byIndex(ctx, objectPrefix+tenant+"/"+strings.ToLower(objectID), "object "+objectID+" in tenant "+tenant)
}

// PrincipalByResourceID returns a managed identity by its resource id.
func (a *Authority) PrincipalByResourceID(ctx context.Context, tenant, resourceID string) (Principal, error) {
	return a.byIndex(ctx, resourcePrefix+tenant+"/"+strings.ToLower(resourceID), "managed identity "+resourceID)
}

// ListPrincipals returns a tenant's principals of a type ("" for all).
func (a *Authority) ListPrincipals(ctx context.Context, tenant, typ string) ([]Principal, error) {
	recs, err := a.st.Scan(ctx, principalPrefix+tenant+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := []Principal{}
	for _, rec := range recs {
		var p Principal
		if err := json.Unmarshal(rec.Value, &p); err != nil {
			return nil, err
		}
		if typ == "" || p.Type == typ {
			out = append(out, p)
		}
	}
	return out, nil
}

// Resolve finds a principal the way az's --assignee and --spn do: by object
// id, by app (client) id, by managed identity resource id, or by a display
// name that only one principal has.
func (a *Authority) Resolve(ctx context.Context, tenant, ref string) (Principal, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return Principal{}, fmt.Errorf("%w: empty principal reference", ErrNotFound)
	}
	if IsGUID(strings.ToLower(ref)) {
		if p, err := a.PrincipalByObjectID(ctx, tenant, ref); err == nil {
			return p, nil
		}
		if p, err := a.Principal(ctx, tenant, ref); err == nil {
			return p, nil
		}
	}
	if strings.HasPrefix(ref, "/") {
		return a.PrincipalByResourceID(ctx, tenant, ref)
	}
	all, err := a.ListPrincipals(ctx, tenant, "")
	if err != nil {
		return Principal{}, err
	}
	var found []Principal
	for _, p := range all {
		if strings.EqualFold(p.DisplayName, ref) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Principal{}, fmt.Errorf("%w: no principal in tenant %s has object id, client id or display name %q", ErrNotFound, tenant, ref)
	}
	return Principal{}, fmt.Errorf("%w: %d principals are named %q; use an object id", ErrAmbiguous, len(found), ref)
}

// CreateServicePrincipal registers an application and returns it with a new
// client secret. The secret is shown only here; the store keeps its hash.
func (a *Authority) CreateServicePrincipal(ctx context.Context, tenant, displayName string) (Principal, string, error) {
	if _, err := a.Tenant(ctx, tenant); err != nil {
		return Principal{}, "", err
	}
	if err := validDisplayName(displayName); err != nil {
		return Principal{}, "", err
	}
	secret, cred := a.newClientSecret()
	p := Principal{
		Type: TypeServicePrincipal, TenantID: tenant, AppID: NewGUID(), ObjectID: NewGUID(),
		DisplayName: displayName, Created: a.now().Unix(), Secrets: []SecretCredential{cred},
	}
	if err := a.createPrincipal(ctx, p); err != nil {
		return Principal{}, "", err
	}
	return p, secret, nil
}

func validDisplayName(name string) error {
	if strings.TrimSpace(name) == "" || len(name) > 120 {
		return fmt.Errorf("%w: a display name must be 1 to 120 characters", ErrInvalid)
	}
	return nil
}
