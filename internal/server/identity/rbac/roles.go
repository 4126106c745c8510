// Package rbac holds Azure-style role-based access control: built-in role
// definitions (by name and by their Azure role ids), role assignments at
// scopes, and the decision whether a principal may perform an action at a
// scope.
package rbac

import (
	"strings"
)

// Role is a role definition: management actions and data actions, with
// Azure's wildcard syntax ('*' matches any run of characters).
type Role struct {
	ID          string
	Name        string
	Description string
	Actions     []string
	NotActions  []string
	DataActions []string
}

// Azure's built-in role ids.
const (
	OwnerID                    = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
	ContributorID              = "b24988ac-6180-42a0-ab88-20f7382dd24c"
	ReaderID                   = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
	ManagedIdentityOperatorID  = "f1a07417-d97a-45cb-824c-7a7467783830"
	ManagedIdentityContribID   = "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59"
	KeyVaultAdministratorID    = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
	KeyVaultReaderID           = "21090545-7ca7-4776-b22c-e363652d74d2"
	KeyVaultSecretsOfficerID   = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
	KeyVaultSecretsUserID      = "4633458b-17de-408a-b874-0445c86b69e6"
	KeyVaultCryptoOfficerID    = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
	KeyVaultCryptoUserID       = "12338af0-0e69-4776-bea7-57ae8d297424"
	KeyVaultCryptoEncryptionID = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
	KeyVaultCertificatesOffID  = "a4417e6f-fecd-4de8-b567-7b0420556985"
	KeyVaultCertificateUserID  = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
	KeyVaultContributorID      = "f25e0fa2-a7c8-4377-a976-54943a77a395"
	KeyVaultDataAccessAdminID  = "8b54135c-b56d-4d72-a534-26097cfdbe9a"
)

// Management actions Coffer checks.
const (
	ActionVaultRead           = "Microsoft.KeyVault/vaults/read"
	ActionVaultWrite          = "Microsoft.KeyVault/vaults/write"
	ActionAccessPolicyWrite   = "Microsoft.KeyVault/vaults/accessPolicies/write"
	ActionRoleAssignmentRead  = "Microsoft.Authorization/roleAssignments/read"
	ActionRoleAssignmentWrite = "Microsoft.Authorization/roleAssignments/write"
	ActionRoleAssignmentDel   = "Microsoft.Authorization/roleAssignments/delete"
	ActionIdentityRead        = "Microsoft.ManagedIdentity/userAssignedIdentities/read"
	ActionIdentityWrite       = "Microsoft.ManagedIdentity/userAssignedIdentities/write"
	ActionFederatedCredWrite  = "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write"
	// ActionIdentityAssign lets a principal act as (mint tokens for) a
	// managed identity: what a node agent needs for the pods it serves.
	ActionIdentityAssign = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
	// ActionDirectoryWrite covers tenant-level directory changes (service
	// principals, node pools) and operator actions; only Owner holds it.
	ActionDirectoryWrite = "Microsoft.Directory/servicePrincipals/write"
)

