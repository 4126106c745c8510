// Package key implements Key Vault keys on top of the object store:
// creation, import, rotation, lifecycle rules, and the cryptographic
// operations, with key_ops and enabled/nbf/exp enforced on each.
package key

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

const kind object.Kind = "key"

const (
	backupPurpose = "backup/keys/v1"
	// Collection is the object-store kind of keys.
	Collection  = "keys"
	maxRNGBytes = 128
)

// Data is what a key version stores, sealed: the private JWK and the
// allowed operations.
type Data struct {
	JWK    keyops.JWK `json:"jwk"`
	KeyOps []string   `json:"keyOps"`
}

// Key is one key version, with its public JWK only.
type Key struct {
	Name       string
	Version    string
	Public     keyops.JWK
	KeyOps     []string
	Attributes object.Attributes
	Tags       map[string]string
	Managed    bool
}

// Deleted is a soft-deleted key.
type Deleted struct {
	Key
	DeletedDate    int64
	ScheduledPurge int64
}

// Attrs are the optional attributes of a create, import or update.
type Attrs struct {
	Enabled   *bool
	NotBefore *int64
	Expires   *int64
	Tags      map[string]string
	KeyOps    []string // nil: unchanged (update) or the type's defaults
}

// CreateParams describe a new key.
type CreateParams struct {
	Kty  string
	Size int
	Crv  string
	Attrs
}

// Service serves keys for every vault.
type Service struct {
	st   object.Store
	coll *object.Collection[Data]
	seal object.Sealer
	now  func() time.Time

	// materials caches parsed keys by vault/name/version: a version's key
	// material never changes, and parsing and checking an RSA key costs
	// more than many operations on it.
	materials sync.Map
	count     atomic.Int64
}

// New returns a service over st.
func New(st object.Store, seal object.Sealer, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	s := &Service{st: st, coll: object.New[Data](st, Collection, now), seal: seal, now: now}
	if f, ok := st.(barrier.Follower); ok {
		// A key another replica deleted or purged leaves no parsed copy
		// here: any change to a key drops its cached versions (reads reach
		// them only through the stored version, but memory should not
		// outlive the key).
		f.Follow("o/", func(_ context.Context, keys []string, all bool) {
			if all {
				s.materials.Clear()
				s.count.Store(0)
				return
			}
			for _, k := range keys {
				if v, kind, name, ok := object.Named(k); ok && kind == Collection {
					s.forget(v + "/" + strings.ToLower(name) + "/")
				}
			}
		})
	}
	return s
}

// Collection returns the underlying collection, for certificates, which
// keep their managed keys in it.
func (s *Service) Collection() *object.Collection[Data] { return s.coll }

func validateOps(kty string, ops []string) ([]string, error) {
	if ops == nil {
		return keyops.DefaultOps(kty), nil
	}
	valid := keyops.ValidOps(kty)
	out := []string{}
	for _, op := range ops {
		if !slices.Contains(valid, op) {
			return nil, object.Invalidf("key_ops %q does not apply to a %s key; use %v.", op, kty, valid)
		}
		if !slices.Contains(out, op) {
			out = append(out, op)
		}
	}
	return out, nil
}

func validateAttrs(a Attrs) error {
	if a.NotBefore != nil && a.Expires != nil && *a.Expires <= *a.NotBefore {
		return object.Invalidf("attributes.exp (%d) must be later than attributes.nbf (%d).", *a.Expires, *a.NotBefore)
	}
	if len(a.Tags) > 15 {
		return object.Invalidf("%d tags given; the limit is 15.", len(a.Tags))
	}
	return nil
}

// NewVersion builds a version for material m, with attributes a.
func NewVersion(m *keyops.Material, a Attrs, managed bool) (object.Version[Data], error) {
	ops, err := validateOps(m.Kty, a.KeyOps)
	if err != nil {
		return object.Version[Data]{}, err
	}
	v := object.Version[Data]{
		Attributes: object.Attributes{Enabled: true, NotBefore: a.NotBefore, Expires: a.Expires},
		Tags:       a.Tags, Managed: managed,
		Data: Data{JWK: m.PrivateJWK(), KeyOps: ops},
	}
	if a.Enabled != nil {
		v.Attributes.Enabled = *a.Enabled
	}
	return v, nil
}

func (s *Service) toKey(v object.Version[Data]) Key {
	pub := publicOf(v.Data.JWK)
	pub.KeyOps = v.Data.KeyOps
	return Key{Name: v.Name, Version: v.ID, Public: pub, KeyOps: v.Data.KeyOps, Attributes: v.Attributes, Tags: v.Tags, Managed: v.Managed}
}

