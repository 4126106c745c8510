package authority

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/go-jose/go-jose/v4"
)

const signingPrefix = "authority/signing/"

type storedKey struct {
	ID      string `json:"kid"`
	DER     []byte `json:"pkcs8"`
	Created int64  `json:"created"`
	Retired int64  `json:"retired,omitempty"`
}

func (a *Authority) loadKeys(ctx context.Context) error {
	keys, err := a.readKeys(ctx)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.keys = keys
	a.mu.Unlock()
	a.gen.Add(1)
	if f, ok := a.st.(barrier.Follower); ok {
		// A key another replica rotated in signs and validates here too.
		// The lock is held while reading, as RotateSigningKey holds it
		// across its write, so an older set never replaces a newer one.
		f.Follow(signingPrefix, func(ctx context.Context, _ []string, _ bool) {
			a.mu.Lock()
			defer a.mu.Unlock()
			if keys, err := a.readKeys(ctx); err == nil {
				a.keys = keys
				a.gen.Add(1)
			}
		})
	}
	return nil
}

// readKeys reads the stored signing keys, in signing order.
func (a *Authority) readKeys(ctx context.Context) ([]*token.SigningKey, error) {
	recs, err := a.st.Scan(ctx, signingPrefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	var keys []*token.SigningKey
	for _, rec := range recs {
		var sk storedKey
		if err := json.Unmarshal(rec.Value, &sk); err != nil {
			return nil, fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		priv, err := token.ParsePrivate(sk.DER)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", sk.ID, err)
		}
		k, err := token.KeyFromPrivate(priv, time.Unix(sk.Created, 0))
		if err != nil {
			return nil, err
		}
		if sk.Retired != 0 {
			k.Retired = time.Unix(sk.Retired, 0)
		}
		keys = append(keys, k)
	}
	slices.SortStableFunc(keys, signingOrder)
	return keys, nil
}

// signingOrder sorts retired keys first, by when they were retired, then
// created, and the active key (never retired) last, where signer takes it.
// Created is whole seconds, so keys from rotations within one second tie
// on it: only Retired tells which one signs.
func signingOrder(x, y *token.SigningKey) int {
	if xActive, yActive := x.Retired.IsZero(), y.Retired.IsZero(); xActive != yActive {
		if xActive {
			return 1
		}
		return -1
	}
	if c := x.Retired.Compare(y.Retired); c != 0 {
		return c
	}
	return x.Created.Compare(y.Created)
}

// RotateSigningKey makes a new key the signing key. Older keys stay in the
// JWKS, and keep validating, until every token they signed has expired;
// then the next rotation drops them.
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
		retired := old.Retired
		if retired.IsZero() {
			retired = now
		}
		if now.Sub(retired) > a.cfg.TokenLifetime+token.DefaultLeeway {
			ops = append(ops, barrier.Op{Key: signingPrefix + old.ID, Delete: true})
			continue
		}
		oldDER, err := old.MarshalPrivate()
		if err != nil {
			return "", err
		}
		b, _ := json.Marshal(storedKey{ID: old.ID, DER: oldDER, Created: old.Created.Unix(), Retired: retired.Unix()})
		ops = append(ops, barrier.Op{Key: signingPrefix + old.ID, Value: b})
		kept = append(kept, old)
	}
	b, _ := json.Marshal(storedKey{ID: k.ID, DER: der, Created: now.Unix()})
	ops = append(ops, barrier.Op{Key: signingPrefix + k.ID, Value: b})
	if err := a.st.Apply(ctx, nil, ops); err != nil {
		return "", fmt.Errorf("store signing key: %w", err)
	}
	for _, old := range kept {
		if old.Retired.IsZero() {
			old.Retired = now
		}
	}
	a.keys = append(kept, k)
	a.gen.Add(1)
	return k.ID, nil
}

// PublicKey implements token.Keys. A retired key validates only while
// tokens it signed can still be live.
func (a *Authority) PublicKey(kid string) (*rsa.PublicKey, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, k := range a.keys {
		if k.ID == kid {
			if !k.Retired.IsZero() && a.now().Sub(k.Retired) > a.cfg.TokenLifetime+token.DefaultLeeway {
				return nil, false
			}
			return &k.Private.PublicKey, true
		}
	}
	return nil, false
}

// Generation implements token.Keys.
func (a *Authority) Generation() uint64 { return a.gen.Load() }

// JWKS returns the public signing keys as a JSON Web Key Set.
func (a *Authority) JWKS() jose.JSONWebKeySet {
	a.mu.RLock()
	defer a.mu.RUnlock()
	set := jose.JSONWebKeySet{}
	for _, k := range a.keys {
		if !k.Retired.IsZero() && a.now().Sub(k.Retired) > a.cfg.TokenLifetime+token.DefaultLeeway {
			continue
		}
		set.Keys = append(set.Keys, k.PublicJWK())
	}
	return set
}

func (a *Authority) signer() *token.SigningKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.keys[len(a.keys)-1]
}
