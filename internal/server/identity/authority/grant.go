package authority

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Selector names a managed identity to act as, the way IMDS callers do: by
// client id, object id or resource id (at most one is set).
type Selector struct {
	ClientID   string
	ObjectID   string
	ResourceID string
}

// Empty reports whether no identity is selected.
func (s Selector) Empty() bool { return s.ClientID == "" && s.ObjectID == "" && s.ResourceID == "" }

// TokenRequest is a parsed token-endpoint form.
type TokenRequest struct {
	Tenant              string
	GrantType           string
	ClientID            string
	ClientSecret        string
	ClientAssertionType string
	ClientAssertion     string
	Scope               string
	// ActFor, a Coffer extension (form fields mi_client_id, mi_object_id,
	// mi_res_id), asks for a token of a managed identity the authenticated
	// client may act as: how node agents serve pods.
	ActFor Selector
}

// TokenResponse is a successful grant.
type TokenResponse struct {
	AccessToken string
	ExpiresIn   int64
	Resource    string
	// Subject is the principal the token was issued for.
	Subject Principal
}

// resourceFromScope extracts the single resource of a client-credentials
// scope ("{resource}/.default"), ignoring OpenID scopes MSAL may add.
func (a *Authority) resourceFromScope(scope, tenant string) (string, error) {
	var resources []string
	for _, s := range strings.Fields(scope) {
		switch s {
		case "openid", "profile", "offline_access", "email":
			continue
		}
		if !strings.HasSuffix(s, "/.default") {
			return "", invalidRequest(70011, "The provided value for the input parameter 'scope' is not valid: %q. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", s)
		}
		resources = append(resources, strings.TrimSuffix(s, "/.default"))
	}
	if len(resources) != 1 {
		return "", invalidRequest(70011, "The provided value for the input parameter 'scope' is not valid: ask for exactly one {resource}/.default scope.")
	}
	res := resources[0]
	for _, known := range a.cfg.Resources {
		if res == known || res == known+"/" {
			return known, nil
		}
	}
	return "", oauthErr(http.StatusBadRequest, "invalid_resource", 500011, "The resource principal named %s was not found in the tenant named %s. Known resources: %s.", res, tenant, strings.Join(a.cfg.Resources, ", "))
}

