// Package authority is Coffer's Entra-ID-like identity authority: tenants,
// service principals and managed identities with their credentials (client
// secrets, certificates, federated credentials), signing keys, and the
// OAuth2 token grant.
package authority

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// DefaultTokenLifetime is how long access tokens live unless configured.
const DefaultTokenLifetime = time.Hour

// ClientAssertionType is the OAuth client assertion type for JWT bearer assertions.
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

const tenantPrefix = "authority/tenants/"

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

// Roles is what the authority needs from RBAC: who may act as a managed
// identity, and granting that to a node pool's agent.
type Roles interface {
	Allowed(tenant, principal, action, scope string) bool
	Create(ctx context.Context, a rbac.Assignment) (rbac.Assignment, error)
}

// Config holds the authority's public identity and token settings.
type Config struct {
	// Host is the authority's base URL, such as https://vault.localhost:8443.
	Host string
	// Resources are the audiences tokens may be issued for.
	Resources []string
	// TokenLifetime is the lifetime of issued access tokens.
	TokenLifetime time.Duration
	// RateLimit is the sustained token requests per second allowed per
	// client; RateBurst is the burst. Zero RateLimit takes the default;
	// a negative one turns limiting off.
	RateLimit float64
	RateBurst int
	// Federation validates assertions from external issuers.
	Federation *federation.Verifier
	// Roles decides who may act as a managed identity.
	Roles Roles
	// MaxFederatedCredentials bounds each identity's federated
	// credentials; zero means DefaultMaxFederatedCredentials.
	MaxFederatedCredentials int
}

// Default rate limits: far above what a client that caches its tokens
// needs, far below what guessing credentials would.
const (
	DefaultRateLimit = 20
	DefaultRateBurst = 40
)

// Tenant is a directory of principals, with one subscription that holds
// its resources.
type Tenant struct {
	ID             string `json:"id"`
	DisplayName    string `json:"displayName"`
	SubscriptionID string `json:"subscriptionId"`
	Created        int64  `json:"created"`
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
	limiter  *limiter
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
	if cfg.RateLimit == 0 {
		cfg.RateLimit, cfg.RateBurst = DefaultRateLimit, DefaultRateBurst
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = int(cfg.RateLimit) * 2
	}
	if cfg.Federation == nil {
		cfg.Federation = federation.New(federation.Config{Now: now})
	}
	cfg.Host = strings.TrimSuffix(cfg.Host, "/")
	a := &Authority{st: st, cfg: cfg, now: now, limiter: newLimiter(cfg.RateLimit, cfg.RateBurst, now)}
	a.verifier = token.NewVerifier(a, now)
	if err := a.loadKeys(ctx); err != nil {
		return nil, err
	}
	if len(a.keys) == 0 {
		if _, err := a.RotateSigningKey(ctx); err != nil {
			return nil, err
		}
	}
	if err := a.migrateAllFederated(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// Verifier returns the verifier for tokens this authority issued.
func (a *Authority) Verifier() *token.Verifier { return a.verifier }

// Host returns the authority's base URL.
func (a *Authority) Host() string { return a.cfg.Host }

// Issuer returns the token issuer of a tenant.
func (a *Authority) Issuer(tenant string) string { return a.cfg.Host + "/" + tenant + "/v2.0" }

// TokenEndpoint returns a tenant's token endpoint, the audience of client
// assertions.
func (a *Authority) TokenEndpoint(tenant string) string {
	return a.cfg.Host + "/" + tenant + "/oauth2/v2.0/token"
}

// Resources returns the audiences the authority issues tokens for.
func (a *Authority) Resources() []string { return slices.Clone(a.cfg.Resources) }

// CreateTenant creates a tenant, with its subscription, under new ids.
func (a *Authority) CreateTenant(ctx context.Context, displayName string) (Tenant, error) {
	t := Tenant{ID: NewGUID(), DisplayName: displayName, SubscriptionID: NewGUID(), Created: a.now().Unix()}
	b, _ := json.Marshal(t)
	if err := a.st.Apply(ctx, []barrier.Cond{{Key: tenantPrefix + t.ID}}, []barrier.Op{{Key: tenantPrefix + t.ID, Value: b}}); err != nil {
		return Tenant{}, err
	}
	return t, nil
}

// Tenant returns a tenant by id.
func (a *Authority) Tenant(ctx context.Context, id string) (Tenant, error) {
	var t Tenant
	_, err := a.getJSON(ctx, tenantPrefix+strings.ToLower(id), &t, "tenant "+id)
	return t, err
}

func (a *Authority) getJSON(ctx context.Context, key string, v any, what string) (barrier.Rev, error) {
	rec, err := a.st.Get(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, what)
	}
	if err != nil {
		return nil, err
	}
	return rec.Rev, json.Unmarshal(rec.Value, v)
}