// publicOf strips the private members of a stored JWK.
func publicOf(j keyops.JWK) keyops.JWK {
	return keyops.JWK{Kty: j.Kty, Crv: j.Crv, N: j.N, E: j.E, X: j.X, Y: j.Y}
}

func (s *Service) write(ctx context.Context, v *vault.Vault, op, name string, m *keyops.Material, a Attrs) (Key, error) {
	if err := validateAttrs(a); err != nil {
		return Key{}, err
	}
	nv, err := NewVersion(m, a, false)
	if err != nil {
		return Key{}, err
	}
	ver, _, err := s.coll.Create(ctx, v.Name, name, func(cur *object.Version[Data]) (object.Version[Data], error) {
		if cur != nil && cur.Managed {
			return object.Version[Data]{}, kind.Managed(op, "import or create a version of certificate "+name+" instead.")
		}
		return nv, nil
	})
	if err != nil {
		return Key{}, kind.Map(err, name, "")
	}
	return s.toKey(ver), nil
}

// Create generates a new key version.
func (s *Service) Create(ctx context.Context, v *vault.Vault, name string, p CreateParams) (Key, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Key{}, err
	}
	kty, err := keyops.NormalizeKty(p.Kty)
	if err != nil {
		return Key{}, object.Invalidf("%v", err)
	}
	m, err := keyops.Generate(kty, p.Size, p.Crv)
	if err != nil {
		return Key{}, object.Invalidf("%v", err)
	}
	return s.write(ctx, v, "create", name, m, p.Attrs)
}

// Import stores a key the caller supplies as a JWK with its private members.
func (s *Service) Import(ctx context.Context, v *vault.Vault, name string, j keyops.JWK, a Attrs) (Key, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Key{}, err
	}
	m, err := keyops.FromJWK(j)
	if err != nil {
		return Key{}, object.Invalidf("The key to import is not valid: %v", err)
	}
	if a.KeyOps == nil && len(j.KeyOps) > 0 {
		a.KeyOps = j.KeyOps
	}
	return s.write(ctx, v, "import", name, m, a)
}

// Rotate makes a new version like the current one: same type, size or
// curve, operations and tags, and the expiry the key's rotation policy
// gives new versions (none without one).
func (s *Service) Rotate(ctx context.Context, v *vault.Vault, name string) (Key, error) {
	cur, head, err := s.coll.Get(ctx, v.Name, name, "")
	if err != nil {
		return Key{}, kind.Map(err, name, "")
	}
	if cur.Managed {
		return Key{}, kind.Managed("rotate", "create a new version of certificate "+name+" instead.")
	}
	old, err := s.material(v, cur)
	if err != nil {
		return Key{}, err
	}
	size := old.Bits()
	if old.Kty == keyops.EC {
		size = 0
	}
	m, err := keyops.Generate(old.Kty, size, old.Crv)
	if err != nil {
		return Key{}, err
	}
	return s.write(ctx, v, "rotate", name, m, Attrs{KeyOps: cur.Data.KeyOps, Tags: cur.Tags, Expires: s.rotationExpiry(head.Meta, s.now())})
}

// Get returns a key version (public half only). Disabled keys are refused.
func (s *Service) Get(ctx context.Context, v *vault.Vault, name, version string) (Key, error) {
	ver, err := s.version(ctx, v, name, version)
	if err != nil {
		return Key{}, err
	}
	if !ver.Attributes.Enabled {
		return Key{}, object.Errorf(object.ErrForbidden, "KeyDisabled", "Operation get is not allowed on a disabled key.")
	}
	return s.toKey(ver), nil
}

func (s *Service) version(ctx context.Context, v *vault.Vault, name, version string) (object.Version[Data], error) {
	if err := kind.ValidateName(name, version); err != nil {
		return object.Version[Data]{}, err
	}
	ver, _, err := s.coll.Get(ctx, v.Name, name, version)
	return ver, kind.Map(err, name, version)
}

// Update changes a version's attributes, operations and tags.
func (s *Service) Update(ctx context.Context, v *vault.Vault, name, version string, a Attrs) (Key, error) {
	if err := kind.ValidateName(name, version); err != nil {
		return Key{}, err
	}
	if err := validateAttrs(a); err != nil {
		return Key{}, err
	}
	ver, err := s.coll.Update(ctx, v.Name, name, version, func(cur *object.Version[Data]) error {
		if cur.Managed {
			return kind.Managed("update", "update certificate "+name+" instead.")
		}
		if a.KeyOps != nil {
			ops, err := validateOps(cur.Data.JWK.Kty, a.KeyOps)
			if err != nil {
				return err
			}
			cur.Data.KeyOps = ops
		}
		return object.Patch{Enabled: a.Enabled, NotBefore: a.NotBefore, Expires: a.Expires, Tags: a.Tags}.Apply(&cur.Attributes, &cur.Tags)
	})
	if err != nil {
		return Key{}, kind.Map(err, name, version)
	}
	return s.toKey(ver), nil
}

