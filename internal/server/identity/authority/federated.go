package authority

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"

	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Federated identity credentials are stored one record each, not inside
// their principal, so that an identity may have thousands and a token costs
// a few indexed reads whatever their number:
//
//	authority/federated/{tenant}/{appId}/{name}                       the credential
//	authority/fedindex/{tenant}/{appId}/{H(issuer)}/s/{H(subject)}    exact subject
//	authority/fedindex/{tenant}/{appId}/{H(issuer)}/x/{H(prefix)}/{H(expression)}
//
// H is unpadded base64url SHA-256, which keeps keys short and free of '/'
// whatever the issuer or subject. An expression is indexed under its
// SubjectPrefix, so a token looks up only the prefixes of its own subject
// (federation.SubjectPrefixes). Index entries hold the whole credential, so
// the lookup reads nothing else, and every write changes a credential, its
// index entry and its principal's count in one conditional Apply: replicas
// sharing the store see all three change together, and no cache is needed.
// The index keys also make issuer and subject (or expression) unique per
// identity, as Entra requires.
const (
	fedCredPrefix  = "authority/federated/"
	fedIndexPrefix = "authority/fedindex/"
)

// DefaultMaxFederatedCredentials bounds an identity's federated
// credentials. Entra allows 20; Coffer's index makes the number irrelevant
// to token cost, and the bound only caps the storage one identity can use.
const DefaultMaxFederatedCredentials = 10000

func hashKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func fedCredKey(tenant, appID, name string) string {
	return fedCredPrefix + tenant + "/" + strings.ToLower(appID) + "/" + name
}

func fedIssuerKey(tenant, appID, issuer string) string {
	return fedIndexPrefix + tenant + "/" + strings.ToLower(appID) + "/" + hashKey(issuer) + "/"
}

// fedIndexKey is where c is indexed; c must be valid.
func fedIndexKey(tenant, appID string, c federation.Credential) string {
	base := fedIssuerKey(tenant, appID, c.Issuer)
	if c.ClaimsMatchingExpression == nil {
		return base + "s/" + hashKey(c.Subject)
	}
	m, err := federation.ParseExpression(*c.ClaimsMatchingExpression)
	if err != nil {
		panic("authority: indexing an invalid federated credential: " + err.Error())
	}
	return base + "x/" + hashKey(m.SubjectPrefix()) + "/" + hashKey(c.ClaimsMatchingExpression.Value)
}

// ValidateFederatedCredential checks a credential as Entra ID does: a name,
// an https issuer, exactly one of a subject or a claims-matching
// expression, and exactly one audience.
func ValidateFederatedCredential(c federation.Credential) error {
	if !credNameRE.MatchString(c.Name) {
		return fmt.Errorf("%w: federated credential name %q is invalid: use 3-120 letters, digits, '-' and '_', starting with a letter or digit", ErrInvalid, c.Name)
	}
	u, err := url.Parse(c.Issuer)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || len(c.Issuer) > 600 {
		return fmt.Errorf("%w: issuer %q must be an https URL of at most 600 characters, without query or fragment", ErrInvalid, c.Issuer)
	}
	switch {
	case c.Subject != "" && c.ClaimsMatchingExpression != nil:
		return fmt.Errorf("%w: give either subject or claimsMatchingExpression, not both", ErrInvalid)
	case c.Subject == "" && c.ClaimsMatchingExpression == nil:
		return fmt.Errorf("%w: give a subject (such as system:serviceaccount:{namespace}:{name}) or a claimsMatchingExpression (such as claims['sub'] matches 'system:serviceaccount:{namespace}:*')", ErrInvalid)
	case c.ClaimsMatchingExpression != nil:
		if _, err := federation.ParseExpression(*c.ClaimsMatchingExpression); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	default:
		if err := validateSubject(c.Subject); err != nil {
			return err
		}
	}
	if len(c.Audiences) != 1 || c.Audiences[0] == "" || len(c.Audiences[0]) > 600 {
		return fmt.Errorf("%w: give exactly one audience (usually %s)", ErrInvalid, federation.DefaultAudience)
	}
	return nil
}

