package cert

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// Resume restarts the vault's operations a stop interrupted: those still in
// progress that are not waiting for a merge. Issuance is idempotent up to
// its commit, which is atomic, so running it again is safe.
func (s *Service) Resume(ctx context.Context, v *vault.Vault) (int, error) {
	prefix := opPrefix + v.Name + "/"
	n, after := 0, ""
	for {
		recs, err := s.st.Scan(ctx, prefix, after, 100)
		if err != nil {
			return n, err
		}
		for _, rec := range recs {
			var p pending
			if json.Unmarshal(rec.Value, &p) != nil || p.Op.Status != InProgress || p.Key != nil || p.Name == "" {
				continue
			}
			s.start(v, p.Name)
			n++
		}
		if len(recs) < 100 {
			return n, nil
		}
		after = recs[len(recs)-1].Key
	}
}

// RenewDue starts a new version of each certificate in the vault whose
// AutoRenew lifetime action has triggered. It returns how many it started.
func (s *Service) RenewDue(ctx context.Context, v *vault.Vault) (int, error) {
	now := s.now()
	n, after := 0, ""
	for {
		items, next, err := s.certs.List(ctx, v.Name, after, 100)
		if err != nil {
			return n, err
		}
		for _, it := range items {
			c := s.toCert(it.Current, it.Head)
			if c.Policy == nil || !renewDue(c.Policy, c.Attributes, now) {
				continue
			}
			_, err := s.Create(ctx, v, c.Name, nil, nil, c.Tags)
			switch {
			case err == nil:
				n++
				s.log.Info("renewing certificate", "vault", v.Name, "certificate", c.Name)
			case errors.Is(err, object.ErrExists):
				// An operation is already under way.
			default:
				s.log.Error("certificate renewal failed to start", "vault", v.Name, "certificate", c.Name, "err", err)
			}
		}
		if next == "" {
			return n, nil
		}
		after = next
	}
}

// renewDue reports whether p's AutoRenew action has triggered for a version
// valid over a's nbf to exp.
func renewDue(p *Policy, a object.Attributes, now time.Time) bool {
	if p.Issuer == nil || p.Issuer.Name == IssuerUnknown || a.NotBefore == nil || a.Expires == nil {
		return false
	}
	for _, la := range p.LifetimeActions {
		if la.Action.ActionType != AutoRenew {
			continue
		}
		nbf, exp := *a.NotBefore, *a.Expires
		at := exp - int64(la.Trigger.DaysBeforeExpiry)*86400
		if pct := la.Trigger.LifetimePercentage; pct > 0 {
			at = nbf + (exp-nbf)*int64(pct)/100
		}
		return now.Unix() >= at
	}
	return false
}
