package mgmthttp

import (
	"crypto/x509"
	"errors"
	"net/http"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
)

// SPOut is a service principal as the management API shows it. Password is
// set only when a secret was just created.
type SPOut struct {
	AppID        string   `json:"appId"`
	ObjectID     string   `json:"objectId"`
	DisplayName  string   `json:"displayName"`
	Tenant       string   `json:"tenant"`
	Password     string   `json:"password,omitempty"`
	Certificates []string `json:"certificateThumbprints,omitempty"`
}

func spOut(sp authority.Principal, password string) SPOut {
	out := SPOut{AppID: sp.AppID, ObjectID: sp.ObjectID, DisplayName: sp.DisplayName, Tenant: sp.TenantID, Password: password}
	for _, c := range sp.Certificates {
		out.Certificates = append(out.Certificates, strings.ToUpper(c.SHA1))
	}
	return out
}

func (h *Handler) listSPs(r *http.Request, p access.Principal, _ none) (any, error) {
	if err := h.authorize(r, p, actionDirectoryRead, rbac.Root); err != nil {
		return nil, err
	}
	sps, err := h.Authority.ListPrincipals(r.Context(), p.TenantID, authority.TypeServicePrincipal)
	var out []SPOut
	for _, sp := range sps {
		out = append(out, spOut(sp, ""))
	}
	return list(out), err
}

// CreateSPIn is the body of a service principal creation.
type CreateSPIn struct {
	DisplayName string `json:"displayName"`
	// CertificatePEM optionally registers a certificate credential too.
	CertificatePEM string `json:"certificate,omitempty"`
}

func (h *Handler) createSP(r *http.Request, p access.Principal, in CreateSPIn) (any, error) {
	if err := h.authorize(r, p, rbac.ActionDirectoryWrite, rbac.Root); err != nil {
		return nil, err
	}
	// The certificate is checked before the principal exists: a refusal
	// after it would leave a principal whose secret nobody was shown.
	var cert *x509.Certificate
	if in.CertificatePEM != "" {
		var err error
		if cert, err = checkedCert(h.Authority, in.CertificatePEM); err != nil {
			return nil, err
		}
	}
	sp, secret, err := h.Authority.CreateServicePrincipal(r.Context(), p.TenantID, in.DisplayName)
	if err == nil && cert != nil {
		sp, err = h.addCert(r, sp, cert, true)
	}
	return spOut(sp, secret), err
}

// checkedCert parses a PEM certificate and checks it as AddCertificate
// will.
func checkedCert(a *authority.Authority, pemText string) (*x509.Certificate, error) {
	cert, err := authority.ParseCertificatePEM([]byte(pemText))
	if err != nil {
		return nil, err
	}
	return cert, a.CheckCertificate(cert)
}

func (h *Handler) addCert(r *http.Request, sp authority.Principal, cert *x509.Certificate, replace bool) (authority.Principal, error) {
	if _, err := h.Authority.AddCertificate(r.Context(), sp.TenantID, sp.AppID, cert, replace); err != nil {
		return sp, err
	}
	return h.Authority.Principal(r.Context(), sp.TenantID, sp.AppID)
}

// CredentialsIn resets a service principal's credentials: a new client
// secret, or, with CertificatePEM, a certificate. Append keeps the old ones.
type CredentialsIn struct {
	CertificatePEM string `json:"certificate,omitempty"`
	Append         bool   `json:"append,omitempty"`
}

func (h *Handler) resetCredentials(r *http.Request, p access.Principal, in CredentialsIn) (any, error) {
	if err := h.authorize(r, p, rbac.ActionDirectoryWrite, rbac.Root); err != nil {
		return nil, err
	}
	sp, err := h.Authority.Principal(r.Context(), p.TenantID, r.PathValue("appId"))
	if err != nil {
		return nil, err
	}
	secret := ""
	if in.CertificatePEM != "" {
		var cert *x509.Certificate
		if cert, err = checkedCert(h.Authority, in.CertificatePEM); err != nil {
			return nil, err
		}
		sp, err = h.addCert(r, sp, cert, !in.Append)
	} else if secret, err = h.Authority.AddClientSecret(r.Context(), p.TenantID, sp.AppID, !in.Append); err == nil {
		sp, err = h.Authority.Principal(r.Context(), p.TenantID, sp.AppID)
	}
	return spOut(sp, secret), err
}

