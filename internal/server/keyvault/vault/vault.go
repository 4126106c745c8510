// Package vault keeps the registry of vaults: their names, tenants,
// soft-delete settings and access policies.
package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/throttle"
)

// ErrNotFound means no vault has the name.
var ErrNotFound = errors.New("vault not found")

// ErrExists means a vault with the name already exists.
var ErrExists = errors.New("vault already exists")

// ErrInvalid means a vault setting is wrong; the message says which.
var ErrInvalid = errors.New("invalid vault setting")

const (
	// DefaultRetentionDays is Azure's default soft-delete retention.
	DefaultRetentionDays = 90
	minRetentionDays     = 7
	maxRetentionDays     = 90
	prefix               = "vaults/"
)

// Azure's rule: 3-24 characters, letters, digits and hyphens, starting with a
// letter, ending with a letter or digit, no two hyphens in a row. The name is
// a DNS label, so these rules are not cosmetic.
var nameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)

// rgRE is Azure's resource group name rule.
var rgRE = regexp.MustCompile(`^[-\w._()]{0,89}[-\w_()]$`)

// ValidateName checks a vault name against Azure's rules.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "--") {
		return fmt.Errorf("%w: vault name %q is invalid: use 3-24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, with no consecutive hyphens", ErrInvalid, name)
	}
	return nil
}

// Permissions lists what an access policy grants, per object kind, using
// Azure's permission names (get, list, set, ...).
type Permissions struct {
	Secrets      []string `json:"secrets,omitempty"`
	Keys         []string `json:"keys,omitempty"`
	Certificates []string `json:"certificates,omitempty"`
}

// AccessPolicy grants one principal permissions on a vault.
type AccessPolicy struct {
	TenantID    string      `json:"tenantId"`
	ObjectID    string      `json:"objectId"`
	Permissions Permissions `json:"permissions"`
}

// Vault is a vault's settings.
type Vault struct {
	Name            string         `json:"name"`
	TenantID        string         `json:"tenantId"`
	SubscriptionID  string         `json:"subscriptionId"`
	ResourceGroup   string         `json:"resourceGroup"`
	RBAC            bool           `json:"enableRbacAuthorization"`
	Created         int64          `json:"created"`
	CreatedBy       string         `json:"createdBy"`
	RetentionDays   int            `json:"softDeleteRetentionInDays"`
	PurgeProtection bool           `json:"enablePurgeProtection"`
	EnforceValidity bool           `json:"enforceSecretValidity,omitempty"`
	AccessPolicies  []AccessPolicy `json:"accessPolicies"`
	// AccessChanged is when (Unix seconds, by the registry's clock) the
	// access policies or the permission model last changed, 0 if never
	// since creation: the events service dates its VaultAccessPolicyChanged
	// by it, so a subscription made after a change does not get it.
	AccessChanged int64 `json:"accessChanged,omitempty"`
	// Throttle holds the vault's static limits (429 Throttled); none by
	// default, where only overload protection applies.
	Throttle throttle.Limits `json:"throttle,omitzero"`
}

