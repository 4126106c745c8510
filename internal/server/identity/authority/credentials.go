package authority

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

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

// CertCredential is a certificate a principal proves itself with: it signs
// client assertions with the certificate's key. Only the public certificate
// is stored.
type CertCredential struct {
	KeyID      string `json:"keyId"`
	DER        []byte `json:"der"`
	SHA1       string `json:"x5t"`
	SHA256     string `json:"x5tS256"`
	Subject    string `json:"subject"`
	NotBefore  int64  `json:"notBefore"`
	NotAfter   int64  `json:"notAfter"`
	Registered int64  `json:"registered"`
}

func (a *Authority) newClientSecret() (string, SecretCredential) {
	raw := make([]byte, 30)
	rand.Read(raw)
	secret := base64.RawURLEncoding.EncodeToString(raw)
	salt := make([]byte, 16)
	rand.Read(salt)
	return secret, SecretCredential{KeyID: NewGUID(), Hint: secret[:3], Salt: salt, Hash: hashSecret(salt, secret), Created: a.now().Unix()}
}

func hashSecret(salt []byte, secret string) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// AddClientSecret adds a client secret to a service principal; with replace
// set, it replaces all earlier secrets.
func (a *Authority) AddClientSecret(ctx context.Context, tenant, appID string, replace bool) (string, error) {
	var secret string
	_, err := a.updatePrincipal(ctx, tenant, appID, func(p *Principal) error {
		if p.ManagedIdentity() {
			return fmt.Errorf("%w: %s is a managed identity, which cannot have client secrets", ErrInvalid, appID)
		}
		var cred SecretCredential
		secret, cred = a.newClientSecret()
		if replace {
			p.Secrets = nil
		}
		p.Secrets = append(p.Secrets, cred)
		return nil
	})
	return secret, err
}

// ParseCertificatePEM reads the first certificate in PEM data.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return nil, fmt.Errorf("%w: no PEM CERTIFICATE block found", ErrInvalid)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: certificate does not parse: %v", ErrInvalid, err)
			}
			return c, nil
		}
	}
}

// AddCertificate registers a certificate credential; with replace set, it
// replaces all earlier certificates. Private keys are never accepted here.
func (a *Authority) AddCertificate(ctx context.Context, tenant, appID string, cert *x509.Certificate, replace bool) (CertCredential, error) {
	if err := a.CheckCertificate(cert); err != nil {
		return CertCredential{}, err
	}
	now := a.now()
	s1, s256 := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw)
	cred := CertCredential{
		KeyID: NewGUID(), DER: cert.Raw, SHA1: hex.EncodeToString(s1[:]), SHA256: hex.EncodeToString(s256[:]),
		Subject: cert.Subject.String(), NotBefore: cert.NotBefore.Unix(), NotAfter: cert.NotAfter.Unix(), Registered: now.Unix(),
	}
	_, err := a.updatePrincipal(ctx, tenant, appID, func(p *Principal) error {
		if p.ManagedIdentity() {
			return fmt.Errorf("%w: %s is a managed identity, which cannot have certificates", ErrInvalid, appID)
		}
		if replace {
			p.Certificates = nil
		}
		p.Certificates = append(p.Certificates, cred)
		return nil
	})
	return cred, err
}

