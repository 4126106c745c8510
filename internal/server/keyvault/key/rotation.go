package key

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// RotationPolicy is a key's rotation policy in Key Vault's JSON shape.
// It is kept in the key's head, beside its versions, so it moves with the
// key through delete, recover, backup and restore.
type RotationPolicy struct {
	ID              string             `json:"id,omitempty"`
	LifetimeActions []RotationAction   `json:"lifetimeActions"`
	Attributes      RotationPolicyAttr `json:"attributes"`
}

// RotationAction is one lifetime action: what to do, and when.
type RotationAction struct {
	Trigger RotationTrigger `json:"trigger"`
	Action  struct {
		Type string `json:"type"`
	} `json:"action"`
}

// RotationTrigger says when an action runs: a time after the current
// version's creation, or before its expiry.
type RotationTrigger struct {
	TimeAfterCreate  string `json:"timeAfterCreate,omitempty"`
	TimeBeforeExpiry string `json:"timeBeforeExpiry,omitempty"`
}

// RotationPolicyAttr are the policy's attributes: the expiry given to each
// version it makes, and when the policy was created and last updated.
type RotationPolicyAttr struct {
	ExpiryTime string `json:"expiryTime,omitempty"`
	Created    int64  `json:"created,omitempty"`
	Updated    int64  `json:"updated,omitempty"`
}

// Rotation policy action types, as Azure spells them.
const (
	ActionRotate = "Rotate"
	ActionNotify = "Notify"
)

// The limits Azure puts on a rotation policy.
const (
	minExpiry       = 28 * 24 * time.Hour
	minTriggerAfter = 7 * 24 * time.Hour // a rotation no sooner than a week after creation
	minBeforeExpiry = 7 * 24 * time.Hour // nor within a week of expiry
)

// DefaultNotifyBefore is when Key Vault's default policy notifies of a
// key's coming expiry.
const DefaultNotifyBefore = "P30D"

// defaultPolicy is what a key without a policy of its own reports: notify
// 30 days before expiry, and no rotation.
func defaultPolicy() RotationPolicy {
	var a RotationAction
	a.Trigger.TimeBeforeExpiry, a.Action.Type = DefaultNotifyBefore, ActionNotify
	return RotationPolicy{LifetimeActions: []RotationAction{a}}
}

// meta is what a key keeps in its head.
type meta struct {
	RotationPolicy *RotationPolicy `json:"rotationPolicy,omitempty"`
}

func decodeMeta(raw json.RawMessage) meta {
	var m meta
	if len(raw) > 0 {
		json.Unmarshal(raw, &m)
	}
	return m
}

// ValidateRotationPolicy checks p against Key Vault's rules and returns it
// with the action types in Azure's spelling. An empty action list is valid:
// it restores the default policy.
func ValidateRotationPolicy(p RotationPolicy) (RotationPolicy, error) {
	var expiry *Duration
	if e := p.Attributes.ExpiryTime; e != "" {
		d, err := ParseDuration(e)
		if err != nil {
			return p, object.Invalidf("attributes.expiryTime: %v.", err)
		}
		if d.Approx() < minExpiry {
			return p, object.Invalidf("attributes.expiryTime %s is too short: the expiry of a key version made by a rotation policy must be at least 28 days (P28D).", e)
		}
		expiry = &d
	}
	if len(p.LifetimeActions) > 2 {
		return p, object.Invalidf("A rotation policy has at most two lifetime actions, one Rotate and one Notify; this one has %d.", len(p.LifetimeActions))
	}
	seen := map[string]bool{}
	for i := range p.LifetimeActions {
		a := &p.LifetimeActions[i]
		switch strings.ToLower(a.Action.Type) {
		case "rotate":
			a.Action.Type = ActionRotate
		case "notify":
			a.Action.Type = ActionNotify
		default:
			return p, object.Invalidf("lifetimeActions[%d].action.type %q is unknown: use Rotate or Notify.", i, a.Action.Type)
		}
		if seen[a.Action.Type] {
			return p, object.Invalidf("A rotation policy has at most one %s action.", a.Action.Type)
		}
		seen[a.Action.Type] = true
		t := a.Trigger
		if (t.TimeAfterCreate == "") == (t.TimeBeforeExpiry == "") {
			return p, object.Invalidf("lifetimeActions[%d].trigger needs exactly one of timeAfterCreate and timeBeforeExpiry.", i)
		}
		if t.TimeAfterCreate != "" {
			if a.Action.Type == ActionNotify {
				return p, object.Invalidf("lifetimeActions[%d]: a Notify action triggers only on timeBeforeExpiry; timeAfterCreate applies to Rotate.", i)
			}
			d, err := ParseDuration(t.TimeAfterCreate)
			if err != nil {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeAfterCreate: %v.", i, err)
			}
			if d.Approx() < minTriggerAfter {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeAfterCreate %s is too soon: a key can be rotated no sooner than 7 days (P7D) after it was created.", i, t.TimeAfterCreate)
			}
			if expiry != nil && expiry.Approx()-d.Approx() < minBeforeExpiry {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeAfterCreate %s is too close to attributes.expiryTime %s: a rotation must come at least 7 days before the version expires.", i, t.TimeAfterCreate, expiry)
			}
		}
		if t.TimeBeforeExpiry != "" {
			d, err := ParseDuration(t.TimeBeforeExpiry)
			if err != nil {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeBeforeExpiry: %v.", i, err)
			}
			if d.Approx() < minBeforeExpiry {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeBeforeExpiry %s is too short: it must be at least 7 days (P7D).", i, t.TimeBeforeExpiry)
			}
			if a.Action.Type == ActionRotate && expiry != nil && expiry.Approx()-d.Approx() < minTriggerAfter {
				return p, object.Invalidf("lifetimeActions[%d].trigger.timeBeforeExpiry %s is too close to attributes.expiryTime %s: a rotation must come at least 7 days after the version was created.", i, t.TimeBeforeExpiry, expiry)
			}
		}
	}
	return p, nil
}

