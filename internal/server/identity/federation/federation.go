// Package federation validates assertions from external OIDC issuers, such
// as Kubernetes service-account tokens, against federated identity
// credentials: the issuer's discovery document and JWKS are fetched over
// HTTPS with timeouts and size limits, cached, and refreshed when an unknown
// key id appears.
//
// An issuer URL is written by whoever may create federated credentials, and
// the server fetches it: unless the operator allows private issuers, an
// issuer or jwks_uri on a loopback, link-local or private address (or a name
// that resolves to one) is refused, so the credential cannot be used to make
// the server probe its own network (server-side request forgery).
package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cofferhq/coffer/internal/server/egress"
)

// Credential is a federated identity credential: the external identity
// (issuer, and either an exact subject or a claims-matching expression)
// allowed to act as a principal, for the audiences.
type Credential struct {
	Name    string `json:"name"`
	Issuer  string `json:"issuer"`
	Subject string `json:"subject,omitempty"`
	// ClaimsMatchingExpression, when set instead of Subject, admits every
	// assertion whose claims satisfy it (see ParseExpression).
	ClaimsMatchingExpression *Expression `json:"claimsMatchingExpression,omitempty"`
	Audiences                []string    `json:"audiences"`
	Description              string      `json:"description,omitempty"`
}

// Lookup finds the federated credentials an assertion may match, so that a
// principal with many credentials costs a token a few indexed reads rather
// than a scan of them all.
type Lookup interface {
	// TrustsIssuer reports whether any credential names issuer exactly.
	TrustsIssuer(ctx context.Context, issuer string) (bool, error)
	// Candidates returns at least the credentials of issuer whose Subject
	// is subject, and those whose expression's SubjectPrefix is one of
	// SubjectPrefixes(subject). It may return more; Verify checks each.
	Candidates(ctx context.Context, issuer, subject string) ([]Credential, error)
	// Sample returns up to n credentials of issuer, any n, for the
	// message of a refused subject.
	Sample(ctx context.Context, issuer string, n int) ([]Credential, error)
}

// List is a Lookup over credentials held in memory.
type List []Credential

// TrustsIssuer implements Lookup.
func (l List) TrustsIssuer(_ context.Context, issuer string) (bool, error) {
	return slices.ContainsFunc(l, func(c Credential) bool { return c.Issuer == issuer }), nil
}

// Candidates implements Lookup: every credential of issuer.
func (l List) Candidates(_ context.Context, issuer, _ string) ([]Credential, error) {
	return l.Sample(context.Background(), issuer, len(l))
}

// Sample implements Lookup.
func (l List) Sample(_ context.Context, issuer string, n int) ([]Credential, error) {
	var out []Credential
	for _, c := range l {
		if c.Issuer == issuer && len(out) < n {
			out = append(out, c)
		}
	}
	return out, nil
}

// DefaultAudience is the audience Azure workload identity uses.
const DefaultAudience = "api://AzureADTokenExchange"

// Error is a rejected assertion, with an Entra ID AADSTS code. Its message
// names what failed and the values involved, never the assertion itself.
type Error struct {
	AADSTS  int
	Message string
	// Detail is for the server's log, never for the caller: what the
	// identity is configured to trust. A caller holding any valid token of
	// a trusted issuer (every pod of a cluster, say) must not learn which
	// subjects would be admitted, as Entra ID does not tell them either.
	Detail string
	// Unavailable is set when the issuer could not be reached; retrying
	// later may succeed.
	Unavailable bool
}

func (e *Error) Error() string { return fmt.Sprintf("AADSTS%d: %s", e.AADSTS, e.Message) }

func reject(code int, format string, args ...any) *Error {
	return &Error{AADSTS: code, Message: fmt.Sprintf(format, args...)}
}

// Config tunes a Verifier; zero fields take defaults.
type Config struct {
	// Egress says where issuers may be: Egress.AllowPrivate lets them be
	// internal addresses, and Egress.Roots verify their TLS.
	Egress egress.Policy
	// Client fetches discovery documents and key sets. It must have a
	// timeout, and should refuse internal addresses when dialed; nil is
	// Egress.Client, which does both.
	Client *http.Client
	// MaxLifetime caps exp minus iat (or nbf) of an assertion.
	MaxLifetime time.Duration
	// Skew is the clock skew tolerated on exp and nbf.
	Skew time.Duration
	// CacheTTL is how long a fetched key set is used before it is refetched.
	CacheTTL time.Duration
	// MinRefresh spaces the refetches an unknown kid triggers.
	MinRefresh time.Duration
	Now        func() time.Time
}