// Token runs a client-credentials grant: the client authenticates with a
// secret, a certificate-signed assertion or a federated assertion, and gets
// a token for itself or, with ActFor, for a managed identity it may act as.
func (a *Authority) Token(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	tenant := strings.ToLower(req.Tenant)
	if !IsGUID(tenant) {
		return TokenResponse{}, invalidRequest(900023, "Specified tenant identifier '%s' is neither a valid DNS name, nor a valid external domain; use the tenant's GUID.", req.Tenant)
	}
	if _, err := a.Tenant(ctx, tenant); errors.Is(err, ErrNotFound) {
		return TokenResponse{}, oauthErr(http.StatusBadRequest, "invalid_tenant", 90002, "Tenant '%s' not found.", tenant)
	} else if err != nil {
		return TokenResponse{}, err
	}
	switch req.GrantType {
	case "":
		return TokenResponse{}, invalidRequest(900144, "The request body must contain the following parameter: 'grant_type'.")
	case "client_credentials":
	default:
		return TokenResponse{}, oauthErr(http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'; Coffer supports client_credentials.", req.GrantType)
	}
	if req.ClientID == "" {
		return TokenResponse{}, invalidRequest(900144, "The request body must contain the following parameter: 'client_id'.")
	}
	resource, err := a.resourceFromScope(req.Scope, tenant)
	if err != nil {
		return TokenResponse{}, err
	}
	client, err := a.Principal(ctx, tenant, req.ClientID)
	if errors.Is(err, ErrNotFound) {
		return TokenResponse{}, oauthErr(http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory '%s'.", req.ClientID, tenant)
	}
	if err != nil {
		return TokenResponse{}, err
	}
	if ok, wait := a.limiter.allow(tenant + "/" + client.AppID); !ok {
		return TokenResponse{}, throttled(client.AppID, wait)
	}
	acr, err := a.authenticate(ctx, client, req)
	if err != nil {
		return TokenResponse{}, err
	}
	subject := client
	if !req.ActFor.Empty() {
		if subject, err = a.actFor(ctx, client, req.ActFor); err != nil {
			return TokenResponse{}, err
		}
		acr = "2"
	}
	return a.issue(subject, acr, resource)
}

// authenticate checks the client's proof and returns its acr value: "1" for
// a secret, "2" for an assertion.
func (a *Authority) authenticate(ctx context.Context, p Principal, req TokenRequest) (string, error) {
	switch {
	case req.ClientSecret != "" && req.ClientAssertion != "":
		return "", invalidRequest(900144, "Send either client_secret or client_assertion, not both.")
	case req.ClientSecret != "":
		if p.ManagedIdentity() {
			return "", invalidClient(7000215, "%s is a managed identity: it has no client secrets; it authenticates with a federated credential, or a node agent acts for it.", p.AppID)
		}
		if !a.secretMatches(p, req.ClientSecret) {
			return "", invalidClient(7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", p.AppID)
		}
		return "1", nil
	case req.ClientAssertion != "":
		if req.ClientAssertionType != ClientAssertionType {
			return "", invalidRequest(900144, "client_assertion_type must be %s, got %q.", ClientAssertionType, req.ClientAssertionType)
		}
		return "2", a.verifyAssertion(ctx, p, req.ClientAssertion)
	}
	return "", invalidClient(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
}

// verifyAssertion tells a certificate assertion (issued by the client
// itself) from a federated one (issued by an external issuer), and checks it.
func (a *Authority) verifyAssertion(ctx context.Context, p Principal, raw string) error {
	if len(raw) > token.MaxTokenBytes {
		return invalidClient(50027, "The client assertion is %d bytes, over the %d-byte limit.", len(raw), token.MaxTokenBytes)
	}
	tok, err := jwt.ParseSigned(raw, assertionAlgorithms)
	if err != nil {
		return invalidClient(50027, "The client assertion is not a signed JWT with an asymmetric algorithm: %v.", err)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return invalidClient(50027, "The client assertion's claims do not parse: %v.", err)
	}
	if unverified.Issuer == p.AppID {
		if len(p.Certificates) == 0 {
			return invalidClient(700027, "Application %s has no certificate credentials; register one with `coffer sp credential reset --id %s --cert-file FILE`.", p.AppID, p.AppID)
		}
		return a.verifyCertAssertion(ctx, p, tok)
	}
	if p.FederatedCount == 0 && len(p.LegacyFederated) == 0 {
		return invalidClient(70021, "No matching federated identity record found for presented assertion: %s has no federated credentials (assertion issuer %q, subject %q).", p.DisplayName, unverified.Issuer, unverified.Subject)
	}
	lookup := federatedLookup{a: a, tenant: p.TenantID, app: strings.ToLower(p.AppID), legacy: p.LegacyFederated}
	_, _, err = a.cfg.Federation.Verify(ctx, raw, lookup)
	var fe *federation.Error
	if errors.As(err, &fe) {
		if fe.Unavailable {
			e := oauthErr(http.StatusServiceUnavailable, "temporarily_unavailable", fe.AADSTS, "%s", fe.Message)
			e.RetryAfter = 5
			return e
		}
		e := invalidClient(fe.AADSTS, "%s", fe.Message)
		e.Detail = fe.Detail
		return e
	}
	return err
}

// actFor resolves the selected managed identity and checks that client may
// act as it.
func (a *Authority) actFor(ctx context.Context, client Principal, sel Selector) (Principal, error) {
	set := 0
	for _, v := range []string{sel.ClientID, sel.ObjectID, sel.ResourceID} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return Principal{}, invalidRequest(900144, "Select the managed identity with only one of mi_client_id, mi_object_id and mi_res_id.")
	}
	var target Principal
	var err error
	switch {
	case sel.ClientID != "":
		target, err = a.Principal(ctx, client.TenantID, sel.ClientID)
	case sel.ObjectID != "":
		target, err = a.PrincipalByObjectID(ctx, client.TenantID, sel.ObjectID)
	default:
		target, err = a.PrincipalByResourceID(ctx, client.TenantID, sel.ResourceID)
	}
	if errors.Is(err, ErrNotFound) || (err == nil && !target.ManagedIdentity()) {
		return Principal{}, invalidRequest(700016, "No managed identity matches %s in tenant %s.", describe(sel), client.TenantID)
	}
	if err != nil {
		return Principal{}, err
	}
	if a.cfg.Roles == nil || !a.cfg.Roles.Allowed(client.TenantID, client.ObjectID, rbac.ActionIdentityAssign, target.ResourceID) {
		return Principal{}, oauthErr(http.StatusForbidden, "unauthorized_client", 50105,
			"Client %s (object id %s) may not act as managed identity %s: it needs the Managed Identity Operator role on %s (coffer role assignment create --role \"Managed Identity Operator\" --assignee %s --scope %s).",
			client.AppID, client.ObjectID, target.DisplayName, target.ResourceID, client.ObjectID, target.ResourceID)
	}
	return target, nil
}

func describe(s Selector) string {
	switch {
	case s.ClientID != "":
		return "client id " + s.ClientID
	case s.ObjectID != "":
		return "object id " + s.ObjectID
	}
	return "resource id " + s.ResourceID
}

func (a *Authority) issue(p Principal, acr, resource string) (TokenResponse, error) {
	now := a.now()
	exp := now.Add(a.cfg.TokenLifetime)
	c := token.Claims{
		Issuer: a.Issuer(p.TenantID), Subject: p.ObjectID, Audience: resource,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: exp.Unix(),
		TenantID: p.TenantID, ObjectID: p.ObjectID, AppID: p.AppID, AppIDACR: acr,
		AuthorizedParty: p.AppID, AzpACR: acr, IDType: "app", TokenID: token.NewTokenID(), Version: "2.0",
		ManagedIdentityResourceID: p.ResourceID,
	}
	raw, err := a.signer().Sign(c)
	if err != nil {
		return TokenResponse{}, fmt.Errorf("sign token: %w", err)
	}
	return TokenResponse{AccessToken: raw, ExpiresIn: int64(a.cfg.TokenLifetime.Seconds()), Resource: resource, Subject: p}, nil
}
