package rbac

import (
	"context"
	"errors"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, action string
		want            bool
	}{
		{"*", "Microsoft.KeyVault/vaults/write", true},
		{"Microsoft.KeyVault/vaults/*", "microsoft.keyvault/vaults/secrets/getSecret/action", true},
		{"Microsoft.KeyVault/vaults/secrets/*", "Microsoft.KeyVault/vaults/keys/read", false},
		{"*/read", "Microsoft.KeyVault/vaults/read", true},
		{"*/read", "Microsoft.KeyVault/vaults/write", false},
		{"Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/keys/read", true},
		{"Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action", false},
		{"Microsoft.Authorization/*/Write", "Microsoft.Authorization/roleAssignments/write", true},
		{"Microsoft.KeyVault/vaults/secrets/getSecret/action", "Microsoft.KeyVault/vaults/secrets/getSecret/action", true},
		{"Microsoft.KeyVault/vaults/secrets/getSecret/action", "Microsoft.KeyVault/vaults/secrets/getSecret/actionX", false},
	}
	for _, c := range cases {
		if got := match(c.pattern, c.action); got != c.want {
			t.Errorf("match(%q, %q) = %v", c.pattern, c.action, got)
		}
	}
}

func TestRolesAndLookup(t *testing.T) {
	for _, name := range []string{"Key Vault Secrets User", "key vault secrets user", KeyVaultSecretsUserID, "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/" + KeyVaultSecretsUserID} {
		if r, ok := FindRole(name); !ok || r.ID != KeyVaultSecretsUserID {
			t.Errorf("FindRole(%q) = %v %v", name, r.Name, ok)
		}
	}
	user, _ := FindRole("Key Vault Secrets User")
	if !user.AllowsData("Microsoft.KeyVault/vaults/secrets/getSecret/action") || user.AllowsData("Microsoft.KeyVault/vaults/secrets/setSecret/action") {
		t.Error("Secrets User grants the wrong secret actions")
	}
	reader, _ := FindRole("Key Vault Reader")
	if reader.AllowsData("Microsoft.KeyVault/vaults/secrets/getSecret/action") || !reader.AllowsData("Microsoft.KeyVault/vaults/secrets/readMetadata/action") {
		t.Error("Key Vault Reader must list secrets but never read values")
	}
	contrib, _ := FindRole("Contributor")
	if contrib.Allows(ActionRoleAssignmentWrite) || !contrib.Allows(ActionVaultWrite) {
		t.Error("Contributor must write vaults but not role assignments")
	}
	owner, _ := FindRole("Owner")
	if len(owner.DataActions) != 0 || !owner.Allows(ActionRoleAssignmentWrite) {
		t.Error("Owner manages everything and reads no data")
	}
}