func validateSubject(s string) error {
	if len(s) > 600 || strings.TrimSpace(s) != s {
		return fmt.Errorf("%w: subject must be 1 to 600 characters without leading or trailing spaces, such as system:serviceaccount:{namespace}:{name}", ErrInvalid)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: subject %q contains a control character", ErrInvalid, s)
		}
	}
	// Entra matches subjects exactly and supports no wildcards in them;
	// someone who writes one almost certainly wants an expression.
	if strings.ContainsAny(s, "*?") {
		return fmt.Errorf("%w: subject %q contains a wildcard, but subjects match exactly; for a pattern use claimsMatchingExpression claims['sub'] matches '%s'", ErrInvalid, s, strings.ReplaceAll(s, "'", "''"))
	}
	return nil
}

// maxFederated is the configured bound on an identity's credentials.
func (a *Authority) maxFederated() int {
	if a.cfg.MaxFederatedCredentials > 0 {
		return a.cfg.MaxFederatedCredentials
	}
	return DefaultMaxFederatedCredentials
}

// AddFederatedCredential adds (or, by name, replaces) a federated identity
// credential on a managed identity or service principal.
func (a *Authority) AddFederatedCredential(ctx context.Context, tenant, appID string, c federation.Credential) (federation.Credential, error) {
	if err := ValidateFederatedCredential(c); err != nil {
		return federation.Credential{}, err
	}
	for range 8 {
		var p Principal
		prev, err := a.getJSON(ctx, principalKey(tenant, appID), &p, "application "+appID+" in tenant "+tenant)
		if err != nil {
			return federation.Credential{}, err
		}
		if p.SystemAssigned {
			return federation.Credential{}, fmt.Errorf("%w: system-assigned identities cannot have federated credentials", ErrInvalid)
		}
		if len(p.LegacyFederated) > 0 {
			if err := a.migrateFederated(ctx, p, prev); err != nil && !errors.Is(err, barrier.ErrConflict) {
				return federation.Credential{}, err
			}
			continue
		}
		ck, ik := fedCredKey(tenant, p.AppID, c.Name), fedIndexKey(tenant, p.AppID, c)
		conds := []barrier.Cond{{Key: principalKey(tenant, appID), Rev: prev}}
		var ops []barrier.Op
		// The index key must be free unless this credential already holds
		// it (a replacement that keeps issuer and subject or expression).
		claimIndex := true
		old, err := a.st.Get(ctx, ck)
		switch {
		case err == nil:
			var oc federation.Credential
			if err := json.Unmarshal(old.Value, &oc); err != nil {
				return federation.Credential{}, err
			}
			conds = append(conds, barrier.Cond{Key: ck, Rev: old.Rev})
			if oik := fedIndexKey(tenant, p.AppID, oc); oik != ik {
				ops = append(ops, barrier.Op{Key: oik, Delete: true})
			} else {
				claimIndex = false
			}
		case errors.Is(err, barrier.ErrNotFound):
			conds = append(conds, barrier.Cond{Key: ck})
			p.FederatedCount++
		default:
			return federation.Credential{}, err
		}
		if claimIndex {
			if err := a.checkFederatedUnique(ctx, ik, c); err != nil {
				return federation.Credential{}, err
			}
			conds = append(conds, barrier.Cond{Key: ik})
		}
		if p.FederatedCount > a.maxFederated() {
			return federation.Credential{}, fmt.Errorf("%w: %s already has %d federated credentials, the limit: delete unused ones, or cover many subjects with one claimsMatchingExpression", ErrInvalid, p.DisplayName, p.FederatedCount-1)
		}
		b, _ := json.Marshal(c)
		pb, _ := json.Marshal(p)
		ops = append(ops, barrier.Op{Key: ck, Value: b}, barrier.Op{Key: ik, Value: b}, barrier.Op{Key: principalKey(tenant, appID), Value: pb})
		err = a.st.Apply(ctx, conds, ops)
		if errors.Is(err, barrier.ErrConflict) {
			continue
		}
		if err != nil {
			return federation.Credential{}, err
		}
		return c, nil
	}
	return federation.Credential{}, fmt.Errorf("principal %s kept changing; retry", appID)
}

