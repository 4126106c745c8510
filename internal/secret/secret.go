// Package secret implements Key Vault secrets on top of the object store:
// validation, value limits, lifecycle rules and sealed backups.
package secret

import (
	"context"
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/cofferhq/coffer/internal/object"
	"github.com/cofferhq/coffer/internal/vault"
)

// Limits, as Azure Key Vault documents them.
const (
	MaxValueBytes       = 25 * 1024
	MaxContentTypeChars = 255
	MaxTags             = 15
	MaxTagNameChars     = 512
	MaxTagValueChars    = 256
	// MaxBackupBytes bounds a backup blob, and so the restore body.
	MaxBackupBytes = 4 << 20
)

const backupPurpose = "backup/secrets/v1"

// ValidObjectName reports whether name matches ^[0-9a-zA-Z-]{1,127}$, the
// rule for every Key Vault object name. It runs on every request, so it is a
// loop, not a regexp.
func ValidObjectName(name string) bool {
	if len(name) == 0 || len(name) > 127 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// ValidVersion reports whether v is 32 hexadecimal digits.
func ValidVersion(v string) bool {
	if len(v) != 32 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// Sealer seals and opens backup blobs; the barrier implements it.
type Sealer interface {
	Seal(aad string, plain []byte) []byte
	Unseal(aad string, blob []byte) ([]byte, error)
}

type data struct {
	Value string `json:"value"`
	KID   string `json:"kid,omitempty"`
}

// Secret is one secret version. Value is empty in results that carry
// properties only (lists, updates, deletes).
type Secret struct {
	Name            string
	Version         string
	Value           string
	ContentType     string
	Tags            map[string]string
	Attributes      object.Attributes
	Managed         bool
	KID             string
	PreviousVersion string
}

// Deleted is a soft-deleted secret.
type Deleted struct {
	Secret
	DeletedDate    int64
	ScheduledPurge int64
}

// SetParams are the fields of a PUT; nil means not given.
type SetParams struct {
	Value       *string
	ContentType *string
	Enabled     *bool
	NotBefore   *int64
	Expires     *int64
	Tags        map[string]string
}

// UpdateParams are the fields of a PATCH; nil means unchanged.
type UpdateParams struct {
	ContentType *string
	Enabled     *bool
	NotBefore   *int64
	Expires     *int64
	Tags        map[string]string // nil: unchanged; empty: remove all
}

// Service serves secrets for every vault.
type Service struct {
	coll *object.Collection[data]
	seal Sealer
	now  func() time.Time
}

// New returns a service over st, sealing backups with seal.
func New(st object.Store, seal Sealer, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{coll: object.New[data](st, "secrets", now), seal: seal, now: now}
}

// ValidateName checks a secret name against Azure's rule.
func ValidateName(name string) error {
	if !ValidObjectName(name) {
		return object.Invalidf("The request URI contains an invalid name: %q. Secret names are 1-127 characters of letters, digits and hyphens.", name)
	}
	return nil
}

// ValidateVersion checks a version string: empty (latest) or 32 hex digits.
func ValidateVersion(version string) error {
	if version != "" && !ValidVersion(version) {
		return object.Invalidf("The request URI contains an invalid version: %q. A version is 32 hexadecimal digits.", version)
	}
	return nil
}

func validateProps(contentType *string, nbf, exp *int64, tags map[string]string) error {
	if contentType != nil && utf8.RuneCountInString(*contentType) > MaxContentTypeChars {
		return object.Invalidf("contentType is %d characters long; the limit is %d.", utf8.RuneCountInString(*contentType), MaxContentTypeChars)
	}
	if nbf != nil && exp != nil && *exp <= *nbf {
		return object.Invalidf("attributes.exp (%d) must be later than attributes.nbf (%d).", *exp, *nbf)
	}
	if len(tags) > MaxTags {
		return object.Invalidf("%d tags given; the limit is %d.", len(tags), MaxTags)
	}
	for k, v := range tags {
		if k == "" || utf8.RuneCountInString(k) > MaxTagNameChars {
			return object.Invalidf("tag name %q must be 1 to %d characters.", k, MaxTagNameChars)
		}
		if utf8.RuneCountInString(v) > MaxTagValueChars {
			return object.Invalidf("tag %q has a value longer than %d characters.", k, MaxTagValueChars)
		}
	}
	return nil
}

func notFound(name, version string) error {
	id := name
	if version != "" {
		id += "/" + version
	}
	return object.Errorf(object.ErrNotFound, "", "A secret with (name/id) %s was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command.", id)
}

func deletedNotFound(name string) error {
	return object.Errorf(object.ErrNotFound, "", "Deleted Secret not found: %s", name)
}

// mapErr turns object-layer sentinels into messages that name the secret.
func mapErr(err error, name, version string) error {
	var oe *object.Error
	switch {
	case err == nil || errors.As(err, &oe):
		return err
	case errors.Is(err, object.ErrNotFound):
		return notFound(name, version)
	case errors.Is(err, object.ErrDeleted):
		return object.Errorf(object.ErrDeleted, "ObjectIsDeletedButRecoverable", "Secret %s is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged.", name)
	case errors.Is(err, object.ErrExists):
		return object.Errorf(object.ErrExists, "", "Secret %s already exists in this vault (live or soft-deleted); purge or rename it before restoring.", name)
	}
	return err
}

func toSecret(v object.Version[data], h object.Head, withValue bool) Secret {
	s := Secret{
		Name: v.Name, Version: v.ID, ContentType: v.ContentType, Tags: v.Tags,
		Attributes: v.Attributes, Managed: v.Managed, KID: v.Data.KID,
	}
	if withValue {
		s.Value = v.Data.Value
	}
	if h.Current == v.ID {
		s.PreviousVersion = h.Previous
	}
	return s
}

// Set stores a new version of a secret and returns it, value included.
func (s *Service) Set(ctx context.Context, v *vault.Vault, name string, p SetParams) (Secret, error) {
	if err := ValidateName(name); err != nil {
		return Secret{}, err
	}
	if p.Value == nil {
		return Secret{}, object.Invalidf("The request body must contain the secret's value.")
	}
	if len(*p.Value) > MaxValueBytes {
		return Secret{}, object.Invalidf("The secret value is %d bytes; the limit is %d bytes (25 KiB).", len(*p.Value), MaxValueBytes)
	}
	if err := validateProps(p.ContentType, p.NotBefore, p.Expires, p.Tags); err != nil {
		return Secret{}, err
	}
	ver, head, err := s.coll.Create(ctx, v.Name, name, func(cur *object.Version[data]) (object.Version[data], error) {
		if cur != nil && cur.Managed {
			return object.Version[data]{}, object.Errorf(object.ErrForbidden, "", "Secret %s is managed by certificate %s and cannot be set directly; import or create a certificate version instead.", name, name)
		}
		nv := object.Version[data]{
			Attributes: object.Attributes{Enabled: true, NotBefore: p.NotBefore, Expires: p.Expires},
			Tags:       p.Tags,
			Data:       data{Value: *p.Value},
		}
		if p.Enabled != nil {
			nv.Attributes.Enabled = *p.Enabled
		}
		if p.ContentType != nil {
			nv.ContentType = *p.ContentType
		}
		return nv, nil
	})
	if err != nil {
		return Secret{}, mapErr(err, name, "")
	}
	return toSecret(ver, head, true), nil
}

// Get returns a secret version with its value. It refuses disabled versions
// and, if the vault enforces validity, versions outside nbf/exp.
func (s *Service) Get(ctx context.Context, v *vault.Vault, name, version string) (Secret, error) {
	if err := ValidateName(name); err != nil {
		return Secret{}, err
	}
	if err := ValidateVersion(version); err != nil {
		return Secret{}, err
	}
	ver, head, err := s.coll.Get(ctx, v.Name, name, version)
	if err != nil {
		return Secret{}, mapErr(err, name, version)
	}
	a := ver.Attributes
	if !a.Enabled {
		return Secret{}, object.Errorf(object.ErrForbidden, "SecretDisabled", "Operation get is not allowed on a disabled secret.")
	}
	if v.EnforceValidity {
		now := s.now().Unix()
		if a.NotBefore != nil && now < *a.NotBefore {
			return Secret{}, object.Errorf(object.ErrForbidden, "SecretNotYetValid", "Operation get is not allowed: secret %s is not valid before %s.", name, time.Unix(*a.NotBefore, 0).UTC().Format(time.RFC3339))
		}
		if a.Expires != nil && now >= *a.Expires {
			return Secret{}, object.Errorf(object.ErrForbidden, "SecretExpired", "Operation get is not allowed: secret %s expired at %s.", name, time.Unix(*a.Expires, 0).UTC().Format(time.RFC3339))
		}
	}
	return toSecret(ver, head, true), nil
}

// Update changes a version's properties and returns them, without value.
func (s *Service) Update(ctx context.Context, v *vault.Vault, name, version string, p UpdateParams) (Secret, error) {
	if err := ValidateName(name); err != nil {
		return Secret{}, err
	}
	if err := ValidateVersion(version); err != nil {
		return Secret{}, err
	}
	if err := validateProps(p.ContentType, nil, nil, p.Tags); err != nil {
		return Secret{}, err
	}
	ver, err := s.coll.Update(ctx, v.Name, name, version, func(cur *object.Version[data]) error {
		if cur.Managed {
			return object.Errorf(object.ErrForbidden, "", "Secret %s is managed by a certificate; update the certificate instead.", name)
		}
		a := &cur.Attributes
		if p.Enabled != nil {
			a.Enabled = *p.Enabled
		}
		if p.NotBefore != nil {
			a.NotBefore = p.NotBefore
		}
		if p.Expires != nil {
			a.Expires = p.Expires
		}
		if a.NotBefore != nil && a.Expires != nil && *a.Expires <= *a.NotBefore {
			return object.Invalidf("attributes.exp (%d) must be later than attributes.nbf (%d).", *a.Expires, *a.NotBefore)
		}
		if p.ContentType != nil {
			cur.ContentType = *p.ContentType
		}
		if p.Tags != nil {
			cur.Tags = p.Tags
			if len(p.Tags) == 0 {
				cur.Tags = nil
			}
		}
		return nil
	})
	if err != nil {
		return Secret{}, mapErr(err, name, version)
	}
	return toSecret(ver, object.Head{}, false), nil
}

// Delete soft-deletes a secret and all its versions.
func (s *Service) Delete(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := ValidateName(name); err != nil {
		return Deleted{}, err
	}
	if cur, _, err := s.coll.Get(ctx, v.Name, name, ""); err == nil && cur.Managed {
		return Deleted{}, object.Errorf(object.ErrForbidden, "", "Secret %s is managed by a certificate; delete the certificate instead.", name)
	}
	h, cur, err := s.coll.Delete(ctx, v.Name, name, v.Retention())
	if err != nil {
		return Deleted{}, mapErr(err, name, "")
	}
	return toDeleted(h, cur), nil
}

func toDeleted(h object.Head, cur object.Version[data]) Deleted {
	return Deleted{Secret: toSecret(cur, h, false), DeletedDate: h.DeletedDate, ScheduledPurge: h.ScheduledPurge}
}

// List returns one page of live secrets (properties only) and the cursor of
// the next page, "" at the end.
func (s *Service) List(ctx context.Context, v *vault.Vault, after string, limit int) ([]Secret, string, error) {
	items, next, err := s.coll.List(ctx, v.Name, after, limit)
	if err != nil {
		return nil, "", err
	}
	out := make([]Secret, len(items))
	for i, it := range items {
		out[i] = toSecret(it.Current, object.Head{}, false)
	}
	return out, next, nil
}

// ListVersions returns one page of a secret's versions (properties only).
func (s *Service) ListVersions(ctx context.Context, v *vault.Vault, name, after string, limit int) ([]Secret, string, error) {
	if err := ValidateName(name); err != nil {
		return nil, "", err
	}
	vers, next, err := s.coll.ListVersions(ctx, v.Name, name, after, limit)
	if err != nil {
		return nil, "", mapErr(err, name, "")
	}
	out := make([]Secret, len(vers))
	for i, ver := range vers {
		out[i] = toSecret(ver, object.Head{}, false)
	}
	return out, next, nil
}

// ListDeleted returns one page of soft-deleted secrets.
func (s *Service) ListDeleted(ctx context.Context, v *vault.Vault, after string, limit int) ([]Deleted, string, error) {
	items, next, err := s.coll.ListDeleted(ctx, v.Name, after, limit)
	if err != nil {
		return nil, "", err
	}
	out := make([]Deleted, len(items))
	for i, it := range items {
		out[i] = toDeleted(it.Head, it.Current)
		out[i].PreviousVersion = ""
	}
	return out, next, nil
}

// GetDeleted returns a soft-deleted secret.
func (s *Service) GetDeleted(ctx context.Context, v *vault.Vault, name string) (Deleted, error) {
	if err := ValidateName(name); err != nil {
		return Deleted{}, err
	}
	h, cur, err := s.coll.GetDeleted(ctx, v.Name, name)
	if errors.Is(err, object.ErrNotFound) {
		return Deleted{}, deletedNotFound(name)
	}
	if err != nil {
		return Deleted{}, err
	}
	return toDeleted(h, cur), nil
}

// Recover restores a soft-deleted secret and returns its current version's
// properties.
func (s *Service) Recover(ctx context.Context, v *vault.Vault, name string) (Secret, error) {
	if err := ValidateName(name); err != nil {
		return Secret{}, err
	}
	h, cur, err := s.coll.Recover(ctx, v.Name, name)
	if errors.Is(err, object.ErrNotFound) {
		return Secret{}, deletedNotFound(name)
	}
	if err != nil {
		return Secret{}, mapErr(err, name, "")
	}
	return toSecret(cur, h, false), nil
}

// Purge permanently removes a soft-deleted secret, unless the vault has
// purge protection.
func (s *Service) Purge(ctx context.Context, v *vault.Vault, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if v.PurgeProtection {
		return object.Errorf(object.ErrForbidden, "", "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Coffer will purge secret %s automatically after the retention period of %d days.", name, v.RetentionDays)
	}
	err := s.coll.Purge(ctx, v.Name, name)
	if errors.Is(err, object.ErrNotFound) {
		return deletedNotFound(name)
	}
	return err
}

// PurgeDue purges the vault's deleted secrets whose retention has passed.
func (s *Service) PurgeDue(ctx context.Context, v *vault.Vault) (int, error) {
	return s.coll.PurgeDue(ctx, v.Name, s.now())
}

type backup struct {
	TenantID string              `json:"tenantId"`
	Object   object.Export[data] `json:"object"`
}

// Backup returns every version of a secret as one sealed, opaque blob that
// only this installation can open, and only into a vault of the same tenant.
func (s *Service) Backup(ctx context.Context, v *vault.Vault, name string) ([]byte, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	e, err := s.coll.Export(ctx, v.Name, name)
	if err != nil {
		return nil, mapErr(err, name, "")
	}
	plain, err := json.Marshal(backup{TenantID: v.TenantID, Object: e})
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	blob := s.seal.Seal(backupPurpose, plain)
	if len(blob) > MaxBackupBytes {
		return nil, object.Invalidf("Secret %s has %d versions, too many to back up: the blob would be %d bytes, over the %d-byte limit.", name, len(e.Versions), len(blob), MaxBackupBytes)
	}
	return blob, nil
}

// Restore writes a backed-up secret into v. The name must be free.
func (s *Service) Restore(ctx context.Context, v *vault.Vault, blob []byte) (Secret, error) {
	plain, err := s.seal.Unseal(backupPurpose, blob)
	if err != nil {
		return Secret{}, object.Invalidf("The backup blob could not be opened: it is corrupt, truncated, not a secret backup, or from another Coffer installation.")
	}
	defer clear(plain)
	var b backup
	if err := json.Unmarshal(plain, &b); err != nil {
		return Secret{}, object.Invalidf("The backup blob does not parse: %v", err)
	}
	if b.TenantID != v.TenantID {
		return Secret{}, object.Invalidf("The backup blob belongs to tenant %s; it can only be restored into a vault of that tenant, and vault %s is in tenant %s.", b.TenantID, v.Name, v.TenantID)
	}
	if b.Object.Kind != "secrets" || ValidateName(b.Object.Head.Name) != nil {
		return Secret{}, object.Invalidf("The backup blob is not a secret backup.")
	}
	h, cur, err := s.coll.Import(ctx, v.Name, b.Object)
	if err != nil {
		return Secret{}, mapErr(err, b.Object.Head.Name, "")
	}
	return toSecret(cur, h, false), nil
}
