// Package access decides whether a principal may perform an operation. Data
// operations on a vault follow its model, access policies or RBAC;
// management operations follow RBAC. Access is denied unless a grant says
// otherwise.
package access

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
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

// Operation is a data-plane operation, named in both of Azure's models: the
// access-policy permission it needs, and the RBAC data action.
type Operation struct {
	Kind       Kind
	Permission string
	DataAction string
}

func op(kind Kind, perm, action string) Operation {
	return Operation{Kind: kind, Permission: perm, DataAction: "Microsoft.KeyVault/vaults/" + action}
}

// Secret operations. PUT and PATCH both need the "set" permission, and
// separate data actions, as in Azure. Reading a deleted secret needs "get"
// under policies but, since it returns no value, only metadata rights
// under RBAC.
var (
	SecretGet        = op(Secrets, "get", "secrets/getSecret/action")
	SecretGetDeleted = op(Secrets, "get", "secrets/readMetadata/action")
	SecretList       = op(Secrets, "list", "secrets/readMetadata/action")
	SecretSet        = op(Secrets, "set", "secrets/setSecret/action")
	SecretUpdate     = op(Secrets, "set", "secrets/update/action")
	SecretDelete     = op(Secrets, "delete", "secrets/delete")
	SecretBackup     = op(Secrets, "backup", "secrets/backup/action")
	SecretRestore    = op(Secrets, "restore", "secrets/restore/action")
	SecretRecover    = op(Secrets, "recover", "secrets/recover/action")
	SecretPurge      = op(Secrets, "purge", "secrets/purge/action")
)

// Key operations, with Azure's permission names and data actions.
var (
	KeyGet       = op(Keys, "get", "keys/read")
	KeyList      = op(Keys, "list", "keys/read")
	KeyCreate    = op(Keys, "create", "keys/create/action")
	KeyImport    = op(Keys, "import", "keys/import/action")
	KeyUpdate    = op(Keys, "update", "keys/update/action")
	KeyDelete    = op(Keys, "delete", "keys/delete")
	KeyRecover   = op(Keys, "recover", "keys/recover/action")
	KeyBackup    = op(Keys, "backup", "keys/backup/action")
	KeyRestore   = op(Keys, "restore", "keys/restore/action")
	KeyPurge     = op(Keys, "purge", "keys/purge/action")
	KeyRotate    = op(Keys, "rotate", "keys/rotate/action")
	KeySign      = op(Keys, "sign", "keys/sign/action")
	KeyVerify    = op(Keys, "verify", "keys/verify/action")
	KeyEncrypt   = op(Keys, "encrypt", "keys/encrypt/action")
	KeyDecrypt   = op(Keys, "decrypt", "keys/decrypt/action")
	KeyWrap      = op(Keys, "wrapKey", "keys/wrap/action")
	KeyUnwrap    = op(Keys, "unwrapKey", "keys/unwrap/action")
	KeyGetPolicy = op(Keys, "getrotationpolicy", "keyrotationpolicies/read")
	KeySetPolicy = op(Keys, "setrotationpolicy", "keyrotationpolicies/write")
)

// Certificate operations.
var (
	CertGet     = op(Certificates, "get", "certificates/read")
	CertList    = op(Certificates, "list", "certificates/read")
	CertCreate  = op(Certificates, "create", "certificates/create/action")
	CertImport  = op(Certificates, "import", "certificates/import/action")
	CertUpdate  = op(Certificates, "update", "certificates/update/action")
	CertDelete  = op(Certificates, "delete", "certificates/delete")
	CertRecover = op(Certificates, "recover", "certificates/recover/action")
	CertBackup  = op(Certificates, "backup", "certificates/backup/action")
	CertRestore = op(Certificates, "restore", "certificates/restore/action")
	CertPurge   = op(Certificates, "purge", "certificates/purge/action")

	CertManageContacts = op(Certificates, "managecontacts", "certificatecontacts/write")
	CertGetIssuers     = op(Certificates, "getissuers", "certificatecas/read")
	CertListIssuers    = op(Certificates, "listissuers", "certificatecas/read")
	CertSetIssuers     = op(Certificates, "setissuers", "certificatecas/write")
	CertDeleteIssuers  = op(Certificates, "deleteissuers", "certificatecas/delete")
)