// checkFederatedUnique refuses c if another credential already holds its
// index key: the same issuer and subject, or the same issuer and expression.
func (a *Authority) checkFederatedUnique(ctx context.Context, ik string, c federation.Credential) error {
	rec, err := a.st.Get(ctx, ik)
	if errors.Is(err, barrier.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var other federation.Credential
	if err := json.Unmarshal(rec.Value, &other); err != nil {
		return err
	}
	if other.Name == c.Name {
		return nil
	}
	if c.ClaimsMatchingExpression != nil {
		return fmt.Errorf("%w: federated credential %s already trusts issuer %s with claimsMatchingExpression %q", ErrExists, other.Name, c.Issuer, c.ClaimsMatchingExpression.Value)
	}
	return fmt.Errorf("%w: federated credential %s already trusts issuer %s and subject %s", ErrExists, other.Name, c.Issuer, c.Subject)
}

// DeleteFederatedCredential removes a federated credential by name.
func (a *Authority) DeleteFederatedCredential(ctx context.Context, tenant, appID, name string) error {
	for range 8 {
		var p Principal
		prev, err := a.getJSON(ctx, principalKey(tenant, appID), &p, "application "+appID+" in tenant "+tenant)
		if err != nil {
			return err
		}
		if len(p.LegacyFederated) > 0 {
			if err := a.migrateFederated(ctx, p, prev); err != nil && !errors.Is(err, barrier.ErrConflict) {
				return err
			}
			continue
		}
		ck := fedCredKey(tenant, p.AppID, name)
		var c federation.Credential
		rev, err := a.getJSON(ctx, ck, &c, p.DisplayName+"'s federated credential "+name)
		if err != nil {
			return err
		}
		p.FederatedCount = max(p.FederatedCount-1, 0)
		pb, _ := json.Marshal(p)
		err = a.st.Apply(ctx,
			[]barrier.Cond{{Key: principalKey(tenant, appID), Rev: prev}, {Key: ck, Rev: rev}},
			[]barrier.Op{{Key: ck, Delete: true}, {Key: fedIndexKey(tenant, p.AppID, c), Delete: true}, {Key: principalKey(tenant, appID), Value: pb}})
		if errors.Is(err, barrier.ErrConflict) {
			continue
		}
		return err
	}
	return fmt.Errorf("principal %s kept changing; retry", appID)
}

// ListFederatedCredentials returns a principal's federated credentials in
// name order.
func (a *Authority) ListFederatedCredentials(ctx context.Context, tenant, appID string) ([]federation.Credential, error) {
	p, err := a.Principal(ctx, tenant, appID)
	if err != nil {
		return nil, err
	}
	recs, err := a.st.Scan(ctx, fedCredPrefix+tenant+"/"+strings.ToLower(p.AppID)+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]federation.Credential, 0, len(recs)+len(p.LegacyFederated))
	for _, rec := range recs {
		var c federation.Credential
		if err := json.Unmarshal(rec.Value, &c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return append(out, p.LegacyFederated...), nil
}

// federatedLookup finds a principal's credentials through the index.
type federatedLookup struct {
	a           *Authority
	tenant, app string
	legacy      federation.List // not yet migrated; see migrateFederated
}

func (l federatedLookup) TrustsIssuer(ctx context.Context, issuer string) (bool, error) {
	if ok, _ := l.legacy.TrustsIssuer(ctx, issuer); ok {
		return true, nil
	}
	recs, err := l.a.st.Scan(ctx, fedIssuerKey(l.tenant, l.app, issuer), "", 1)
	return len(recs) > 0, err
}

func (l federatedLookup) Candidates(ctx context.Context, issuer, subject string) ([]federation.Credential, error) {
	out, _ := l.legacy.Candidates(ctx, issuer, subject)
	add := func(v []byte) error {
		var c federation.Credential
		if err := json.Unmarshal(v, &c); err != nil {
			return err
		}
		out = append(out, c)
		return nil
	}
	base := fedIssuerKey(l.tenant, l.app, issuer)
	rec, err := l.a.st.Get(ctx, base+"s/"+hashKey(subject))
	switch {
	case err == nil:
		if err := add(rec.Value); err != nil {
			return nil, err
		}
	case !errors.Is(err, barrier.ErrNotFound):
		return nil, err
	}
	for _, pre := range federation.SubjectPrefixes(subject) {
		recs, err := l.a.st.Scan(ctx, base+"x/"+hashKey(pre)+"/", "", 0)
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			if err := add(rec.Value); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (l federatedLookup) Sample(ctx context.Context, issuer string, n int) ([]federation.Credential, error) {
	out, _ := l.legacy.Sample(ctx, issuer, n)
	if len(out) >= n {
		return out, nil // a limit of 0 would scan everything
	}
	recs, err := l.a.st.Scan(ctx, fedIssuerKey(l.tenant, l.app, issuer), "", n-len(out))
	if err != nil {
		return nil, err
	}
	for _, rec := range recs {
		var c federation.Credential
		if err := json.Unmarshal(rec.Value, &c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// migrateFederated moves credentials that a store written before the index
// holds inside the principal record into their own records, in one Apply
// conditioned on the principal's revision; a conflict means another replica
// changed (or migrated) it first.
func (a *Authority) migrateFederated(ctx context.Context, p Principal, rev barrier.Rev) error {
	pk := principalKey(p.TenantID, p.AppID)
	conds := []barrier.Cond{{Key: pk, Rev: rev}}
	var ops []barrier.Op
	seen := map[string]bool{}
	for _, c := range p.LegacyFederated {
		// Old records only had exact subjects; one without a subject never
		// matched anything. Ones the new rules refuse (a '*' in a subject)
		// keep their old exact meaning.
		if c.Subject == "" || c.ClaimsMatchingExpression != nil || seen[c.Name] {
			continue
		}
		ck, ik := fedCredKey(p.TenantID, p.AppID, c.Name), fedIndexKey(p.TenantID, p.AppID, c)
		if seen[ik] {
			continue
		}
		seen[c.Name], seen[ik] = true, true
		b, _ := json.Marshal(c)
		conds = append(conds, barrier.Cond{Key: ck}, barrier.Cond{Key: ik})
		ops = append(ops, barrier.Op{Key: ck, Value: b}, barrier.Op{Key: ik, Value: b})
		p.FederatedCount++
	}
	p.LegacyFederated = nil
	pb, _ := json.Marshal(p)
	return a.st.Apply(ctx, conds, append(ops, barrier.Op{Key: pk, Value: pb}))
}

// migrateAllFederated migrates every principal that still holds inline
// credentials; Open runs it, so a store upgraded in place keeps working.
func (a *Authority) migrateAllFederated(ctx context.Context) error {
	recs, err := a.st.Scan(ctx, principalPrefix, "", 0)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		var p Principal
		if err := json.Unmarshal(rec.Value, &p); err != nil {
			return err
		}
		if len(p.LegacyFederated) == 0 {
			continue
		}
		if err := a.migrateFederated(ctx, p, rec.Rev); err != nil && !errors.Is(err, barrier.ErrConflict) {
			return fmt.Errorf("move %s's federated credentials to their own records: %w", p.AppID, err)
		}
	}
	return nil
}
