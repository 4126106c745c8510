// Package access decides whether a principal may perform an operation on a
// vault. Access is denied unless a grant says otherwise.
package access

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/vault"
)

// ErrDenied matches every *DeniedError.
var ErrDenied = errors.New("access denied")

// Kind is the kind of vault object an operation touches.
type Kind string

// Object kinds, named as in Azure's permission lists.
const (
	Secrets      Kind = "secrets"
	Keys         Kind = "keys"
	Certificates Kind = "certificates"
)

// Principal is an authenticated caller.
type Principal struct {
	TenantID string
	ObjectID string
	AppID    string
}

// String identifies the principal the way Azure's denial messages do.
func (p Principal) String() string {
	return fmt.Sprintf("appid=%s;oid=%s;tid=%s", p.AppID, p.ObjectID, p.TenantID)
}

// DeniedError says who was refused what, on which vault.
type DeniedError struct {
	Principal Principal
	Kind      Kind
	Operation string
	Vault     string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("The user, group or application '%s' does not have %s %s permission on key vault '%s'. Grant it with: coffer vault set-policy --name %s --object-id %s --%s-permissions %s",
		e.Principal, e.Kind, e.Operation, e.Vault, e.Vault, e.Principal.ObjectID, strings.TrimSuffix(string(e.Kind), "s"), e.Operation)
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// Check returns nil if p may perform operation (an Azure permission name
// such as "get") on objects of kind in v, and a *DeniedError otherwise.
func Check(v *vault.Vault, p Principal, kind Kind, operation string) error {
	if p.TenantID == v.TenantID {
		for i := range v.AccessPolicies {
			ap := &v.AccessPolicies[i]
			if ap.ObjectID == p.ObjectID && ap.TenantID == p.TenantID && grants(permsFor(&ap.Permissions, kind), operation) {
				return nil
			}
		}
	}
	return &DeniedError{Principal: p, Kind: kind, Operation: operation, Vault: v.Name}
}

func permsFor(p *vault.Permissions, kind Kind) []string {
	switch kind {
	case Secrets:
		return p.Secrets
	case Keys:
		return p.Keys
	case Certificates:
		return p.Certificates
	}
	return nil
}

func grants(perms []string, op string) bool {
	return slices.ContainsFunc(perms, func(p string) bool { return strings.EqualFold(p, op) || strings.EqualFold(p, "all") })
}
