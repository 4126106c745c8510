// Package secret implements Key Vault secrets on top of the object store:
// validation, value limits, lifecycle rules and sealed backups.
package secret

import (
	"context"
	"encoding/json"
	"time"
	"unicode/utf8"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// Limits, as Azure Key Vault documents them.
const (
	MaxValueBytes       = 25 * 1024
	MaxContentTypeChars = 255
	MaxTags             = 15
	MaxTagNameChars     = 512
	MaxTagValueChars    = 256
	// MaxBackupBytes bounds a backup blob, and so the restore body.
	MaxBackupBytes = object.MaxBackupBytes
)

const backupPurpose = "backup/secrets/v2"

// kind names secrets in messages.
const kind object.Kind = "secret"

// Sealer seals and opens backup blobs; the barrier implements it.
type Sealer = object.Sealer

// Data is what a secret version stores, sealed.
type Data struct {
	Value string `json:"value"`
}

// Collection is the object-store kind of secrets.
const Collection = "secrets"

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
	PreviousVersion string
	// Memo is where a read's response may be kept for the next read of
	// the same version, as long as the version and its object are
	// unchanged (see object.Memo); nil for what is not read from the
	// cache.
	Memo *object.Memo
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
	coll *object.Collection[Data]
	seal Sealer
	now  func() time.Time
}

// New returns a service over st, sealing backups with seal.
func New(st object.Store, seal Sealer, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{coll: object.New[Data](st, Collection, now), seal: seal, now: now}
}

// Collection returns the underlying collection, for certificates, which
// keep their managed secrets in it.
func (s *Service) Collection() *object.Collection[Data] { return s.coll }

// ValidateName checks a secret name against Azure's rule.
func ValidateName(name string) error { return kind.ValidateName(name, "") }

// ValidateVersion checks a version string: empty (latest) or 32 hex digits.
func ValidateVersion(version string) error { return kind.ValidateName("x", version) }

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

// mapErr turns object-layer sentinels into messages that name the secret.
func mapErr(err error, name, version string) error { return kind.Map(err, name, version) }

func toSecret(v object.Version[Data], h object.Head, withValue bool) Secret {
	s := Secret{
		Name: v.Name, Version: v.ID, ContentType: v.ContentType, Tags: v.Tags,
		Attributes: v.Attributes, Managed: v.Managed,
	}
	if withValue {
		s.Value, s.Memo = v.Data.Value, v.Memo
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
	ver, head, err := s.coll.Create(ctx, v.Name, name, func(cur *object.Version[Data]) (object.Version[Data], error) {
		if cur != nil && cur.Managed {
			return object.Version[Data]{}, kind.Managed("set", "import or create a version of certificate "+name+" instead.")
		}
		nv := object.Version[Data]{
			Attributes: object.Attributes{Enabled: true, NotBefore: p.NotBefore, Expires: p.Expires},
			Tags:       p.Tags,
			Data:       Data{Value: *p.Value},
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
// and, if the vault enforces validity, versions outside nbf/exp. For a
// certificate's secret, outContentType (PFX or PEM) converts the value.
func (s *Service) Get(ctx context.Context, v *vault.Vault, name, version, outContentType string) (Secret, error) {
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
	out := toSecret(ver, head, true)
	if outContentType != "" {
		if !ver.Managed || !certfmt.Valid(outContentType) {
			return Secret{}, object.Invalidf("outContentType applies to certificate-backed secrets only, and must be %s or %s.", certfmt.PFX, certfmt.PEM)
		}
		if out.Value, err = certfmt.Convert(out.Value, out.ContentType, outContentType); err != nil {
			return Secret{}, err
		}
		out.ContentType = outContentType
	}
	return out, nil
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
	ver, err := s.coll.Update(ctx, v.Name, name, version, func(cur *object.Version[Data]) error {
		if cur.Managed {
			return kind.Managed("update", "update certificate "+name+" instead.")
		}
		if p.ContentType != nil {
			cur.ContentType = *p.ContentType
		}
		return object.Patch{Enabled: p.Enabled, NotBefore: p.NotBefore, Expires: p.Expires, Tags: p.Tags}.Apply(&cur.Attributes, &cur.Tags)
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
		return Deleted{}, kind.Managed("delete", "delete certificate "+name+" instead.")
	}
	h, cur, err := s.coll.Delete(ctx, v.Name, name, v.Retention())
	if err != nil {
		return Deleted{}, mapErr(err, name, "")
	}
	return toDeleted(h, cur), nil
}

func toDeleted(h object.Head, cur object.Version[Data]) Deleted {
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
	if err != nil {
		return Deleted{}, kind.MapDeleted(err, name)
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
	if err != nil {
		return Secret{}, kind.MapDeleted(err, name)
	}
	return toSecret(cur, h, false), nil
}

// Purge permanently removes a soft-deleted secret, unless the vault has
// purge protection.
func (s *Service) Purge(ctx context.Context, v *vault.Vault, name string) error {
	return kind.Purge(name, v.PurgeProtection, v.RetentionDays, func() error { return s.coll.Purge(ctx, v.Name, name) })
}

// PurgeDue purges the vault's deleted secrets whose retention has passed.
func (s *Service) PurgeDue(ctx context.Context, v *vault.Vault) (int, error) {
	return s.coll.PurgeDueUnmanaged(ctx, v.Name, s.now())
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
	b := object.Backup{TenantID: v.TenantID, Objects: map[string]json.RawMessage{s.coll.Kind(): object.ExportJSON(e)}}
	return kind.SealBackup(s.seal, backupPurpose, b, name)
}

// Restore writes a backed-up secret into v. The name must be free.
func (s *Service) Restore(ctx context.Context, v *vault.Vault, blob []byte) (Secret, error) {
	b, err := kind.OpenBackup(s.seal, backupPurpose, blob, v.TenantID, v.Name)
	if err != nil {
		return Secret{}, err
	}
	e, err := object.ImportJSON[Data](b.Objects[s.coll.Kind()], s.coll.Kind())
	if err != nil {
		return Secret{}, object.Invalidf("The backup blob is not a secret backup.")
	}
	h, cur, err := s.coll.Import(ctx, v.Name, e)
	if err != nil {
		return Secret{}, mapErr(err, e.Head.Name, "")
	}
	return toSecret(cur, h, false), nil
}