// forget drops the cached versions whose id starts with prefix.
func (s *Service) forget(prefix string) {
	s.materials.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			s.materials.Delete(k)
		}
		return true
	})
}

// material returns a version's parsed key, from the cache when it can.
func (s *Service) material(v *vault.Vault, ver object.Version[Data]) (*keyops.Material, error) {
	id := v.Name + "/" + strings.ToLower(ver.Name) + "/" + ver.ID
	if m, ok := s.materials.Load(id); ok {
		return m.(*keyops.Material), nil
	}
	m, err := keyops.FromJWK(ver.Data.JWK)
	if err != nil {
		return nil, fmt.Errorf("stored key %s is damaged: %w", id, err)
	}
	if s.count.Add(1) > 10_000 {
		s.materials.Clear()
		s.count.Store(1)
	}
	s.materials.Store(id, m)
	return m, nil
}

// OpResult is the outcome of a cryptographic operation.
type OpResult struct {
	KID      string
	Value    []byte
	IV       []byte
	Tag      []byte
	AAD      []byte
	Verified *bool
}

// Operation names, as in key_ops.
const (
	Sign      = keyops.OpSign
	Verify    = keyops.OpVerify
	Encrypt   = keyops.OpEncrypt
	Decrypt   = keyops.OpDecrypt
	WrapKey   = keyops.OpWrapKey
	UnwrapKey = keyops.OpUnwrapKey
)

// Operate runs a cryptographic operation on a key version. The key must be
// enabled and allow op in its key_ops. Outside the key's nbf/exp window,
// Azure's rule applies: sign, encrypt and wrapKey are refused, while
// verify, decrypt and unwrapKey still work, so data protected before expiry
// stays readable.
func (s *Service) Operate(ctx context.Context, v *vault.Vault, name, version, op, alg string, p keyops.Params, signature []byte) (Key, OpResult, error) {
	ver, err := s.version(ctx, v, name, version)
	if err != nil {
		return Key{}, OpResult{}, err
	}
	k := s.toKey(ver)
	a := ver.Attributes
	if !a.Enabled {
		return k, OpResult{}, object.Errorf(object.ErrForbidden, "KeyDisabled", "Operation %s is not allowed on a disabled key.", op)
	}
	if !slices.Contains(ver.Data.KeyOps, op) {
		return k, OpResult{}, object.Errorf(object.ErrForbidden, "KeyOperationForbidden", "Operation %s is not permitted on this key: its key_ops are %v.", op, ver.Data.KeyOps)
	}
	if op == Sign || op == Encrypt || op == WrapKey {
		now := s.now().Unix()
		if a.NotBefore != nil && now < *a.NotBefore {
			return k, OpResult{}, object.Errorf(object.ErrForbidden, "KeyNotYetValid", "Operation %s is not allowed: key %s is not valid before %s.", op, name, time.Unix(*a.NotBefore, 0).UTC().Format(time.RFC3339))
		}
		if a.Expires != nil && now >= *a.Expires {
			return k, OpResult{}, object.Errorf(object.ErrForbidden, "KeyExpired", "Operation %s is not allowed: key %s expired at %s.", op, name, time.Unix(*a.Expires, 0).UTC().Format(time.RFC3339))
		}
	}
	m, err := s.material(v, ver)
	if err != nil {
		return k, OpResult{}, err
	}
	var r OpResult
	switch op {
	case Sign:
		r.Value, err = m.Sign(alg, p.Value)
	case Verify:
		var ok bool
		ok, err = m.Verify(alg, p.Value, signature)
		r.Verified = &ok
	case Encrypt, WrapKey:
		var res keyops.Result
		if op == Encrypt {
			res, err = m.Encrypt(alg, p)
		} else {
			res, err = m.Wrap(alg, p)
		}
		r.Value, r.IV, r.Tag = res.Value, res.IV, res.Tag
		if len(r.Tag) > 0 {
			r.AAD = p.AAD
		}
	case Decrypt:
		r.Value, err = m.Decrypt(alg, p)
	case UnwrapKey:
		r.Value, err = m.Unwrap(alg, p)
	default:
		err = fmt.Errorf("unknown operation %q", op)
	}
	if err != nil {
		return k, OpResult{}, object.Invalidf("%v", err)
	}
	return k, r, nil
}