// IdentityOut is a managed identity, shaped as `az identity show` prints it.
type IdentityOut struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	ResourceGroup string `json:"resourceGroup"`
	ClientID      string `json:"clientId"`
	PrincipalID   string `json:"principalId"`
	TenantID      string `json:"tenantId"`
	Type          string `json:"type"`
	Location      string `json:"location"`
}

func identityOut(p authority.Principal) IdentityOut {
	typ := "Microsoft.ManagedIdentity/userAssignedIdentities"
	if p.SystemAssigned {
		typ = "SystemAssigned"
	}
	return IdentityOut{ID: p.ResourceID, Name: p.Name, ResourceGroup: p.ResourceGroup, ClientID: p.AppID,
		PrincipalID: p.ObjectID, TenantID: p.TenantID, Type: typ, Location: "coffer"}
}

func (h *Handler) listIdentities(r *http.Request, p access.Principal, _ none) (any, error) {
	all, err := h.Authority.ListPrincipals(r.Context(), p.TenantID, authority.TypeManagedIdentity)
	rg := r.URL.Query().Get("resourceGroup")
	var out []IdentityOut
	for _, mi := range all {
		if (rg == "" || strings.EqualFold(rg, mi.ResourceGroup)) && h.Access.Manage(p, rbac.ActionIdentityRead, mi.ResourceID) == nil {
			out = append(out, identityOut(mi))
		}
	}
	return list(out), err
}

// CreateIdentityIn names a managed identity or a node pool to create.
type CreateIdentityIn struct {
	Name          string `json:"name"`
	ResourceGroup string `json:"resourceGroup"`
}

func (in CreateIdentityIn) check(what string) error {
	if in.ResourceGroup == "" || in.Name == "" {
		return badRequest("give the " + what + "'s name and resourceGroup")
	}
	return nil
}

func (h *Handler) createIdentity(r *http.Request, p access.Principal, in CreateIdentityIn) (any, error) {
	if err := in.check("identity"); err != nil {
		return nil, err
	}
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return nil, err
	}
	if err := h.authorize(r, p, rbac.ActionIdentityWrite, rbac.ResourceGroupScope(sub, in.ResourceGroup)); err != nil {
		return nil, err
	}
	mi, err := h.Authority.CreateManagedIdentity(r.Context(), p.TenantID, in.ResourceGroup, in.Name)
	return identityOut(mi), err
}

// identityFor returns the identity named in the path, authorized for action.
func (h *Handler) identityFor(r *http.Request, p access.Principal, action string) (authority.Principal, error) {
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return authority.Principal{}, err
	}
	id := rbac.IdentityID(sub, r.PathValue("rg"), r.PathValue("name"))
	if err := h.authorize(r, p, action, id); err != nil {
		return authority.Principal{}, err
	}
	return h.Authority.PrincipalByResourceID(r.Context(), p.TenantID, id)
}

func (h *Handler) showIdentity(r *http.Request, p access.Principal, _ none) (any, error) {
	mi, err := h.identityFor(r, p, rbac.ActionIdentityRead)
	return identityOut(mi), err
}

// FederatedOut is a federated identity credential as az prints it.
type FederatedOut struct {
	federation.Credential
	ID   string `json:"id"`
	Type string `json:"type"`
}

func federatedOut(mi authority.Principal, c federation.Credential) FederatedOut {
	return FederatedOut{Credential: c, ID: mi.ResourceID + "/federatedIdentityCredentials/" + c.Name,
		Type: "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"}
}

func (h *Handler) listFederated(r *http.Request, p access.Principal, _ none) (any, error) {
	mi, err := h.identityFor(r, p, rbac.ActionIdentityRead)
	if err != nil {
		return nil, err
	}
	creds, err := h.Authority.ListFederatedCredentials(r.Context(), p.TenantID, mi.AppID)
	if err != nil {
		return nil, err
	}
	out := make([]FederatedOut, len(creds))
	for i, c := range creds {
		out[i] = federatedOut(mi, c)
	}
	return list(out), nil
}

