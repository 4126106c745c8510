package security

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// RBAC scope escalation through object-scoped roles (CWE-269): a role
// held at one secret's scope, even Key Vault Administrator, acts on that
// secret only, and cannot widen itself.
func TestObjectScopedRoleEscalation(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	ctx := context.Background()
	v, err := env.Server.Vaults.Update(ctx, "demo", func(v *vault.Vault) error { v.RBAC = true; return nil })
	if err != nil {
		t.Fatal(err)
	}
	admin := adminToken(t, env, env.Endpoints.Resource())
	for _, n := range []string{"a", "ab", "b"} {
		if code, e, _ := vaultCall(t, env, "PUT", "/secrets/"+n+"?api-version=7.6", admin, `{"value":"v-`+n+`"}`); code != 200 {
			t.Fatalf("seed %s: %d %s", n, code, e.Error.Message)
		}
	}
	sp := servicePrincipal(t, env, "object-admin")
	manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: "Key Vault Administrator", Assignee: sp.ObjectID, Scope: v.ID() + "/secrets/a"}, nil)
	data, mgmt := spToken(t, env, sp, env.Endpoints.Resource()), spToken(t, env, sp, mgmtResource)
	body := func(v any) string { b, _ := json.Marshal(v); return string(b) }

	if code, _, _ := vaultCall(t, env, "GET", "/secrets/a?api-version=7.6", data, ""); code != 200 {
		t.Fatalf("the role's own secret: %d", code)
	}
	for name, c := range map[string]struct {
		method, path, body string
		mgmt               bool
	}{
		"scope escalation: a sibling secret":                        {method: "GET", path: "/secrets/b"},
		"scope escalation: a secret whose name extends the scope's": {method: "GET", path: "/secrets/ab"},
		"scope escalation: listing the vault":                       {method: "GET", path: "/secrets"},
		"scope escalation: a key of the same name":                  {method: "GET", path: "/keys/a"},
		"scope escalation: a role assignment at the vault": {mgmt: true, method: "POST", path: "role-assignments",
			body: body(mgmthttp.CreateAssignmentIn{Role: "Key Vault Administrator", Assignee: sp.ObjectID, Scope: v.ID()})},
		"scope escalation: a role assignment at a sibling secret": {mgmt: true, method: "POST", path: "role-assignments",
			body: body(mgmthttp.CreateAssignmentIn{Role: "Key Vault Secrets User", Assignee: sp.ObjectID, Scope: v.ID() + "/secrets/b"})},
		"scope escalation: a role assignment through a '..' segment": {mgmt: true, method: "POST", path: "role-assignments",
			body: body(mgmthttp.CreateAssignmentIn{Role: "Key Vault Secrets User", Assignee: sp.ObjectID, Scope: v.ID() + "/secrets/a/../b"})},
		"scope escalation: an access policy on the vault": {mgmt: true, method: "POST", path: "vaults/demo/set-policy",
			body: body(mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &[]string{"get", "list"}})},
		"scope escalation: changing the vault": {mgmt: true, method: "PATCH", path: "vaults/demo", body: `{"throttle":"off"}`},
		"scope escalation: a custom role definition": {mgmt: true, method: "POST", path: "role-definitions",
			body: `{"name":"mine","actions":["*"],"dataActions":["Microsoft.KeyVault/vaults/*"],"assignableScopes":["/"]}`},
	} {
		t.Run(name, func(t *testing.T) {
			var code int
			var e azErr
			if c.mgmt {
				code, e, _ = mgmtCall(t, env, c.method, c.path, mgmt, c.body)
			} else {
				code, e, _ = vaultCall(t, env, c.method, c.path+"?api-version=7.6", data, c.body)
			}
			if code != 403 && code != 400 {
				t.Fatalf("%d %s %q", code, e.Error.Code, e.Error.Message)
			}
		})
	}
}
