package events

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

const (
	subPrefix   = "evsubs/"
	statePrefix = "evstate/"
	queuePrefix = "evq/"
	seqKey      = "evseq"
	// MaxSubscriptions is how many subscriptions a vault may have.
	MaxSubscriptions = 25
)

// Subscription is one vault's event subscription. Secret signs its
// deliveries; it is shown once, when the subscription is created.
type Subscription struct {
	Name               string   `json:"name"`
	Vault              string   `json:"vaultName"`
	Endpoint           string   `json:"endpoint"`
	IncludedEventTypes []string `json:"includedEventTypes"`
	Secret             string   `json:"secret,omitempty"`
	Created            int64    `json:"created"`
	// DeadLettered counts the events dropped after their last retry.
	DeadLettered int64 `json:"deadLettered"`
}

// Public is the subscription without its secret.
func (s Subscription) Public() Subscription {
	s.Secret = ""
	return s
}

// wants reports whether the subscription takes events of type t: those it
// names, or with none named, all of Azure's.
func (s *Subscription) wants(t string) bool {
	if len(s.IncludedEventTypes) == 0 {
		return strings.HasPrefix(t, azurePrefix)
	}
	return slices.Contains(s.IncludedEventTypes, t)
}

// Event Grid's rule for subscription names.
var subNameRE = regexp.MustCompile(`^[A-Za-z0-9-]{3,64}$`)

func subKey(vaultName, name string) string {
	return subPrefix + vaultName + "/" + strings.ToLower(name)
}

// Create adds a subscription to vault v and returns it with its secret.
func (s *Service) Create(ctx context.Context, v *vault.Vault, in Subscription) (Subscription, error) {
	if !subNameRE.MatchString(in.Name) {
		return Subscription{}, fmt.Errorf("%w: name %q: use 3-64 letters, digits and hyphens", ErrInvalid, in.Name)
	}
	if _, err := s.o.Egress.CheckURL(in.Endpoint); err != nil {
		return Subscription{}, fmt.Errorf("%w: endpoint: %v", ErrInvalid, err)
	}
	types := []string{}
	for _, t := range in.IncludedEventTypes {
		i := slices.IndexFunc(AllTypes(), func(k string) bool { return strings.EqualFold(k, t) })
		if i < 0 {
			return Subscription{}, fmt.Errorf("%w: %q is not an event type; use %s", ErrInvalid, t, strings.Join(AllTypes(), ", "))
		}
		if !slices.Contains(types, AllTypes()[i]) {
			types = append(types, AllTypes()[i])
		}
	}
	var secret [32]byte
	rand.Read(secret[:])
	sub := Subscription{Name: in.Name, Vault: v.Name, Endpoint: in.Endpoint, IncludedEventTypes: types,
		Secret: base64.RawURLEncoding.EncodeToString(secret[:]), Created: s.o.Now().Unix()}
	existing, err := s.List(ctx, v)
	if err != nil {
		return Subscription{}, err
	}
	if len(existing) >= MaxSubscriptions {
		return Subscription{}, fmt.Errorf("%w: vault %s has %d subscriptions, the limit", ErrInvalid, v.Name, MaxSubscriptions)
	}
	b, _ := json.Marshal(sub)
	k := subKey(v.Name, in.Name)
	err = s.st.Apply(ctx, []barrier.Cond{{Key: k}}, []barrier.Op{{Key: k, Value: b}})
	if errors.Is(err, barrier.ErrConflict) {
		return Subscription{}, fmt.Errorf("%w: %s in vault %s", ErrExists, in.Name, v.Name)
	}
	if err != nil {
		return Subscription{}, err
	}
	s.TouchAll()
	return sub, nil
}

// Get returns a subscription, without its secret.
func (s *Service) Get(ctx context.Context, v *vault.Vault, name string) (Subscription, error) {
	sub, _, err := s.get(ctx, v.Name, name)
	return sub.Public(), err
}

func (s *Service) get(ctx context.Context, vaultName, name string) (Subscription, barrier.Rev, error) {
	rec, err := s.st.Get(ctx, subKey(vaultName, name))
	if errors.Is(err, barrier.ErrNotFound) {
		return Subscription{}, nil, fmt.Errorf("%w: %s in vault %s", ErrNotFound, name, vaultName)
	}
	if err != nil {
		return Subscription{}, nil, err
	}
	var sub Subscription
	if err := json.Unmarshal(rec.Value, &sub); err != nil {
		return Subscription{}, nil, err
	}
	return sub, rec.Rev, nil
}

// List returns a vault's subscriptions, by name, without their secrets.
func (s *Service) List(ctx context.Context, v *vault.Vault) ([]Subscription, error) {
	recs, err := s.st.Scan(ctx, subPrefix+v.Name+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := []Subscription{}
	for _, rec := range recs {
		var sub Subscription
		if json.Unmarshal(rec.Value, &sub) == nil {
			out = append(out, sub.Public())
		}
	}
	return out, nil
}

// Delete removes a subscription and the events still queued for it.
func (s *Service) Delete(ctx context.Context, v *vault.Vault, name string) error {
	_, rev, err := s.get(ctx, v.Name, name)
	if err != nil {
		return err
	}
	k := subKey(v.Name, name)
	if err := s.st.Apply(ctx, []barrier.Cond{{Key: k, Rev: rev}}, []barrier.Op{{Key: k, Delete: true}}); err != nil {
		return err
	}
	// The queue goes after the subscription, in pages: a delivery that
	// finds no subscription drops its event anyway.
	prefix := queuePrefix + v.Name + "/" + strings.ToLower(name) + "/"
	for {
		recs, err := s.st.Scan(ctx, prefix, "", 500)
		if err != nil || len(recs) == 0 {
			return err
		}
		ops := make([]barrier.Op, len(recs))
		for i, r := range recs {
			ops[i] = barrier.Op{Key: r.Key, Delete: true}
		}
		if err := s.st.Apply(ctx, nil, ops); err != nil {
			return err
		}
	}
}

// allSubscriptions returns every subscription, with secrets, by vault.
func (s *Service) allSubscriptions(ctx context.Context) (map[string][]Subscription, error) {
	recs, err := s.st.Scan(ctx, subPrefix, "", 0)
	if err != nil {
		return nil, err
	}
	out := map[string][]Subscription{}
	for _, rec := range recs {
		var sub Subscription
		if json.Unmarshal(rec.Value, &sub) == nil {
			out[sub.Vault] = append(out[sub.Vault], sub)
		}
	}
	return out, nil
}