// AccessDigest is a hash of what decides access by access policy: the
// permission model and the policies. Two vaults with the same digest grant
// the same; the events service keeps it to see a change without keeping
// the policies themselves.
func (v *Vault) AccessDigest() string {
	in := struct {
		RBAC     bool           `json:"rbac"`
		Policies []AccessPolicy `json:"policies"`
	}{RBAC: v.RBAC}
	if len(v.AccessPolicies) > 0 {
		in.Policies = v.AccessPolicies
	}
	b, _ := json.Marshal(in)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// MaxAccessPolicies is Azure's limit of access policies per vault.
const MaxAccessPolicies = 1024

// DefaultResourceGroup holds vaults created without one.
const DefaultResourceGroup = "default"

// ID returns the vault's resource id.
func (v *Vault) ID() string {
	return "/subscriptions/" + v.SubscriptionID + "/resourceGroups/" + v.ResourceGroup + "/providers/Microsoft.KeyVault/vaults/" + v.Name
}

// Retention is the soft-delete retention period.
func (v *Vault) Retention() time.Duration {
	return time.Duration(v.RetentionDays) * 24 * time.Hour
}

// RecoveryLevel is Azure's deletion recovery level for objects in the vault.
func (v *Vault) RecoveryLevel() string {
	// Whole constants, not concatenated: every object's response names it.
	custom := v.RetentionDays < maxRetentionDays
	switch {
	case custom && v.PurgeProtection:
		return "CustomizedRecoverable"
	case custom:
		return "CustomizedRecoverable+Purgeable"
	case v.PurgeProtection:
		return "Recoverable"
	}
	return "Recoverable+Purgeable"
}

// Validate checks settings and fills defaults.
func (v *Vault) Validate() error {
	if err := ValidateName(v.Name); err != nil {
		return err
	}
	if v.TenantID == "" || v.SubscriptionID == "" {
		return fmt.Errorf("%w: vault %s has no tenant or subscription", ErrInvalid, v.Name)
	}
	if v.ResourceGroup == "" {
		v.ResourceGroup = DefaultResourceGroup
	}
	if !rgRE.MatchString(v.ResourceGroup) {
		return fmt.Errorf("%w: resource group %q is invalid: use 1-90 letters, digits, '-', '_', '.' or parentheses, not ending in '.'", ErrInvalid, v.ResourceGroup)
	}
	if len(v.AccessPolicies) > MaxAccessPolicies {
		return fmt.Errorf("%w: vault %s would have %d access policies; the limit is %d", ErrInvalid, v.Name, len(v.AccessPolicies), MaxAccessPolicies)
	}
	if v.RetentionDays == 0 {
		v.RetentionDays = DefaultRetentionDays
	}
	if v.RetentionDays < minRetentionDays || v.RetentionDays > maxRetentionDays {
		return fmt.Errorf("%w: soft-delete retention must be %d to %d days, got %d", ErrInvalid, minRetentionDays, maxRetentionDays, v.RetentionDays)
	}
	return nil
}

// Store is the slice of the barrier the registry uses.
type Store interface {
	Get(ctx context.Context, key string) (barrier.Record, error)
	Scan(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, error)
	Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error
}

// Registry reads and writes vaults, and keeps every vault in memory: vaults
// are few and read on every request.
type Registry struct {
	st  Store
	now func() time.Time

	mu     sync.RWMutex
	vaults map[string]*Vault
}

// IsKey reports whether a store key holds a vault's record (its settings
// and access policies): the server tells vault watches to authorize again
// when one changes.
func IsKey(key string) bool { return strings.HasPrefix(key, prefix) }

// Key is the store key of a vault's record.
func Key(name string) string { return prefix + strings.ToLower(name) }

// NameOf returns the vault whose record a store key holds.
func NameOf(key string) (string, bool) {
	name, ok := strings.CutPrefix(key, prefix)
	return name, ok && name != ""
}

// Open loads every vault from st.
func Open(ctx context.Context, st Store, now func() time.Time) (*Registry, error) {
	if now == nil {
		now = time.Now
	}
	r := &Registry{st: st, now: now, vaults: map[string]*Vault{}}
	recs, err := st.Scan(ctx, prefix, "", 0)
	if err != nil {
		return nil, fmt.Errorf("load vaults: %w", err)
	}
	for _, rec := range recs {
		var v Vault
		if err := json.Unmarshal(rec.Value, &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		r.vaults[v.Name] = &v
	}
	if f, ok := st.(barrier.Follower); ok {
		f.Follow(prefix, r.reload)
	}
	return r, nil
}

// reload takes other replicas' changes to vaults into memory. It holds the
// registry's lock while it reads, as writers do across their Apply, so a
// local write is never overwritten by an older value.
func (r *Registry) reload(ctx context.Context, keys []string, all bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if all {
		recs, err := r.st.Scan(ctx, prefix, "", 0)
		if err != nil {
			return // the next change or Reset reloads again
		}
		next := make(map[string]*Vault, len(recs))
		for _, rec := range recs {
			var v Vault
			if json.Unmarshal(rec.Value, &v) == nil {
				next[v.Name] = &v
			}
		}
		r.vaults = next
		return
	}
	for _, k := range keys {
		rec, err := r.st.Get(ctx, k)
		if errors.Is(err, barrier.ErrNotFound) {
			delete(r.vaults, strings.TrimPrefix(k, prefix))
			continue
		}
		var v Vault
		if err == nil && json.Unmarshal(rec.Value, &v) == nil {
			r.vaults[v.Name] = &v
		}
	}
}

// Create stores a new vault. Unless the vault uses RBAC, its creator gets an
// access policy with every permission, as `az keyvault create` gives its
// caller; an RBAC vault, as in Azure, grants nothing by itself.
func (r *Registry) Create(ctx context.Context, v Vault) (Vault, error) {
	v.Name = strings.ToLower(v.Name)
	if err := v.Validate(); err != nil {
		return Vault{}, err
	}
	v.Created = r.now().Unix()
	if v.CreatedBy != "" && len(v.AccessPolicies) == 0 && !v.RBAC {
		v.AccessPolicies = []AccessPolicy{{TenantID: v.TenantID, ObjectID: v.CreatedBy, Permissions: AllPermissions()}}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return Vault{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	err = r.st.Apply(ctx, []barrier.Cond{{Key: prefix + v.Name}}, []barrier.Op{{Key: prefix + v.Name, Value: b}})
	if errors.Is(err, barrier.ErrConflict) {
		return Vault{}, fmt.Errorf("%w: %s", ErrExists, v.Name)
	}
	if err != nil {
		return Vault{}, err
	}
	r.vaults[v.Name] = &v
	return v, nil
}

// Update changes a vault's settings with fn and stores them.
func (r *Registry) Update(ctx context.Context, name string, fn func(*Vault) error) (Vault, error) {
	name = strings.ToLower(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.st.Get(ctx, prefix+name)
	if errors.Is(err, barrier.ErrNotFound) {
		return Vault{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return Vault{}, err
	}
	var v Vault
	if err := json.Unmarshal(rec.Value, &v); err != nil {
		return Vault{}, err
	}
	before := v.AccessDigest()
	if err := fn(&v); err != nil {
		return Vault{}, err
	}
	if v.AccessDigest() != before {
		v.AccessChanged = r.now().Unix()
	}
	if v.Name != name {
		return Vault{}, fmt.Errorf("%w: a vault cannot be renamed", ErrInvalid)
	}
	if err := v.Validate(); err != nil {
		return Vault{}, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return Vault{}, err
	}
	if err := r.st.Apply(ctx, []barrier.Cond{{Key: prefix + name, Rev: rec.Rev}}, []barrier.Op{{Key: prefix + name, Value: b}}); err != nil {
		return Vault{}, err
	}
	r.vaults[name] = &v
	return v, nil
}

// Get returns a vault by name (case-insensitive). The result is shared and
// must not be modified.
func (r *Registry) Get(name string) (*Vault, error) {
	r.mu.RLock()
	v, ok := r.vaults[strings.ToLower(name)]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, strings.ToLower(name))
	}
	return v, nil
}

// List returns every vault of a tenant, by name; an empty tenant lists all.
func (r *Registry) List(tenant string) []Vault {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Vault
	for _, v := range r.vaults {
		if tenant == "" || v.TenantID == tenant {
			out = append(out, *v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Secret, key and certificate permission names, as Azure spells them.
var (
	SecretPermissions      = []string{"get", "list", "set", "delete", "backup", "restore", "recover", "purge"}
	KeyPermissions         = []string{"get", "list", "update", "create", "import", "delete", "recover", "backup", "restore", "decrypt", "encrypt", "unwrapKey", "wrapKey", "verify", "sign", "purge", "release", "rotate", "getrotationpolicy", "setrotationpolicy"}
	CertificatePermissions = []string{"get", "list", "update", "create", "import", "delete", "recover", "backup", "restore", "managecontacts", "manageissuers", "getissuers", "listissuers", "setissuers", "deleteissuers", "purge"}
)

// ValidatePermissions checks permission names for one kind ("secrets",
// "keys" or "certificates") and returns them in Azure's spelling.
func ValidatePermissions(kind string, perms []string) ([]string, error) {
	var known []string
	switch kind {
	case "secrets":
		known = SecretPermissions
	case "keys":
		known = KeyPermissions
	case "certificates":
		known = CertificatePermissions
	default:
		return nil, fmt.Errorf("%w: unknown permission kind %q", ErrInvalid, kind)
	}
	out := []string{}
	for _, p := range perms {
		if strings.EqualFold(p, "all") {
			return slices.Clone(known), nil
		}
		i := slices.IndexFunc(known, func(k string) bool { return strings.EqualFold(k, p) })
		if i < 0 {
			return nil, fmt.Errorf("%w: %q is not a %s permission; use %s, or all", ErrInvalid, p, strings.TrimSuffix(kind, "s"), strings.Join(known, ", "))
		}
		if !slices.Contains(out, known[i]) {
			out = append(out, known[i])
		}
	}
	return out, nil
}

// AllPermissions grants every permission on every kind.
func AllPermissions() Permissions {
	return Permissions{
		Secrets:      slices.Clone(SecretPermissions),
		Keys:         slices.Clone(KeyPermissions),
		Certificates: slices.Clone(CertificatePermissions),
	}
}