// Limits on what an issuer may send.
const (
	maxDiscoveryBytes = 64 << 10
	maxJWKSBytes      = 256 << 10
	maxAssertionBytes = 16 << 10
)

var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512, jose.ES256, jose.ES384, jose.ES512}

// Verifier checks external assertions.
type Verifier struct {
	cfg Config

	mu      sync.Mutex
	issuers map[string]*issuerKeys
}

type issuerKeys struct {
	mu        sync.Mutex
	keys      jose.JSONWebKeySet
	fetched   time.Time
	attempted time.Time
}

// New returns a verifier.
func New(cfg Config) *Verifier {
	if cfg.Client == nil {
		cfg.Client = cfg.Egress.Client(10 * time.Second)
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = 24 * time.Hour
	}
	if cfg.Skew == 0 {
		cfg.Skew = 2 * time.Minute
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = time.Hour
	}
	if cfg.MinRefresh == 0 {
		cfg.MinRefresh = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg, issuers: map[string]*issuerKeys{}}
}

// Claims are the claims of an accepted assertion.
type Claims struct {
	Issuer   string
	Subject  string
	Audience []string
	Expiry   time.Time
}

// Verify checks raw against the credentials creds finds and returns the
// credential it matched. Checks run in this order, and the first failure is
// reported: some credential names the assertion's issuer exactly (before
// anything is fetched from it), the signature verifies with a key of the
// issuer, the time window and lifetime, then the subject (exactly, or by a
// claims-matching expression over the verified claims) and the audience.
func (v *Verifier) Verify(ctx context.Context, raw string, creds Lookup) (Credential, Claims, error) {
	if len(raw) > maxAssertionBytes {
		return Credential{}, Claims{}, reject(50027, "The client assertion is %d bytes, over the %d-byte limit.", len(raw), maxAssertionBytes)
	}
	tok, err := jwt.ParseSigned(raw, algorithms)
	if err != nil {
		return Credential{}, Claims{}, reject(50027, "The client assertion is not a signed JWT with an asymmetric algorithm: %v.", err)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return Credential{}, Claims{}, reject(50027, "The client assertion's claims do not parse: %v.", err)
	}
	trusted, err := creds.TrustsIssuer(ctx, unverified.Issuer)
	if err != nil {
		return Credential{}, Claims{}, err
	}
	if !trusted {
		return Credential{}, Claims{}, reject(700211, "No matching federated identity record found for presented assertion issuer: no federated credential of this identity trusts issuer %q (issuers match exactly, trailing slash included).", unverified.Issuer)
	}
	keys, err := v.keysFor(ctx, unverified.Issuer, tok.Headers[0].KeyID)
	if err != nil {
		return Credential{}, Claims{}, err
	}
	var c jwt.Claims
	var all map[string]any
	if err := tok.Claims(keys, &c, &all); err != nil {
		return Credential{}, Claims{}, reject(700027, "The client assertion's signature does not verify with issuer %s's key %q.", unverified.Issuer, tok.Headers[0].KeyID)
	}
	if err := v.checkTime(c); err != nil {
		return Credential{}, Claims{}, err
	}
	candidates, err := creds.Candidates(ctx, c.Issuer, c.Subject)
	if err != nil {
		return Credential{}, Claims{}, err
	}
	matched := matchSubject(candidates, c, all)
	if len(matched) == 0 {
		some, err := creds.Sample(ctx, c.Issuer, maxListed)
		if err != nil {
			return Credential{}, Claims{}, err
		}
		e := reject(70021, "No matching federated identity record found for presented assertion subject: no federated credential for issuer %s admits subject %q, by its subject or by its claimsMatchingExpression. The identity's credentials are listed by `coffer identity federated-credential list`; the server's log names some of them under this request's trace ID.", c.Issuer, c.Subject)
		e.Detail = configured(some)
		return Credential{}, Claims{}, e
	}
	var audiences []string
	for _, cand := range matched {
		audiences = append(audiences, cand.Audiences...)
		for _, a := range c.Audience {
			if slices.Contains(cand.Audiences, a) {
				return cand, Claims{Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience, Expiry: c.Expiry.Time()}, nil
			}
		}
	}
	return Credential{}, Claims{}, reject(700212, "No matching federated identity record found for presented assertion audience: audience %s does not match the configured audience(s) %s.", quoteAll(c.Audience), quoteAll(audiences))
}

