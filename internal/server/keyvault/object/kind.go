package object

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ValidName reports whether name matches ^[0-9a-zA-Z-]{1,127}$, the rule
// for every Key Vault object name. It runs on every request, so it is a
// loop, not a regexp.
func ValidName(name string) bool {
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

// Kind names an object kind in messages: "secret", "key", "certificate".
type Kind string

func (k Kind) title() string { return strings.ToUpper(string(k[:1])) + string(k[1:]) }

// ValidateName checks an object name and version ("" means latest).
func (k Kind) ValidateName(name, version string) error {
	if !ValidName(name) {
		return Invalidf("The request URI contains an invalid name: %q. %s names are 1-127 characters of letters, digits and hyphens.", name, k.title())
	}
	if version != "" && !ValidVersion(version) {
		return Invalidf("The request URI contains an invalid version: %q. A version is 32 hexadecimal digits.", version)
	}
	return nil
}

// NotFound is the error for a missing object or version.
func (k Kind) NotFound(name, version string) error {
	id := name
	if version != "" {
		id += "/" + version
	}
	return Errorf(ErrNotFound, "", "A %s with (name/id) %s was not found in this key vault. If you recently deleted this %s you may be able to recover it using the correct recovery command.", k, id, k)
}

// DeletedNotFound is the error for a missing soft-deleted object.
func (k Kind) DeletedNotFound(name string) error {
	return Errorf(ErrNotFound, "", "Deleted %s not found: %s", k.title(), name)
}

// Map turns the collection's sentinels into messages that name the object.
func (k Kind) Map(err error, name, version string) error {
	var oe *Error
	switch {
	case err == nil || errors.As(err, &oe):
		return err
	case errors.Is(err, ErrNotFound):
		return k.NotFound(name, version)
	case errors.Is(err, ErrDeleted):
		return Errorf(ErrDeleted, "ObjectIsDeletedButRecoverable", "%s %s is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the %s can only be recovered or purged.", k.title(), name, k)
	case errors.Is(err, ErrExists):
		return Errorf(ErrExists, "", "%s %s already exists in this vault (live or soft-deleted); purge or rename it before restoring.", k.title(), name)
	}
	return err
}

// MapDeleted is Map for operations on soft-deleted objects.
func (k Kind) MapDeleted(err error, name string) error {
	if errors.Is(err, ErrNotFound) {
		return k.DeletedNotFound(name)
	}
	return k.Map(err, name, "")
}

// PurgeProtected is the error for a purge on a vault with purge protection.
func (k Kind) PurgeProtected(name string, retentionDays int) error {
	return Errorf(ErrForbidden, "", "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Coffer will purge %s %s automatically after the retention period of %d days.", k, name, retentionDays)
}

// Purge permanently removes soft-deleted object name with purge, unless
// the vault's purge protection forbids it.
func (k Kind) Purge(name string, protected bool, retentionDays int, purge func() error) error {
	if err := k.ValidateName(name, ""); err != nil {
		return err
	}
	if protected {
		return k.PurgeProtected(name, retentionDays)
	}
	return k.MapDeleted(purge(), name)
}

// MaxBackupBytes bounds a backup blob, and so a restore body.
const MaxBackupBytes = 4 << 20

// Sealer seals and opens backup blobs; the barrier implements it.
type Sealer interface {
	Seal(aad string, plain []byte) []byte
	Unseal(aad string, blob []byte) ([]byte, error)
}

// Backup is a sealed, tenant-bound copy of objects: the object itself and,
// for a certificate, the managed key and secret that share its versions.
type Backup struct {
	TenantID string                     `json:"tenantId"`
	Objects  map[string]json.RawMessage `json:"objects"` // collection kind -> Export
}

// SealBackup seals b for purpose; it refuses blobs over MaxBackupBytes.
func (k Kind) SealBackup(s Sealer, purpose string, b Backup, name string) ([]byte, error) {
	plain, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	blob := s.Seal(purpose, plain)
	if len(blob) > MaxBackupBytes {
		return nil, Invalidf("%s %s has too many versions to back up: the blob would be %d bytes, over the %d-byte limit.", k.title(), name, len(blob), MaxBackupBytes)
	}
	return blob, nil
}

// OpenBackup opens a blob sealed for purpose and checks it belongs to tenant.
func (k Kind) OpenBackup(s Sealer, purpose string, blob []byte, tenant, vault string) (Backup, error) {
	plain, err := s.Unseal(purpose, blob)
	if err != nil {
		return Backup{}, Invalidf("The backup blob could not be opened: it is corrupt, truncated, not a %s backup, or from another Coffer installation.", k)
	}
	defer clear(plain)
	var b Backup
	if err := json.Unmarshal(plain, &b); err != nil {
		return Backup{}, Invalidf("The backup blob does not parse: %v", err)
	}
	if b.TenantID != tenant {
		return Backup{}, Invalidf("The backup blob belongs to tenant %s; it can only be restored into a vault of that tenant, and vault %s is in tenant %s.", b.TenantID, vault, tenant)
	}
	return b, nil
}

// ExportJSON encodes an export for a Backup.
func ExportJSON[T any](e Export[T]) json.RawMessage {
	b, _ := json.Marshal(e)
	return b
}

// ImportJSON decodes an export from a Backup, checking its kind, its
// name, and its versions: each a valid version id of that object, given
// once, the current one among them. Their ids become store keys, so an
// export is trusted no further than a request.
//
// Names are case-insensitive, so a version may spell its object's name
// in another case; it is given the head's spelling, and ids and the
// head's references are lowercased, as a write makes them: the store
// relies on every version of an object carrying the head's name and a
// lowercase id (FuzzRestorePlaintext restored a "db-paSsword" version
// under the head "db-password").
func ImportJSON[T any](raw json.RawMessage, kind string) (Export[T], error) {
	var e Export[T]
	bad := fmt.Errorf("%w: the backup blob's %s are malformed", ErrInvalid, kind)
	if err := json.Unmarshal(raw, &e); err != nil || e.Kind != kind || !ValidName(e.Head.Name) {
		return e, bad
	}
	seen := map[string]bool{}
	for i := range e.Versions {
		v := &e.Versions[i]
		id := strings.ToLower(v.ID)
		if !ValidVersion(v.ID) || !strings.EqualFold(v.Name, e.Head.Name) || seen[id] {
			return e, bad
		}
		seen[id] = true
		v.Name, v.ID = e.Head.Name, id
	}
	e.Head.Current, e.Head.Previous = strings.ToLower(e.Head.Current), strings.ToLower(e.Head.Previous)
	if !seen[e.Head.Current] {
		return e, bad
	}
	return e, nil
}

// Managed is Azure's error for changing, directly, an object whose lifetime
// a certificate manages: 403 with inner code {Kind}ManagedByKeyVault.
// instead says what to do.
func (k Kind) Managed(op, instead string) error {
	return Errorf(ErrForbidden, k.title()+"ManagedByKeyVault", "Operation %q is not allowed as this object's lifetime is managed by Key Vault: %s", op, instead)
}