// BuiltIn lists the built-in roles. The Key Vault data actions follow
// Azure's definitions. One deliberate difference: Key Vault Administrator
// also manages vaults, access policies and role assignments within its
// scope, where Azure would also need Owner, Contributor or User Access
// Administrator.
var BuiltIn = []Role{
	{ID: OwnerID, Name: "Owner", Description: "Full management access, including role assignments; no data access.",
		Actions: []string{"*"}},
	{ID: ContributorID, Name: "Contributor", Description: "Full management access, except role assignments; no data access.",
		Actions: []string{"*"}, NotActions: []string{"Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write", "Microsoft.Directory/*", "Coffer.Operator/*"}},
	{ID: ReaderID, Name: "Reader", Description: "Reads management resources.",
		Actions: []string{"*/read"}},
	{ID: ManagedIdentityOperatorID, Name: "Managed Identity Operator", Description: "Reads and assigns (acts as) user-assigned identities.",
		Actions: []string{"Microsoft.ManagedIdentity/userAssignedIdentities/*/read", "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action", "Microsoft.ManagedIdentity/userAssignedIdentities/read", "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"}},
	{ID: ManagedIdentityContribID, Name: "Managed Identity Contributor", Description: "Creates, reads, updates and deletes user-assigned identities and their federated credentials.",
		Actions: []string{"Microsoft.ManagedIdentity/userAssignedIdentities/read", "Microsoft.ManagedIdentity/userAssignedIdentities/write", "Microsoft.ManagedIdentity/userAssignedIdentities/delete", "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/*"}},
	{ID: KeyVaultAdministratorID, Name: "Key Vault Administrator", Description: "Every data action on vaults; manages vaults, access policies and role assignments in its scope.",
		Actions:     []string{"Microsoft.KeyVault/*", "Microsoft.Authorization/roleAssignments/*", "Microsoft.Authorization/*/read"},
		DataActions: []string{"Microsoft.KeyVault/vaults/*"}},
	{ID: KeyVaultReaderID, Name: "Key Vault Reader", Description: "Reads metadata of vaults and their objects; no secret values.",
		Actions:     []string{"Microsoft.KeyVault/vaults/read", "Microsoft.Authorization/*/read"},
		DataActions: []string{"Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"}},
	{ID: KeyVaultSecretsOfficerID, Name: "Key Vault Secrets Officer", Description: "Every action on secrets.",
		Actions:     []string{"Microsoft.KeyVault/vaults/read", "Microsoft.Authorization/*/read"},
		DataActions: []string{"Microsoft.KeyVault/vaults/secrets/*"}},
	{ID: KeyVaultSecretsUserID, Name: "Key Vault Secrets User", Description: "Reads secret values and metadata.",
		DataActions: []string{"Microsoft.KeyVault/vaults/secrets/getSecret/action", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"}},
	{ID: KeyVaultCryptoOfficerID, Name: "Key Vault Crypto Officer", Description: "Every action on keys.",
		Actions:     []string{"Microsoft.KeyVault/vaults/read", "Microsoft.Authorization/*/read"},
		DataActions: []string{"Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"}},
	{ID: KeyVaultCryptoUserID, Name: "Key Vault Crypto User", Description: "Reads keys and performs cryptographic operations.",
		DataActions: []string{"Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/update/action", "Microsoft.KeyVault/vaults/keys/backup/action",
			"Microsoft.KeyVault/vaults/keys/encrypt/action", "Microsoft.KeyVault/vaults/keys/decrypt/action", "Microsoft.KeyVault/vaults/keys/wrap/action",
			"Microsoft.KeyVault/vaults/keys/unwrap/action", "Microsoft.KeyVault/vaults/keys/sign/action", "Microsoft.KeyVault/vaults/keys/verify/action"}},
	{ID: KeyVaultCryptoEncryptionID, Name: "Key Vault Crypto Service Encryption User", Description: "Reads keys and wraps or unwraps with them.",
		DataActions: []string{"Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/wrap/action", "Microsoft.KeyVault/vaults/keys/unwrap/action"}},
	{ID: KeyVaultCertificatesOffID, Name: "Key Vault Certificates Officer", Description: "Every action on certificates.",
		Actions:     []string{"Microsoft.KeyVault/vaults/read", "Microsoft.Authorization/*/read"},
		DataActions: []string{"Microsoft.KeyVault/vaults/certificatecas/*", "Microsoft.KeyVault/vaults/certificates/*", "Microsoft.KeyVault/vaults/certificatecontacts/write"}},
	{ID: KeyVaultCertificateUserID, Name: "Key Vault Certificate User", Description: "Reads whole certificates, private key included.",
		DataActions: []string{"Microsoft.KeyVault/vaults/certificates/read", "Microsoft.KeyVault/vaults/secrets/getSecret/action", "Microsoft.KeyVault/vaults/secrets/readMetadata/action", "Microsoft.KeyVault/vaults/keys/read"}},
	{ID: KeyVaultContributorID, Name: "Key Vault Contributor", Description: "Manages vaults; no data access and no role assignments.",
		Actions: []string{"Microsoft.KeyVault/*", "Microsoft.Authorization/*/read"}},
	{ID: KeyVaultDataAccessAdminID, Name: "Key Vault Data Access Administrator", Description: "Manages role assignments for the Key Vault roles.",
		Actions: []string{"Microsoft.Authorization/roleAssignments/*", "Microsoft.Authorization/*/read", "Microsoft.KeyVault/vaults/read"}},
}

// FindRole returns a built-in role by name (case-insensitive), by id, or by
// a full role definition id ending in /roleDefinitions/{id}.
func FindRole(nameOrID string) (Role, bool) {
	key := strings.TrimSpace(nameOrID)
	if i := strings.LastIndex(strings.ToLower(key), "/roledefinitions/"); i >= 0 {
		key = key[i+len("/roledefinitions/"):]
	}
	for _, r := range BuiltIn {
		if strings.EqualFold(r.Name, key) || strings.EqualFold(r.ID, key) {
			return r, true
		}
	}
	return Role{}, false
}

// match reports whether action matches pattern, Azure style: case-insensitive,
// with '*' matching any run of characters, slashes included.
func match(pattern, action string) bool {
	p, a := strings.ToLower(pattern), strings.ToLower(action)
	parts := strings.Split(p, "*")
	if len(parts) == 1 {
		return p == a
	}
	if !strings.HasPrefix(a, parts[0]) {
		return false
	}
	a = a[len(parts[0]):]
	for i, part := range parts[1:] {
		last := i == len(parts)-2
		if last {
			return strings.HasSuffix(a, part)
		}
		j := strings.Index(a, part)
		if j < 0 {
			return false
		}
		a = a[j+len(part):]
	}
	return true
}

func anyMatch(patterns []string, action string) bool {
	for _, p := range patterns {
		if match(p, action) {
			return true
		}
	}
	return false
}

// Allows reports whether the role grants a management action.
func (r Role) Allows(action string) bool {
	return anyMatch(r.Actions, action) && !anyMatch(r.NotActions, action)
}

// AllowsData reports whether the role grants a data action.
func (r Role) AllowsData(action string) bool { return anyMatch(r.DataActions, action) }
