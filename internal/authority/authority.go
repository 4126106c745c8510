// Package authority is Coffer's Entra-ID-like identity authority: tenants,
// service principals and their credentials, signing keys, and the OAuth2
// token grants.
package authority

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/barrier"
	"github.com/cofferhq/coffer/internal/token"
	"github.com/go-jose/go-jose/v4"
)

// DefaultTokenLifetime is how long access tokens live unless configured.
const DefaultTokenLifetime = time.Hour

// ClientAssertionType is the OAuth client assertion type for JWT bearer assertions.
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

const (
	tenantPrefix  = "authority/tenants/"
	appPrefix     = "authority/apps/"
	objectPrefix  = "authority/objects/"
	signingPrefix = "authority/signing/"
)

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// IsGUID reports whether s is a lowercase GUID, the form of every Coffer id.
func IsGUID(s string) bool { return guidRE.MatchString(s) }

// NewGUID returns a random (version 4) GUID.
func NewGUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("authority: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Store is the slice of the barrier the authority uses.
type Store interface {
	Get(ctx context.Context, key string) (barrier.Record, error)
	Scan(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, error)
	Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error
}

// Config holds the authority's public identity and token settings.
type Config struct {
	// Host is the authority's base URL, such as https://vault.localhost:8443.
	Host string
	// Resources are the audiences tokens may be issued for.
	Resources []string
	// TokenLifetime is the lifetime of issued access tokens.
	TokenLifetime time.Duration
}

// Tenant is a directory of principals.
type Tenant struct {
	ID          string `json:"id"`
	DisplayName string `json:"displayName"`
	Created     int64  `json:"created"`
}

// SecretCredential is a client secret, stored as a salted SHA-256 hash.
// Client secrets are 240 random bits, so a fast hash is enough.
type SecretCredential struct {
	KeyID   string `json:"keyId"`
	Hint    string `json:"hint"`
	Salt    []byte `json:"salt"`
	Hash    []byte `json:"hash"`
	Created int64  `json:"created"`
	Expires int64  `json:"expires,omitempty"`
}

// ServicePrincipal is an application identity.
type ServicePrincipal struct {
	TenantID    string             `json:"tenantId"`
	AppID       string             `json:"appId"`
	ObjectID    string             `json:"objectId"`
	DisplayName string             `json:"displayName"`
	Created     int64              `json:"created"`
	Admin       bool               `json:"admin,omitempty"`
	Secrets     []SecretCredential `json:"secrets,omitempty"`
}

type objectRef struct {
	Type  string `json:"type"`
	AppID string `json:"appId,omitempty"`
}

type storedKey struct {
	ID      string `json:"kid"`
	DER     []byte `json:"pkcs8"`
	Created int64  `json:"created"`
	Retired int64  `json:"retired,omitempty"`
}

// Authority issues tokens and holds the directory.
type Authority struct {
	st  Store
	cfg Config
	now func() time.Time

	mu   sync.RWMutex
	keys []*token.SigningKey // the last one signs
	gen  atomic.Uint64

	verifier *token.Verifier
}

// Open loads the authority's signing keys from st, creating the first one if
// there is none.
func Open(ctx context.Context, st Store, cfg Config, now func() time.Time) (*Authority, error) {
	if now == nil {
		now = time.Now
	}
	if cfg.TokenLifetime == 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}
	if cfg.TokenLifetime < 5*time.Minute || cfg.TokenLifetime > 24*time.Hour {
		return nil, fmt.Errorf("token lifetime %v is out of range: use 5m to 24h", cfg.TokenLifetime)
	}
	cfg.Host = strings.TrimSuffix(cfg.Host, "/")
	a := &Authority{st: st, cfg: cfg, now: now}
	a.verifier = token.NewVerifier(a, now)
	if err := a.loadKeys(ctx); err != nil {
		return nil, err
	}
	if len(a.keys) == 0 {
		if _, err := a.RotateSigningKey(ctx); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *Authority) loadKeys(ctx context.Context) error {
	recs, err := a.st.Scan(ctx, signingPrefix, "", 0)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	var keys []*token.SigningKey
	for _, rec := range recs {
		var sk storedKey
		if err := json.Unmarshal(rec.Value, &sk); err != nil {
			return fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		priv, err := token.ParsePrivate(sk.DER)
		if err != nil {
			return fmt.Errorf("signing key %s: %w", sk.ID, err)
		}
		k, err := token.KeyFromPrivate(priv, time.Unix(sk.Created, 0))
		if err != nil {
			return err
		}
		if sk.Retired != 0 {
			k.Retired = time.Unix(sk.Retired, 0)
		}
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Created.Before(keys[j].Created) })
	a.mu.Lock()
	a.keys = keys
	a.mu.Unlock()
	a.gen.Add(1)
	return nil
}

// RotateSigningKey makes a new key the signing key. Older keys stay in the
// JWKS until every token they signed has expired, then are dropped.
func (a *Authority) RotateSigningKey(ctx context.Context) (string, error) {
	now := a.now()
	k, err := token.NewSigningKey(now)
	if err != nil {
		return "", err
	}
	der, err := k.MarshalPrivate()
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var ops []barrier.Op
	var kept []*token.SigningKey
	for _, old := range a.keys {
		if old.Retired.IsZero() {
			old.Retired = now
		}
		oldDER, err := old.MarshalPrivate()
		if err != nil {
			return "", err
		}
		if now.Sub(old.Retired) > a.cfg.TokenLifetime+token.DefaultLeeway {
			ops = append(ops, barrier.Op{Key: signingPrefix + old.ID, Delete: true})
			continue
		}
		kept = append(kept, old)
		b, _ := json.Marshal(storedKey{ID: old.ID, DER: oldDER, Created: old.Created.Unix(), Retired: old.Retired.Unix()})
		ops = append(ops, barrier.Op{Key: signingPrefix + old.ID, Value: b})
	}
	b, _ := json.Marshal(storedKey{ID: k.ID, DER: der, Created: now.Unix()})
	ops = append(ops, barrier.Op{Key: signingPrefix + k.ID, Value: b})
	if err := a.st.Apply(ctx, nil, ops); err != nil {
		return "", fmt.Errorf("store signing key: %w", err)
	}
	a.keys = append(kept, k)
	a.gen.Add(1)
	return k.ID, nil
}

// PublicKey implements token.Keys.
func (a *Authority) PublicKey(kid string) (*rsa.PublicKey, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, k := range a.keys {
		if k.ID == kid {
			return &k.Private.PublicKey, true
		}
	}
	return nil, false
}

// Generation implements token.Keys.
func (a *Authority) Generation() uint64 { return a.gen.Load() }

// Verifier returns the verifier for tokens this authority issued.
func (a *Authority) Verifier() *token.Verifier { return a.verifier }

// JWKS returns the public signing keys as a JSON Web Key Set.
func (a *Authority) JWKS() jose.JSONWebKeySet {
	a.mu.RLock()
	defer a.mu.RUnlock()
	set := jose.JSONWebKeySet{}
	for _, k := range a.keys {
		set.Keys = append(set.Keys, k.PublicJWK())
	}
	return set
}

// Host returns the authority's base URL.
func (a *Authority) Host() string { return a.cfg.Host }

// Issuer returns the token issuer of a tenant.
func (a *Authority) Issuer(tenant string) string { return a.cfg.Host + "/" + tenant + "/v2.0" }

// Resources returns the audiences the authority issues tokens for.
func (a *Authority) Resources() []string { return slices.Clone(a.cfg.Resources) }

// CreateTenant creates a tenant with a new id.
func (a *Authority) CreateTenant(ctx context.Context, displayName string) (Tenant, error) {
	t := Tenant{ID: NewGUID(), DisplayName: displayName, Created: a.now().Unix()}
	b, _ := json.Marshal(t)
	if err := a.st.Apply(ctx, []barrier.Cond{{Key: tenantPrefix + t.ID}}, []barrier.Op{{Key: tenantPrefix + t.ID, Value: b}}); err != nil {
		return Tenant{}, err
	}
	return t, nil
}

// Tenant returns a tenant by id.
func (a *Authority) Tenant(ctx context.Context, id string) (Tenant, error) {
	var t Tenant
	return t, a.getJSON(ctx, tenantPrefix+strings.ToLower(id), &t, "tenant "+id)
}

func (a *Authority) getJSON(ctx context.Context, key string, v any, what string) error {
	rec, err := a.st.Get(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	}
	if err != nil {
		return err
	}
	return json.Unmarshal(rec.Value, v)
}

// newClientSecret returns a secret and its credential record.
func (a *Authority) newClientSecret(ttl time.Duration) (string, SecretCredential) {
	raw := make([]byte, 30)
	rand.Read(raw)
	secret := base64.RawURLEncoding.EncodeToString(raw)
	salt := make([]byte, 16)
	rand.Read(salt)
	now := a.now()
	cred := SecretCredential{KeyID: NewGUID(), Hint: secret[:3], Salt: salt, Hash: hashSecret(salt, secret), Created: now.Unix()}
	if ttl > 0 {
		cred.Expires = now.Add(ttl).Unix()
	}
	return secret, cred
}

func hashSecret(salt []byte, secret string) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// CreateServicePrincipal registers an application and returns it with a new
// client secret. The secret is shown only here; the store keeps its hash.
func (a *Authority) CreateServicePrincipal(ctx context.Context, tenant, displayName string, admin bool) (ServicePrincipal, string, error) {
	if _, err := a.Tenant(ctx, tenant); err != nil {
		return ServicePrincipal{}, "", err
	}
	if strings.TrimSpace(displayName) == "" || len(displayName) > 120 {
		return ServicePrincipal{}, "", fmt.Errorf("a service principal needs a display name of 1 to 120 characters")
	}
	secret, cred := a.newClientSecret(0)
	sp := ServicePrincipal{
		TenantID: tenant, AppID: NewGUID(), ObjectID: NewGUID(), DisplayName: displayName,
		Created: a.now().Unix(), Admin: admin, Secrets: []SecretCredential{cred},
	}
	b, _ := json.Marshal(sp)
	ref, _ := json.Marshal(objectRef{Type: "servicePrincipal", AppID: sp.AppID})
	appKey, objKey := appPrefix+tenant+"/"+sp.AppID, objectPrefix+tenant+"/"+sp.ObjectID
	if err := a.st.Apply(ctx, []barrier.Cond{{Key: appKey}, {Key: objKey}}, []barrier.Op{{Key: appKey, Value: b}, {Key: objKey, Value: ref}}); err != nil {
		return ServicePrincipal{}, "", err
	}
	return sp, secret, nil
}

// AddClientSecret adds a new client secret to a service principal. With
// replace set, the new secret replaces all earlier ones.
func (a *Authority) AddClientSecret(ctx context.Context, tenant, appID string, replace bool) (string, error) {
	key := appPrefix + tenant + "/" + strings.ToLower(appID)
	rec, err := a.st.Get(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return "", fmt.Errorf("%w: application %s in tenant %s", ErrNotFound, appID, tenant)
	}
	if err != nil {
		return "", err
	}
	var sp ServicePrincipal
	if err := json.Unmarshal(rec.Value, &sp); err != nil {
		return "", err
	}
	secret, cred := a.newClientSecret(0)
	if replace {
		sp.Secrets = nil
	}
	sp.Secrets = append(sp.Secrets, cred)
	b, _ := json.Marshal(sp)
	if err := a.st.Apply(ctx, []barrier.Cond{{Key: key, Rev: rec.Rev}}, []barrier.Op{{Key: key, Value: b}}); err != nil {
		return "", err
	}
	return secret, nil
}

// ServicePrincipal returns an application by its app (client) id.
func (a *Authority) ServicePrincipal(ctx context.Context, tenant, appID string) (ServicePrincipal, error) {
	var sp ServicePrincipal
	err := a.getJSON(ctx, appPrefix+tenant+"/"+strings.ToLower(appID), &sp, "application "+appID+" in tenant "+tenant)
	return sp, err
}

// ServicePrincipalByObjectID returns an application by its object id.
func (a *Authority) ServicePrincipalByObjectID(ctx context.Context, tenant, objectID string) (ServicePrincipal, error) {
	var ref objectRef
	if err := a.getJSON(ctx, objectPrefix+tenant+"/"+strings.ToLower(objectID), &ref, "object "+objectID+" in tenant "+tenant); err != nil {
		return ServicePrincipal{}, err
	}
	if ref.Type != "servicePrincipal" {
		return ServicePrincipal{}, fmt.Errorf("%w: object %s is a %s, not a service principal", ErrNotFound, objectID, ref.Type)
	}
	return a.ServicePrincipal(ctx, tenant, ref.AppID)
}

// ListServicePrincipals returns a tenant's applications.
func (a *Authority) ListServicePrincipals(ctx context.Context, tenant string) ([]ServicePrincipal, error) {
	recs, err := a.st.Scan(ctx, appPrefix+tenant+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]ServicePrincipal, 0, len(recs))
	for _, rec := range recs {
		var sp ServicePrincipal
		if err := json.Unmarshal(rec.Value, &sp); err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	return out, nil
}

// TokenRequest is a parsed token-endpoint form.
type TokenRequest struct {
	Tenant              string
	GrantType           string
	ClientID            string
	ClientSecret        string
	ClientAssertionType string
	ClientAssertion     string
	Scope               string
}

// TokenResponse is a successful grant.
type TokenResponse struct {
	AccessToken string
	ExpiresIn   int64
	Resource    string
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

// Token runs a token grant.
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
	switch {
	case req.ClientSecret != "":
		sp, err := a.authenticateSecret(ctx, tenant, req.ClientID, req.ClientSecret)
		if err != nil {
			return TokenResponse{}, err
		}
		return a.issue(tenant, sp.ObjectID, sp.AppID, "1", resource)
	case req.ClientAssertion != "" || req.ClientAssertionType != "":
		return TokenResponse{}, invalidClient(7000218, "Client assertions are not supported yet; authenticate with client_secret.")
	default:
		return TokenResponse{}, invalidClient(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}
}

func (a *Authority) authenticateSecret(ctx context.Context, tenant, clientID, secret string) (ServicePrincipal, error) {
	sp, err := a.ServicePrincipal(ctx, tenant, clientID)
	if errors.Is(err, ErrNotFound) {
		return ServicePrincipal{}, oauthErr(http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory '%s'.", clientID, tenant)
	}
	if err != nil {
		return ServicePrincipal{}, err
	}
	now := a.now().Unix()
	ok := false
	for _, c := range sp.Secrets {
		match := subtle.ConstantTimeCompare(hashSecret(c.Salt, secret), c.Hash) == 1
		if match && (c.Expires == 0 || now < c.Expires) {
			ok = true
		}
	}
	if !ok {
		return ServicePrincipal{}, invalidClient(7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID)
	}
	return sp, nil
}

func (a *Authority) issue(tenant, objectID, appID, acr, resource string) (TokenResponse, error) {
	now := a.now()
	exp := now.Add(a.cfg.TokenLifetime)
	c := token.Claims{
		Issuer: a.Issuer(tenant), Subject: objectID, Audience: resource,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: exp.Unix(),
		TenantID: tenant, ObjectID: objectID, AppID: appID, AppIDACR: acr,
		AuthorizedParty: appID, AzpACR: acr, IDType: "app", TokenID: token.NewTokenID(), Version: "2.0",
	}
	a.mu.RLock()
	signer := a.keys[len(a.keys)-1]
	a.mu.RUnlock()
	raw, err := signer.Sign(c)
	if err != nil {
		return TokenResponse{}, err
	}
	return TokenResponse{AccessToken: raw, ExpiresIn: int64(a.cfg.TokenLifetime / time.Second), Resource: resource}, nil
}

// VerifyClientSecret reports whether secret is a current client secret of
// the application.
func (a *Authority) VerifyClientSecret(ctx context.Context, tenant, appID, secret string) bool {
	_, err := a.authenticateSecret(ctx, tenant, appID, secret)
	return err == nil
}
