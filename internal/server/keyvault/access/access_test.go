package access

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func authorizer(t *testing.T) (*Authorizer, *rbac.Assignments) {
	b, _ := barrier.Open(context.Background(), inmem.New(), rootkey.Generate())
	roles, err := rbac.Open(context.Background(), b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return New(roles), roles
}

func TestAccessPolicies(t *testing.T) {
	a, roles := authorizer(t)
	v := &vault.Vault{Name: "demo", TenantID: "t1", SubscriptionID: "s", ResourceGroup: "rg", AccessPolicies: []vault.AccessPolicy{
		{TenantID: "t1", ObjectID: "reader", Permissions: vault.Permissions{Secrets: []string{"Get", "list"}}},
		{TenantID: "t1", ObjectID: "admin", Permissions: vault.AllPermissions()},
		{TenantID: "t1", ObjectID: "keysonly", Permissions: vault.Permissions{Keys: []string{"all"}}},
	}}
	// A role assignment never opens a policy vault.
	roles.Create(context.Background(), rbac.Assignment{TenantID: "t1", RoleID: rbac.KeyVaultAdministratorID, PrincipalID: "rbac-admin", Scope: rbac.Root})
	keysGet := Operation{Kind: Keys, Permission: "sign", DataAction: "x"}
	cases := []struct {
		oid, tenant string
		op          Operation
		ok          bool
	}{
		{"reader", "t1", SecretGet, true},
		{"reader", "t1", SecretList, true},
		{"reader", "t1", SecretSet, false},
		{"reader", "t1", SecretUpdate, false},
		{"admin", "t1", SecretPurge, true},
		{"keysonly", "t1", keysGet, true},
		{"keysonly", "t1", SecretGet, false},
		{"admin", "t2", SecretGet, false},
		{"stranger", "t1", SecretGet, false},
		{"rbac-admin", "t1", SecretGet, false},
	}
	for _, c := range cases {
		p := Principal{TenantID: c.tenant, ObjectID: c.oid}
		err := a.Data(v, p, c.op, "x")
		if (err == nil) != c.ok {
			t.Errorf("Data(%s, %s %s) = %v, want allowed=%v", c.oid, c.op.Kind, c.op.Permission, err, c.ok)
		}
		var de *DeniedError
		if err != nil && (!errors.As(err, &de) || de.RBAC || !strings.Contains(err.Error(), c.oid) || !strings.Contains(err.Error(), string(c.op.Kind)+" "+c.op.Permission)) {
			t.Errorf("policy denial %q does not name the operation and the caller", err)
		}
	}
}

func TestRBACVault(t *testing.T) {
	a, roles := authorizer(t)
	ctx := context.Background()
	v := &vault.Vault{Name: "demo", TenantID: "t1", SubscriptionID: "s", ResourceGroup: "rg", RBAC: true,
		AccessPolicies: []vault.AccessPolicy{{TenantID: "t1", ObjectID: "policy-holder", Permissions: vault.AllPermissions()}}}
	roles.Create(ctx, rbac.Assignment{TenantID: "t1", RoleID: "Key Vault Secrets User", PrincipalID: "user", Scope: v.ID()})
	roles.Create(ctx, rbac.Assignment{TenantID: "t1", RoleID: "Key Vault Secrets User", PrincipalID: "one", Scope: rbac.ObjectScope(v.ID(), "secrets", "a")})
	roles.Create(ctx, rbac.Assignment{TenantID: "t1", RoleID: "Key Vault Reader", PrincipalID: "reader", Scope: rbac.ResourceGroupScope("s", "rg")})
	p := func(oid string) Principal { return Principal{TenantID: "t1", ObjectID: oid} }
	checks := []struct {
		oid    string
		op     Operation
		object string
		ok     bool
	}{
		{"user", SecretGet, "a", true},
		{"user", SecretList, "", true},
		{"user", SecretSet, "a", false},
		{"one", SecretGet, "a", true},
		{"one", SecretGet, "b", false},
		{"one", SecretList, "", false},
		{"reader", SecretList, "", true},
		{"reader", SecretGet, "a", false},
		{"policy-holder", SecretGet, "a", false}, // policies are ignored on RBAC vaults
	}
	for _, c := range checks {
		err := a.Data(v, p(c.oid), c.op, c.object)
		if (err == nil) != c.ok {
			t.Errorf("Data(%s, %s on %q) = %v, want allowed=%v", c.oid, c.op.DataAction, c.object, err, c.ok)
		}
		var de *DeniedError
		if err != nil && (!errors.As(err, &de) || !de.RBAC || !strings.Contains(err.Error(), c.op.DataAction)) {
			t.Errorf("RBAC denial %q lacks the data action", err)
		}
	}
	if err := a.Manage(p("user"), rbac.ActionVaultWrite, v.ID()); err == nil || !strings.Contains(err.Error(), rbac.ActionVaultWrite) {
		t.Errorf("management denial = %v", err)
	}
}