// maxListed bounds how many configured credentials a subject error names.
const maxListed = 5

// configured describes some of an issuer's credentials for an error.
func configured(some []Credential) string {
	var subjects, exprs []string
	for _, c := range some {
		if c.ClaimsMatchingExpression != nil {
			exprs = append(exprs, fmt.Sprintf("%q", c.ClaimsMatchingExpression.Value))
		} else {
			subjects = append(subjects, fmt.Sprintf("%q", c.Subject))
		}
	}
	var parts []string
	if len(subjects) > 0 {
		parts = append(parts, "subject(s) "+strings.Join(subjects, ", "))
	}
	if len(exprs) > 0 {
		parts = append(parts, "claimsMatchingExpression(s) "+strings.Join(exprs, ", "))
	}
	if len(parts) == 0 {
		return ""
	}
	more := ""
	if len(some) == maxListed {
		more = ", among others"
	}
	return "its credentials for that issuer have " + strings.Join(parts, " and ") + more
}

// matchSubject returns the candidates that admit the verified claims:
// exact subjects first, then expressions, each in name order.
func matchSubject(candidates []Credential, c jwt.Claims, all map[string]any) []Credential {
	slices.SortFunc(candidates, func(a, b Credential) int {
		if ea, eb := a.ClaimsMatchingExpression != nil, b.ClaimsMatchingExpression != nil; ea != eb {
			if ea {
				return 1
			}
			return -1
		}
		return strings.Compare(a.Name, b.Name)
	})
	var matched []Credential
	for _, cand := range candidates {
		if cand.Issuer != c.Issuer { // a store's index may return more
			continue
		}
		if cand.ClaimsMatchingExpression == nil {
			if cand.Subject == c.Subject {
				matched = append(matched, cand)
			}
			continue
		}
		if m, err := ParseExpression(*cand.ClaimsMatchingExpression); err == nil && m.Match(all) {
			matched = append(matched, cand)
		}
	}
	return matched
}