// GetRotationPolicy returns a key's rotation policy, or Key Vault's default
// for a key that has none.
func (s *Service) GetRotationPolicy(ctx context.Context, v *vault.Vault, name string) (RotationPolicy, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return RotationPolicy{}, err
	}
	_, h, err := s.coll.Get(ctx, v.Name, name, "")
	if err != nil {
		return RotationPolicy{}, kind.Map(err, name, "")
	}
	if p := decodeMeta(h.Meta).RotationPolicy; p != nil {
		return *p, nil
	}
	return defaultPolicy(), nil
}

// SetRotationPolicy replaces a key's rotation policy. Certificate-managed
// keys have none: their certificate's policy renews them.
func (s *Service) SetRotationPolicy(ctx context.Context, v *vault.Vault, name string, in RotationPolicy) (RotationPolicy, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return RotationPolicy{}, err
	}
	p, err := ValidateRotationPolicy(in)
	if err != nil {
		return RotationPolicy{}, err
	}
	p.ID = ""
	defer s.coll.Lock(v.Name, name)()
	var out RotationPolicy
	err = object.Retry(func() error {
		cur, _, err := s.coll.Get(ctx, v.Name, name, "")
		if err != nil {
			return err
		}
		if cur.Managed {
			return kind.Managed("setrotationpolicy", "set the lifetime actions of certificate "+name+"'s policy instead.")
		}
		ch, err := s.coll.StageHeadMeta(ctx, v.Name, name, func(raw json.RawMessage) (json.RawMessage, error) {
			m := decodeMeta(raw)
			now := s.now().Unix()
			p.Attributes.Created, p.Attributes.Updated = now, now
			if m.RotationPolicy != nil && m.RotationPolicy.Attributes.Created != 0 {
				p.Attributes.Created = m.RotationPolicy.Attributes.Created
			}
			if len(p.LifetimeActions) == 0 {
				// An empty list restores the default actions; the policy's
				// own expiry and times stay, as Azure keeps them.
				p.LifetimeActions = defaultPolicy().LifetimeActions
			}
			m.RotationPolicy = &p
			out = p
			return json.Marshal(m)
		})
		if err != nil {
			return err
		}
		return object.Apply(ctx, s.st, ch)
	})
	return out, kind.Map(err, name, "")
}

// rotationExpiry is the exp a new version gets under the head's policy,
// nil when the policy sets none.
func (s *Service) rotationExpiry(raw json.RawMessage, now time.Time) *int64 {
	p := decodeMeta(raw).RotationPolicy
	if p == nil || p.Attributes.ExpiryTime == "" {
		return nil
	}
	d, err := ParseDuration(p.Attributes.ExpiryTime)
	if err != nil {
		return nil
	}
	exp := d.After(now).Unix()
	return &exp
}

// RotationDue reports whether p's Rotate action has triggered for a current
// version with attributes a.
func RotationDue(p *RotationPolicy, a object.Attributes, now time.Time) bool {
	if p == nil {
		return false
	}
	for _, la := range p.LifetimeActions {
		if la.Action.Type != ActionRotate {
			continue
		}
		if t := la.Trigger.TimeAfterCreate; t != "" {
			d, err := ParseDuration(t)
			return err == nil && !now.Before(d.After(time.Unix(a.Created, 0)))
		}
		if t := la.Trigger.TimeBeforeExpiry; t != "" && a.Expires != nil {
			d, err := ParseDuration(t)
			return err == nil && !now.Before(d.Before(time.Unix(*a.Expires, 0)))
		}
	}
	return false
}

// NotifyBefore returns how long before a version's expiry the key's policy
// asks to be told of it: its Notify action, or the default 30 days.
func NotifyBefore(raw json.RawMessage) Duration {
	d, _ := ParseDuration(DefaultNotifyBefore)
	if p := decodeMeta(raw).RotationPolicy; p != nil {
		for _, la := range p.LifetimeActions {
			if la.Action.Type == ActionNotify && la.Trigger.TimeBeforeExpiry != "" {
				if n, err := ParseDuration(la.Trigger.TimeBeforeExpiry); err == nil {
					d = n
				}
			}
		}
	}
	return d
}

// RotateDue rotates, in vault v, each key whose policy's Rotate action has
// triggered, and returns how many it rotated. It runs on the one replica
// that leads the scheduled jobs; a rotation moves the key's creation time
// on, so the same trigger does not fire again for the new version.
func (s *Service) RotateDue(ctx context.Context, v *vault.Vault) (int, error) {
	now := s.now()
	n, after := 0, ""
	var errs []error
	for {
		items, next, err := s.coll.List(ctx, v.Name, after, 100)
		if err != nil {
			return n, err
		}
		for _, it := range items {
			if it.Current.Managed || !RotationDue(decodeMeta(it.Head.Meta).RotationPolicy, it.Current.Attributes, now) {
				continue
			}
			if _, err := s.Rotate(ctx, v, it.Head.Name); err != nil {
				if !errors.Is(err, object.ErrNotFound) { // deleted meanwhile
					errs = append(errs, err)
				}
				continue
			}
			n++
		}
		if next == "" {
			return n, errors.Join(errs...)
		}
		after = next
	}
}