func TestScopes(t *testing.T) {
	vault := VaultID("sub", "rg", "demo")
	if !Within(ObjectScope(vault, "secrets", "a"), vault) || !Within(vault, ResourceGroupScope("SUB", "RG")) || !Within(vault, Root) {
		t.Fatal("Within misses a parent")
	}
	if Within(VaultID("sub", "rg", "demo2"), vault) || Within(vault, ObjectScope(vault, "secrets", "a")) {
		t.Fatal("Within matched a sibling or a child")
	}
	for _, s := range []string{"/", "/subscriptions/x", "/subscriptions/x/resourceGroups/rg", vault, ObjectScope(vault, "secrets", "a")} {
		if err := ValidateScope(s); err != nil {
			t.Errorf("ValidateScope(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "subscriptions/x", "/subscriptions", "/subscriptions/x/", "/foo/x", "/subscriptions/x/resourceGroups", "/subscriptions/x/resourceGroups/rg/providers/a", "/subscriptions/x//a"} {
		if err := ValidateScope(s); err == nil {
			t.Errorf("ValidateScope(%q) accepted", s)
		}
	}
}

func TestAssignments(t *testing.T) {
	ctx := context.Background()
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	s, err := Open(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	vault := VaultID("sub", "rg", "demo")
	a, err := s.Create(ctx, Assignment{TenantID: "t", RoleID: "Key Vault Secrets User", PrincipalID: "p", Scope: ObjectScope(vault, "secrets", "one")})
	if err != nil {
		t.Fatal(err)
	}
	get := "Microsoft.KeyVault/vaults/secrets/getSecret/action"
	if !s.AllowedData("t", "p", get, ObjectScope(vault, "secrets", "ONE")) {
		t.Error("object-scoped grant does not apply to its object")
	}
	if s.AllowedData("t", "p", get, ObjectScope(vault, "secrets", "two")) || s.AllowedData("t", "p", get, vault) {
		t.Error("object-scoped grant leaks to another object or the vault")
	}
	if s.AllowedData("u", "p", get, ObjectScope(vault, "secrets", "one")) {
		t.Error("grant leaks to another tenant")
	}
	if _, err := s.Create(ctx, Assignment{TenantID: "t", RoleID: KeyVaultSecretsUserID, PrincipalID: "p", Scope: ObjectScope(vault, "secrets", "one")}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate = %v", err)
	}
	if _, err := s.Create(ctx, Assignment{TenantID: "t", RoleID: "Godlike", PrincipalID: "p", Scope: vault}); err == nil {
		t.Error("unknown role accepted")
	}
	// Reload: assignments persist.
	s2, _ := Open(ctx, b, nil)
	if !s2.AllowedData("t", "p", get, ObjectScope(vault, "secrets", "one")) {
		t.Error("assignment lost on reload")
	}
	if _, err := s2.Delete(ctx, "t", a.ID); err != nil {
		t.Fatal(err)
	}
	if s2.AllowedData("t", "p", get, ObjectScope(vault, "secrets", "one")) {
		t.Error("deleted assignment still grants")
	}
	s3, _ := Open(ctx, b, nil)
	if len(s3.List("t", nil)) != 0 {
		t.Error("deleted assignment reloaded")
	}
}

func TestCustomRoles(t *testing.T) {
	ctx := context.Background()
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	s, _ := Open(ctx, b, nil)
	role, err := s.CreateRole(ctx, "t", Role{Name: "Secret Setter", DataActions: []string{"Microsoft.KeyVault/vaults/secrets/setSecret/action"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRole(ctx, "t", Role{Name: "secret setter", DataActions: []string{"x"}}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name = %v", err)
	}
	if _, err := s.CreateRole(ctx, "t", Role{Name: "Owner", Actions: []string{"*"}}); !errors.Is(err, ErrExists) {
		t.Fatalf("a custom role shadowed a built-in one: %v", err)
	}
	if _, err := s.CreateRole(ctx, "t", Role{Name: "Nothing"}); !errors.Is(err, ErrInvalidRole) {
		t.Fatalf("empty role = %v", err)
	}
	if _, err := s.Create(ctx, Assignment{TenantID: "t", RoleID: "Secret Setter", PrincipalID: "p", Scope: Root}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, Assignment{TenantID: "u", RoleID: "Secret Setter", PrincipalID: "p", Scope: Root}); !errors.Is(err, ErrInvalidRole) {
		t.Fatalf("a custom role leaked to another tenant: %v", err)
	}
	set, get := "Microsoft.KeyVault/vaults/secrets/setSecret/action", "Microsoft.KeyVault/vaults/secrets/getSecret/action"
	s2, _ := Open(ctx, b, nil) // custom roles persist
	if !s2.AllowedData("t", "p", set, "/x") || s2.AllowedData("t", "p", get, "/x") {
		t.Fatal("custom role grants the wrong actions after reload")
	}
	if r, ok := s2.Role("t", role.ID); !ok || r.Name != "Secret Setter" {
		t.Fatal("custom role not found by id")
	}
}