func (v *Verifier) checkTime(c jwt.Claims) error {
	now := v.cfg.Now()
	if c.Expiry == nil {
		return reject(700024, "The client assertion has no exp claim.")
	}
	exp := c.Expiry.Time()
	if now.After(exp.Add(v.cfg.Skew)) {
		return reject(700024, "The client assertion expired at %s; it is now %s.", exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil && now.Add(v.cfg.Skew).Before(c.NotBefore.Time()) {
		return reject(700024, "The client assertion is not valid before %s; it is now %s.", c.NotBefore.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	start := now
	if c.IssuedAt != nil {
		start = c.IssuedAt.Time()
	} else if c.NotBefore != nil {
		start = c.NotBefore.Time()
	}
	if life := exp.Sub(start); life > v.cfg.MaxLifetime {
		return reject(700024, "The client assertion's lifetime is %s, over the %s limit: issue shorter-lived tokens.", life.Round(time.Second), v.cfg.MaxLifetime)
	}
	return nil
}

func quoteAll(vals []string) string {
	if len(vals) == 0 {
		return "(none)"
	}
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

// keysFor returns the issuer's keys with kid, fetching the key set if it is
// not cached, stale, or lacks kid (at most once per MinRefresh).
func (v *Verifier) keysFor(ctx context.Context, issuer, kid string) (jose.JSONWebKey, error) {
	v.mu.Lock()
	ik := v.issuers[issuer]
	if ik == nil {
		ik = &issuerKeys{}
		v.issuers[issuer] = ik
	}
	v.mu.Unlock()

	ik.mu.Lock()
	defer ik.mu.Unlock()
	now := v.cfg.Now()
	find := func() (jose.JSONWebKey, bool) {
		for _, k := range ik.keys.Keys {
			if k.KeyID == kid && (k.Use == "" || k.Use == "sig") {
				return k, true
			}
		}
		return jose.JSONWebKey{}, false
	}
	fresh := !ik.fetched.IsZero() && now.Sub(ik.fetched) < v.cfg.CacheTTL
	if k, ok := find(); ok && fresh {
		return k, nil
	}
	if !ik.attempted.IsZero() && now.Sub(ik.attempted) < v.cfg.MinRefresh {
		if k, ok := find(); ok {
			return k, nil // stale but usable; the refetch is rate-limited
		}
		return jose.JSONWebKey{}, reject(700027, "The client assertion is signed with key %q, which issuer %s's key set does not contain.", kid, issuer)
	}
	ik.attempted = now
	set, err := v.fetchKeys(ctx, issuer)
	if err != nil {
		if k, ok := find(); ok {
			return k, nil // keep serving the last good set while the issuer is down
		}
		return jose.JSONWebKey{}, err
	}
	ik.keys, ik.fetched = set, now
	if k, ok := find(); ok {
		return k, nil
	}
	return jose.JSONWebKey{}, reject(700027, "The client assertion is signed with key %q, which issuer %s's key set does not contain.", kid, issuer)
}

func (v *Verifier) fetchKeys(ctx context.Context, issuer string) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	u, err := url.Parse(issuer)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return set, reject(50166, "Issuer %q is not an https URL; federated issuers must serve OpenID discovery over HTTPS.", issuer)
	}
	if err := v.checkURL(issuer); err != nil {
		return set, err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := v.getJSON(ctx, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", maxDiscoveryBytes, &doc); err != nil {
		return set, err
	}
	if doc.Issuer != issuer {
		return set, reject(50166, "Issuer %q's discovery document names issuer %q; they must be identical.", issuer, doc.Issuer)
	}
	ju, err := url.Parse(doc.JWKSURI)
	if err != nil || ju.Scheme != "https" || ju.Host == "" {
		return set, reject(50166, "Issuer %q's jwks_uri %q is not an https URL.", issuer, doc.JWKSURI)
	}
	if err := v.checkURL(doc.JWKSURI); err != nil {
		return set, err
	}
	if err := v.getJSON(ctx, doc.JWKSURI, maxJWKSBytes, &set); err != nil {
		return set, err
	}
	return set, nil
}

func (v *Verifier) getJSON(ctx context.Context, u string, limit int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return reject(50166, "Request to external OIDC endpoint %s failed: %v.", u, err)
	}
	// A Kubernetes issuer serves its key set as application/jwk-set+json
	// and answers 406 to a client that accepts only application/json.
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := v.cfg.Client.Do(req)
	if err != nil {
		e := reject(50166, "Request to external OIDC endpoint %s failed: %v.", u, err)
		// A refused address stays refused: retrying cannot help.
		e.Unavailable = !errors.Is(err, egress.ErrRefused)
		return e
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := reject(50166, "Request to external OIDC endpoint %s failed with HTTP %d.", u, resp.StatusCode)
		e.Unavailable = resp.StatusCode >= 500
		return e
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		e := reject(50166, "Reading external OIDC endpoint %s failed: %v.", u, err)
		e.Unavailable = true
		return e
	}
	if int64(len(body)) > limit {
		return reject(50166, "External OIDC endpoint %s returned more than %d bytes.", u, limit)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return reject(50166, "External OIDC endpoint %s returned invalid JSON: %v.", u, err)
	}
	return nil
}

// checkURL refuses an issuer or key set URL on an internal address before
// anything is dialed; names are checked again, after resolution, by the
// client's dialer.
func (v *Verifier) checkURL(u string) error {
	if _, err := v.cfg.Egress.CheckURL(u); err != nil {
		return reject(50166, "External OIDC endpoint %s is refused: %v. Federated issuers must be public unless the server's operator allows private ones.", u, err)
	}
	return nil
}

// IsUnavailable reports whether err means an issuer could not be reached.
func IsUnavailable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unavailable
}