// CheckCertificate returns the ErrInvalid that AddCertificate would for
// cert, so a caller can refuse it before creating anything.
func (a *Authority) CheckCertificate(cert *x509.Certificate) error {
	if a.now().After(cert.NotAfter) {
		return fmt.Errorf("%w: the certificate expired at %s", ErrInvalid, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// VerifyClientSecret reports whether secret is a current client secret of
// the application.
func (a *Authority) VerifyClientSecret(ctx context.Context, tenant, appID, secret string) bool {
	p, err := a.Principal(ctx, tenant, appID)
	return err == nil && a.secretMatches(p, secret)
}

// secretMatches compares in constant time against every current secret.
func (a *Authority) secretMatches(p Principal, secret string) bool {
	now := a.now().Unix()
	ok := false
	for _, c := range p.Secrets {
		match := subtle.ConstantTimeCompare(hashSecret(c.Salt, secret), c.Hash) == 1
		if match && (c.Expires == 0 || now < c.Expires) {
			ok = true
		}
	}
	return ok
}

// assertionAlgorithms are the algorithms a certificate may sign assertions
// with: MSAL signs PS256 (RS256 toward ADFS); EC certificates sign ES*.
var assertionAlgorithms = []jose.SignatureAlgorithm{jose.PS256, jose.PS384, jose.PS512, jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512}

// maxAssertionLifetime caps a certificate-signed assertion; MSAL uses ten
// minutes.
const maxAssertionLifetime = time.Hour

// verifyCertAssertion checks a client assertion signed with one of p's
// certificates, as MSAL builds it: iss and sub are the client id, aud is the
// token endpoint, and the header names the certificate by thumbprint.
func (a *Authority) verifyCertAssertion(ctx context.Context, p Principal, tok *jwt.JSONWebToken) error {
	hdr := tok.Headers[0]
	var candidates []CertCredential
	thumb := thumbprint(hdr)
	for _, c := range p.Certificates {
		if thumb == "" || thumb == c.SHA1 || thumb == c.SHA256 {
			candidates = append(candidates, c)
		}
	}
	if len(candidates) == 0 {
		return invalidClient(700027, "Client assertion failed signature validation: the certificate with thumbprint %s is not registered for application %s.", thumb, p.AppID)
	}
	now := a.now()
	var claims jwt.Claims
	var verified *CertCredential
	for i, c := range candidates {
		cert, err := x509.ParseCertificate(c.DER)
		if err != nil {
			continue
		}
		if tok.Claims(cert.PublicKey, &claims) == nil {
			verified = &candidates[i]
			break
		}
	}
	if verified == nil {
		return invalidClient(700027, "Client assertion contains an invalid signature: it does not verify with any certificate registered for application %s.", p.AppID)
	}
	if now.Unix() < verified.NotBefore || now.Unix() > verified.NotAfter {
		return invalidClient(700027, "The certificate with thumbprint %s of application %s is outside its validity period.", verified.SHA256, p.AppID)
	}
	endpoint := a.TokenEndpoint(p.TenantID)
	v1 := a.cfg.Host + "/" + p.TenantID + "/oauth2/token"
	if !claims.Audience.Contains(endpoint) && !claims.Audience.Contains(v1) {
		return invalidClient(700212, "The client assertion's audience %q is not this tenant's token endpoint %q.", strings.Join(claims.Audience, " "), endpoint)
	}
	if claims.Issuer != p.AppID || claims.Subject != p.AppID {
		return invalidClient(700021, "The client assertion's iss (%q) and sub (%q) must both be the client id %q.", claims.Issuer, claims.Subject, p.AppID)
	}
	if claims.Expiry == nil {
		return invalidClient(700024, "The client assertion has no exp claim.")
	}
	exp := claims.Expiry.Time()
	if now.After(exp.Add(time.Minute)) {
		return invalidClient(700024, "The client assertion expired at %s; it is now %s.", exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if claims.NotBefore != nil && now.Add(time.Minute).Before(claims.NotBefore.Time()) {
		return invalidClient(700024, "The client assertion is not valid before %s.", claims.NotBefore.Time().UTC().Format(time.RFC3339))
	}
	start := now
	if claims.NotBefore != nil {
		start = claims.NotBefore.Time()
	} else if claims.IssuedAt != nil {
		start = claims.IssuedAt.Time()
	}
	if exp.Sub(start) > maxAssertionLifetime {
		return invalidClient(700024, "The client assertion's lifetime is %s, over the %s limit.", exp.Sub(start).Round(time.Second), maxAssertionLifetime)
	}
	if claims.ID == "" {
		return invalidClient(700027, "The client assertion has no jti claim; it is needed to detect replays.")
	}
	first, err := a.firstUse(ctx, p.TenantID+"/"+p.AppID+"/"+claims.ID, exp.Add(time.Minute))
	if err != nil {
		return err
	}
	if !first {
		return invalidClient(700027, "The client assertion with jti %q was already used; assertions are single-use.", claims.ID)
	}
	return nil
}

// thumbprint returns the hex thumbprint the header names, if any (x5t#S256
// or x5t, in standard or URL-safe base64).
func thumbprint(h jose.Header) string {
	for _, name := range []jose.HeaderKey{"x5t#S256", "x5t"} {
		v, ok := h.ExtraHeaders[name].(string)
		if !ok || v == "" {
			continue
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(v); err == nil {
				return hex.EncodeToString(b)
			}
		}
		return "(undecodable)"
	}
	return ""
}

// replayPrefix holds the ids of used assertions, by digest, until they
// expire. They are in the store, not in memory, so that an assertion used
// on one replica is refused on every other.
const replayPrefix = "authority/replay/"

// firstUse records id as used until expires, and reports whether no one
// used it before: a compare-and-swap, so two replicas that see the same
// assertion at once cannot both accept it.
func (a *Authority) firstUse(ctx context.Context, id string, expires time.Time) (bool, error) {
	sum := sha256.Sum256([]byte(id))
	k := replayPrefix + hex.EncodeToString(sum[:])
	cond := barrier.Cond{Key: k}
	rec, err := a.st.Get(ctx, k)
	switch {
	case errors.Is(err, barrier.ErrNotFound):
	case err != nil:
		return false, err
	default:
		var prev replayRecord
		if json.Unmarshal(rec.Value, &prev) == nil && a.now().Unix() <= prev.Expires {
			return false, nil
		}
		cond.Rev = rec.Rev // expired: the id may be used again
	}
	b, _ := json.Marshal(replayRecord{Expires: expires.Unix()})
	err = a.st.Apply(ctx, []barrier.Cond{cond}, []barrier.Op{{Key: k, Value: b}})
	if errors.Is(err, barrier.ErrConflict) {
		return false, nil
	}
	return err == nil, err
}

type replayRecord struct {
	Expires int64 `json:"exp"`
}

// PurgeReplays deletes the records of assertions that have expired, and
// returns how many. The scheduler runs it.
func (a *Authority) PurgeReplays(ctx context.Context) (int, error) {
	now, n, after := a.now().Unix(), 0, ""
	for {
		recs, err := a.st.Scan(ctx, replayPrefix, after, 500)
		if err != nil {
			return n, err
		}
		var ops []barrier.Op
		var conds []barrier.Cond
		for _, rec := range recs {
			var r replayRecord
			if json.Unmarshal(rec.Value, &r) == nil && r.Expires < now {
				ops = append(ops, barrier.Op{Key: rec.Key, Delete: true})
				conds = append(conds, barrier.Cond{Key: rec.Key, Rev: rec.Rev})
			}
			if len(ops) == 100 {
				if err := a.st.Apply(ctx, conds, ops); err != nil && !errors.Is(err, barrier.ErrConflict) {
					return n, err
				} else if err == nil {
					n += len(ops)
				}
				ops, conds = nil, nil
			}
		}
		if len(ops) > 0 {
			if err := a.st.Apply(ctx, conds, ops); err != nil && !errors.Is(err, barrier.ErrConflict) {
				return n, err
			} else if err == nil {
				n += len(ops)
			}
		}
		if len(recs) < 500 {
			return n, nil
		}
		after = recs[len(recs)-1].Key
	}
}

// limiter is a token bucket per client.
type limiter struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int, now func() time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), now: now, buckets: map[string]*bucket{}}
}

// allow takes one token for key, or returns the seconds until one is free.
func (l *limiter) allow(key string) (bool, int) {
	if l.rate < 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) > 100_000 {
			l.buckets = map[string]*bucket{} // bounded: idle buckets are full anyway
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := int((1-b.tokens)/l.rate) + 1
	return false, wait
}

func throttled(clientID string, wait int) *OAuthError {
	e := oauthErr(http.StatusTooManyRequests, "temporarily_unavailable", 90055, "Too many token requests for client %s; retry after %d second(s). Clients should cache tokens until they near expiry.", clientID, wait)
	e.RetryAfter = wait
	return e
}