// Random returns count random bytes (1 to 128), as POST /rng does.
func Random(count int) ([]byte, error) {
	if count < 1 || count > maxRNGBytes {
		return nil, object.Invalidf("count must be 1 to %d, got %d.", maxRNGBytes, count)
	}
	b := make([]byte, count)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// Delete soft-deletes a key.
func (s *Service) Delete(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Deleted{}, err
	}
	if cur, _, err := s.coll.Get(ctx, v.Name, name, ""); err == nil && cur.Managed {
		return Deleted{}, kind.Managed("delete", "delete certificate "+name+" instead.")
	}
	h, cur, err := s.coll.Delete(ctx, v.Name, name, v.Retention())
	if err != nil {
		return Deleted{}, kind.Map(err, name, "")
	}
	return Deleted{Key: s.toKey(cur), DeletedDate: h.DeletedDate, ScheduledPurge: h.ScheduledPurge}, nil
}

// GetDeleted returns a soft-deleted key.
func (s *Service) GetDeleted(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Deleted{}, err
	}
	h, cur, err := s.coll.GetDeleted(ctx, v.Name, name)
	if err != nil {
		return Deleted{}, kind.MapDeleted(err, name)
	}
	return Deleted{Key: s.toKey(cur), DeletedDate: h.DeletedDate, ScheduledPurge: h.ScheduledPurge}, nil
}

// Recover brings back a soft-deleted key.
func (s *Service) Recover(ctx context.Context, v *vault.Vault, name string) (Key, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return Key{}, err
	}
	_, cur, err := s.coll.Recover(ctx, v.Name, name)
	if err != nil {
		return Key{}, kind.MapDeleted(err, name)
	}
	return s.toKey(cur), nil
}

// Purge permanently removes a soft-deleted key.
func (s *Service) Purge(ctx context.Context, v *vault.Vault, name string) error {
	return kind.Purge(name, v.PurgeProtection, v.RetentionDays, func() error { return s.coll.Purge(ctx, v.Name, name) })
}

// PurgeDue purges the vault's deleted keys whose retention has passed.
func (s *Service) PurgeDue(ctx context.Context, v *vault.Vault) (int, error) {
	return s.coll.PurgeDueUnmanaged(ctx, v.Name, s.now())
}

// List returns a page of keys (current versions).
func (s *Service) List(ctx context.Context, v *vault.Vault, after string, limit int) ([]Key, string, error) {
	items, next, err := s.coll.List(ctx, v.Name, after, limit)
	out := make([]Key, len(items))
	for i, it := range items {
		out[i] = s.toKey(it.Current)
	}
	return out, next, err
}

// ListVersions returns a page of a key's versions.
func (s *Service) ListVersions(ctx context.Context, v *vault.Vault, name, after string, limit int) ([]Key, string, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return nil, "", err
	}
	vers, next, err := s.coll.ListVersions(ctx, v.Name, name, after, limit)
	if err != nil {
		return nil, "", kind.Map(err, name, "")
	}
	out := make([]Key, len(vers))
	for i, ver := range vers {
		out[i] = s.toKey(ver)
	}
	return out, next, nil
}

// ListDeleted returns a page of soft-deleted keys.
func (s *Service) ListDeleted(ctx context.Context, v *vault.Vault, after string, limit int) ([]Deleted, string, error) {
	items, next, err := s.coll.ListDeleted(ctx, v.Name, after, limit)
	out := make([]Deleted, len(items))
	for i, it := range items {
		out[i] = Deleted{Key: s.toKey(it.Current), DeletedDate: it.Head.DeletedDate, ScheduledPurge: it.Head.ScheduledPurge}
	}
	return out, next, err
}

// Backup returns every version of a key as one sealed blob.
func (s *Service) Backup(ctx context.Context, v *vault.Vault, name string) ([]byte, error) {
	if err := kind.ValidateName(name, ""); err != nil {
		return nil, err
	}
	e, err := s.coll.Export(ctx, v.Name, name)
	if err != nil {
		return nil, kind.Map(err, name, "")
	}
	if e.Versions[0].Managed {
		return nil, kind.Managed("backup", "back up certificate "+name+" instead.")
	}
	b := object.Backup{TenantID: v.TenantID, Objects: map[string]json.RawMessage{Collection: object.ExportJSON(e)}}
	return kind.SealBackup(s.seal, backupPurpose, b, name)
}

// Restore writes a backed-up key into v. The name must be free.
func (s *Service) Restore(ctx context.Context, v *vault.Vault, blob []byte) (Key, error) {
	b, err := kind.OpenBackup(s.seal, backupPurpose, blob, v.TenantID, v.Name)
	if err != nil {
		return Key{}, err
	}
	e, err := object.ImportJSON[Data](b.Objects[Collection], Collection)
	if err != nil {
		return Key{}, object.Invalidf("The backup blob is not a key backup.")
	}
	_, cur, err := s.coll.Import(ctx, v.Name, e)
	if err != nil {
		return Key{}, kind.Map(err, e.Head.Name, "")
	}
	return s.toKey(cur), nil
}