func (h *Handler) putFederated(r *http.Request, p access.Principal, in federation.Credential) (any, error) {
	in.Name = r.PathValue("cred")
	if len(in.Audiences) == 0 {
		in.Audiences = []string{federation.DefaultAudience}
	}
	mi, err := h.identityFor(r, p, rbac.ActionFederatedCredWrite)
	if err != nil {
		return nil, err
	}
	c, err := h.Authority.AddFederatedCredential(r.Context(), p.TenantID, mi.AppID, in)
	if err != nil {
		return nil, err
	}
	return federatedOut(mi, c), nil
}

func (h *Handler) deleteFederated(r *http.Request, p access.Principal, _ none) (any, error) {
	mi, err := h.identityFor(r, p, rbac.ActionFederatedCredWrite)
	if err != nil {
		return nil, err
	}
	return nil, h.Authority.DeleteFederatedCredential(r.Context(), p.TenantID, mi.AppID, r.PathValue("cred"))
}

// NodePoolOut is a created node pool. AgentSecret is shown only once.
type NodePoolOut struct {
	Name           string      `json:"name"`
	ID             string      `json:"id"`
	AgentClientID  string      `json:"agentClientId"`
	AgentObjectID  string      `json:"agentObjectId"`
	AgentSecret    string      `json:"agentClientSecret,omitempty"`
	TenantID       string      `json:"tenantId"`
	SystemAssigned IdentityOut `json:"systemAssignedIdentity"`
}

func (h *Handler) createNodePool(r *http.Request, p access.Principal, in CreateIdentityIn) (any, error) {
	if err := in.check("node pool"); err != nil {
		return nil, err
	}
	if err := h.authorize(r, p, rbac.ActionDirectoryWrite, rbac.Root); err != nil {
		return nil, err
	}
	np, err := h.Authority.CreateNodePool(r.Context(), p.TenantID, in.ResourceGroup, in.Name)
	return NodePoolOut{Name: np.Name, ID: np.ResourceID, AgentClientID: np.Agent.AppID, AgentObjectID: np.Agent.ObjectID,
		AgentSecret: np.AgentSecret, TenantID: p.TenantID, SystemAssigned: identityOut(np.SystemAssigned)}, err
}

// AssignIn lists identities (resource ids) to assign to a node pool.
type AssignIn struct {
	Identities []string `json:"identities"`
}

// assignNodePoolIdentities lets a node pool's agents act as user-assigned
// identities, as `az vmss identity assign` does: the agent principal gets
// Managed Identity Operator on each.
func (h *Handler) assignNodePoolIdentities(r *http.Request, p access.Principal, in AssignIn) (any, error) {
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return nil, err
	}
	pool, err := h.Authority.PrincipalByResourceID(r.Context(), p.TenantID, rbac.NodePoolID(sub, r.PathValue("rg"), r.PathValue("name")))
	if err != nil {
		return nil, err
	}
	agent, err := h.Authority.NodePoolAgent(r.Context(), p.TenantID, pool.NodePool)
	if err != nil {
		return nil, err
	}
	var made []AssignmentOut
	for _, id := range in.Identities {
		mi, err := h.Authority.PrincipalByResourceID(r.Context(), p.TenantID, id)
		if err != nil {
			return nil, err
		}
		if err := h.authorize(r, p, rbac.ActionRoleAssignmentWrite, mi.ResourceID); err != nil {
			return nil, err
		}
		a, err := h.Roles.Create(r.Context(), rbac.Assignment{TenantID: p.TenantID, RoleID: rbac.ManagedIdentityOperatorID, PrincipalID: agent.ObjectID,
			PrincipalType: authority.TypeServicePrincipal, Scope: mi.ResourceID, CreatedBy: p.ObjectID})
		if err != nil && !errors.Is(err, rbac.ErrExists) {
			return nil, err
		}
		made = append(made, h.assignmentOut(sub, a))
	}
	return list(made), nil
}