// DeniedError says who was refused what, on which resource, and how to
// grant it.
type DeniedError struct {
	Principal Principal
	// Data-plane denials.
	Vault     string
	Operation Operation
	RBAC      bool
	// Management denials, and the resource of RBAC data denials.
	Action   string
	Resource string
}

// Management reports whether a management operation was refused.
func (e *DeniedError) Management() bool { return e.Vault == "" }

func (e *DeniedError) Error() string {
	p := e.Principal
	switch {
	case e.Management():
		return fmt.Sprintf("The client '%s' with object id '%s' does not have authorization to perform action '%s' over scope '%s'. Grant it with: coffer role assignment create --assignee %s --role Owner --scope %s",
			p.AppID, p.ObjectID, e.Action, e.Resource, p.ObjectID, e.Resource)
	case e.RBAC:
		return fmt.Sprintf("Caller is not authorized to perform action on resource. Caller: %s. Action: '%s'. Resource: '%s'. Assignment: (not found). DecisionReason: 'DeniedWithNoValidRBAC'. Vault: %s. Grant it with: coffer role assignment create --assignee %s --role <a Key Vault role> --scope %s",
			p, e.Operation.DataAction, e.Resource, e.Vault, p.ObjectID, e.Resource)
	}
	kind := strings.TrimSuffix(string(e.Operation.Kind), "s")
	return fmt.Sprintf("The user, group or application '%s' does not have %s %s permission on key vault '%s'. Grant it with: coffer vault set-policy --name %s --object-id %s --%s-permissions %s",
		p, e.Operation.Kind, e.Operation.Permission, e.Vault, e.Vault, p.ObjectID, kind, e.Operation.Permission)
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// Authorizer makes access decisions.
type Authorizer struct {
	roles *rbac.Assignments
}

// New returns an authorizer over the role assignments.
func New(roles *rbac.Assignments) *Authorizer { return &Authorizer{roles: roles} }

// Data returns nil if p may perform o on the object named object (empty for
// vault-wide operations such as list) in v, and a *DeniedError otherwise.
func (a *Authorizer) Data(v *vault.Vault, p Principal, o Operation, object string) error {
	if p.TenantID == v.TenantID {
		if v.RBAC {
			scope := v.ID()
			if object != "" {
				scope = rbac.ObjectScope(scope, string(o.Kind), object)
			}
			if a.roles.AllowedData(p.TenantID, p.ObjectID, o.DataAction, scope) {
				return nil
			}
			return &DeniedError{Principal: p, Vault: v.Name, Operation: o, RBAC: true, Resource: scope}
		}
		if policyAllows(v, p, o) {
			return nil
		}
	}
	return &DeniedError{Principal: p, Vault: v.Name, Operation: o, RBAC: v.RBAC, Resource: v.ID()}
}

func policyAllows(v *vault.Vault, p Principal, o Operation) bool {
	for i := range v.AccessPolicies {
		ap := &v.AccessPolicies[i]
		if ap.ObjectID == p.ObjectID && ap.TenantID == p.TenantID && grants(permsFor(&ap.Permissions, o.Kind), o.Permission) {
			return true
		}
	}
	return false
}

// Manage returns nil if p may perform the management action at scope.
func (a *Authorizer) Manage(p Principal, action, scope string) error {
	if a.roles.Allowed(p.TenantID, p.ObjectID, action, scope) {
		return nil
	}
	return &DeniedError{Principal: p, Action: action, Resource: scope}
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

// grants reports whether perms hold op. Azure's manageissuers is the older
// name for every issuer permission at once, so it grants each of them.
func grants(perms []string, op string) bool {
	issuerOp := strings.HasSuffix(op, "issuers")
	return slices.ContainsFunc(perms, func(p string) bool {
		return strings.EqualFold(p, op) || strings.EqualFold(p, "all") || issuerOp && strings.EqualFold(p, "manageissuers")
	})
}
