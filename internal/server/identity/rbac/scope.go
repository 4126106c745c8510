package rbac

import (
	"fmt"
	"strings"
)

// Root is the scope above every subscription.
const Root = "/"

// Resource ids, in Azure's forms.

// SubscriptionScope returns /subscriptions/{sub}.
func SubscriptionScope(sub string) string { return "/subscriptions/" + sub }

// ResourceGroupScope returns /subscriptions/{sub}/resourceGroups/{rg}.
func ResourceGroupScope(sub, rg string) string {
	return SubscriptionScope(sub) + "/resourceGroups/" + rg
}

// VaultID returns a vault's resource id.
func VaultID(sub, rg, vault string) string {
	return ResourceGroupScope(sub, rg) + "/providers/Microsoft.KeyVault/vaults/" + vault
}

// ObjectScope returns the scope of one object in a vault, such as
// {vaultID}/secrets/{name}.
func ObjectScope(vaultID, kind, name string) string { return vaultID + "/" + kind + "/" + name }

// IdentityID returns a user-assigned managed identity's resource id.
func IdentityID(sub, rg, name string) string {
	return ResourceGroupScope(sub, rg) + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// NodePoolID returns a node pool's resource id (a VM scale set, as in AKS).
func NodePoolID(sub, rg, name string) string {
	return ResourceGroupScope(sub, rg) + "/providers/Microsoft.Compute/virtualMachineScaleSets/" + name
}

// Within reports whether scope is inside (or equal to) parent, comparing
// whole path segments case-insensitively, as Azure does.
func Within(scope, parent string) bool {
	if parent == Root {
		return true
	}
	s, p := strings.ToLower(strings.TrimSuffix(scope, "/")), strings.ToLower(strings.TrimSuffix(parent, "/"))
	return s == p || strings.HasPrefix(s, p+"/")
}

// ValidateScope checks a scope's shape: the root, a subscription, a resource
// group, or a resource (and sub-resources) below one.
func ValidateScope(scope string) error {
	if scope == Root {
		return nil
	}
	segs := strings.Split(strings.TrimPrefix(scope, "/"), "/")
	bad := func(why string) error {
		return fmt.Errorf("scope %q is not valid: %s; use /, /subscriptions/{id}, .../resourceGroups/{rg}, or a resource id such as a vault's", scope, why)
	}
	if !strings.HasPrefix(scope, "/") || strings.HasSuffix(scope, "/") {
		return bad("it must start and not end with /")
	}
	if len(segs) < 2 || !strings.EqualFold(segs[0], "subscriptions") {
		return bad("it must start with /subscriptions/{id}")
	}
	for _, s := range segs {
		if s == "" {
			return bad("it has an empty segment")
		}
	}
	if len(segs) > 2 && (!strings.EqualFold(segs[2], "resourceGroups") || len(segs) < 4) {
		return bad("after the subscription comes resourceGroups/{name}")
	}
	if len(segs) > 4 && (!strings.EqualFold(segs[4], "providers") || len(segs) < 8 || len(segs)%2 != 0) {
		return bad("a resource is providers/{namespace}/{type}/{name}[/{type}/{name}...]")
	}
	return nil
}
