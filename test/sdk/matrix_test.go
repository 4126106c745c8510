package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// operation is one secrets route, the state it needs, and the access-policy
// permission and RBAC data actions that allow it.
type operation struct {
	name       string
	permission string
	dataAction string
	prepare    func(h *matrixHarness)
	method     string
	path       string
	body       func(h *matrixHarness) string
}

var secretOps = []operation{
	{"get latest", "get", "secrets/getSecret/action", nil, "GET", "/secrets/m", nil},
	{"get version", "get", "secrets/getSecret/action", nil, "GET", "/secrets/m/{version}", nil},
	{"list", "list", "secrets/readMetadata/action", nil, "GET", "/secrets", nil},
	{"list versions", "list", "secrets/readMetadata/action", nil, "GET", "/secrets/m/versions", nil},
	{"list deleted", "list", "secrets/readMetadata/action", nil, "GET", "/deletedsecrets", nil},
	{"get deleted", "get", "secrets/readMetadata/action", (*matrixHarness).deleteD, "GET", "/deletedsecrets/d", nil},
	{"set", "set", "secrets/setSecret/action", nil, "PUT", "/secrets/m", func(*matrixHarness) string { return `{"value":"new"}` }},
	{"update", "set", "secrets/update/action", nil, "PATCH", "/secrets/m/{version}", func(*matrixHarness) string { return `{"tags":{"a":"b"}}` }},
	{"delete", "delete", "secrets/delete", (*matrixHarness).createX, "DELETE", "/secrets/x", nil},
	{"backup", "backup", "secrets/backup/action", nil, "POST", "/secrets/m/backup", nil},
	{"restore", "restore", "secrets/restore/action", (*matrixHarness).purgeB, "POST", "/secrets/restore", func(h *matrixHarness) string { return `{"value":"` + h.blob + `"}` }},
	{"recover", "recover", "secrets/recover/action", (*matrixHarness).deleteD, "POST", "/deletedsecrets/d/recover", nil},
	{"purge", "purge", "secrets/purge/action", (*matrixHarness).deleteD, "DELETE", "/deletedsecrets/d", nil},
}

type matrixHarness struct {
	t       *testing.T
	env     *testserver.Env
	admin   string
	version string // a version of secret m
	blob    string // a backup of secret b
}

func (h *matrixHarness) adminDo(method, path, body string) (int, kvError) {
	resp, e := raw(h.t, h.env, method, path+"?api-version=7.6", h.admin, body)
	return resp.StatusCode, e
}

// deleteD makes sure secret d is soft-deleted.
func (h *matrixHarness) deleteD() {
	h.adminDo("POST", "/deletedsecrets/d/recover", "")
	h.adminDo("PUT", "/secrets/d", `{"value":"d"}`)
	if s, e := h.adminDo("DELETE", "/secrets/d", ""); s != 200 {
		h.t.Fatalf("prepare: delete d: %d %s", s, e.Error.Message)
	}
}

// createX makes sure secret x exists.
func (h *matrixHarness) createX() {
	h.adminDo("POST", "/deletedsecrets/x/recover", "")
	h.adminDo("PUT", "/secrets/x", `{"value":"x"}`)
}

// purgeB makes sure secret b is gone, so its backup can be restored.
func (h *matrixHarness) purgeB() {
	h.adminDo("DELETE", "/secrets/b", "")
	h.adminDo("DELETE", "/deletedsecrets/b", "")
}

func newMatrix(t *testing.T, env *testserver.Env) *matrixHarness {
	h := &matrixHarness{t: t, env: env, admin: adminToken(t, env, env.Endpoints.Resource())}
	_, _, body := rawBody(t, env, "PUT", "/secrets/m?api-version=7.6", h.admin, `{"value":"m"}`)
	var s struct{ ID string }
	json.Unmarshal(body, &s)
	h.adminDo("PUT", "/secrets/b", `{"value":"b"}`)
	_, _, body = rawBody(t, env, "POST", "/secrets/b/backup?api-version=7.6", h.admin, "")
	var b struct{ Value string }
	json.Unmarshal(body, &b)
	h.blob = b.Value
	if s.ID == "" || h.blob == "" {
		t.Fatal("prepare: no version of m or no backup of b")
	}
	h.version = s.ID[strings.LastIndex(s.ID, "/")+1:]
	return h
}

// principal creates a service principal and returns its object id and a
// vault token.
func principal(t *testing.T, env *testserver.Env, name string) (string, string) {
	var sp mgmthttp.SPOut
	manage(t, env, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &sp)
	status, body, _ := tokenFor(t, env, url.Values{"grant_type": {"client_credentials"}, "client_id": {sp.AppID},
		"client_secret": {sp.Password}, "scope": {env.Endpoints.Resource() + "/.default"}})
	if status != 200 {
		t.Fatalf("token for %s: %d", name, status)
	}
	return sp.ObjectID, body["access_token"].(string)
}

// check runs op as tok and asserts it was allowed or denied with inner.
func (h *matrixHarness) check(label string, op operation, tok string, allowed bool, inner string) {
	if op.prepare != nil {
		op.prepare(h)
	}
	body := ""
	if op.body != nil {
		body = op.body(h)
	}
	path := strings.ReplaceAll(op.path, "{version}", h.version) + "?api-version=7.6"
	resp, e := raw(h.t, h.env, op.method, path, tok, body)
	if allowed && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		h.t.Errorf("%s: %s should be allowed, got %d %s", label, op.name, resp.StatusCode, e.Error.Message)
	}
	if !allowed && (resp.StatusCode != 403 || e.Error.InnerError == nil || e.Error.InnerError.Code != inner) {
		h.t.Errorf("%s: %s should be denied with %s, got %d %+v", label, op.name, inner, resp.StatusCode, e.Error)
	}
}

var permissions = []string{"get", "list", "set", "delete", "backup", "restore", "recover", "purge"}

func TestPermissionMatrixAccessPolicies(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	h := newMatrix(t, env)
	for _, perm := range permissions {
		oid, tok := principal(t, env, "policy-"+perm)
		grantSecrets(t, env, oid, perm)
		for _, op := range secretOps {
			h.check("policy "+perm, op, tok, op.permission == perm, "AccessDenied")
		}
	}
}

func TestPermissionMatrixRBAC(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	ctx := context.Background()
	v, err := env.Server.Vaults.Update(ctx, "demo", func(v *vault.Vault) error { v.RBAC = true; return nil })
	if err != nil {
		t.Fatal(err)
	}
	h := newMatrix(t, env)
	actions := map[string]bool{}
	for _, op := range secretOps {
		actions[op.dataAction] = true
	}
	for action := range actions {
		// A custom role with exactly one data action, at vault scope.
		var role mgmthttp.RoleOut
		manage(t, env, "POST", "role-definitions", mgmthttp.CreateRoleIn{Name: "only " + action, DataActions: []string{"Microsoft.KeyVault/vaults/" + action}}, &role)
		oid, tok := principal(t, env, "rbac-"+strings.ReplaceAll(action, "/", "-"))
		manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: role.ID, Assignee: oid, Scope: v.ID()}, nil)
		for _, op := range secretOps {
			h.check("role "+action, op, tok, op.dataAction == action, "ForbiddenByRbac")
		}
	}
	// Built-in roles, by name and by id, with the data actions Azure
	// documents for them (nil: every secret action).
	for role, allowed := range map[string][]string{
		"Key Vault Secrets User":    {"secrets/getSecret/action", "secrets/readMetadata/action"},
		rbac.KeyVaultReaderID:       {"secrets/readMetadata/action"},
		"Key Vault Secrets Officer": nil,
	} {
		oid, tok := principal(t, env, "builtin-"+role)
		manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: role, Assignee: oid, Scope: v.ID()}, nil)
		for _, op := range secretOps {
			h.check(role, op, tok, allowed == nil || slices.Contains(allowed, op.dataAction), "ForbiddenByRbac")
		}
	}
}

// A role at one secret's scope covers that secret only; at the vault scope,
// every secret.
func TestRoleScopeVaultVersusSecret(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	v, _ := env.Server.Vaults.Update(context.Background(), "demo", func(v *vault.Vault) error { v.RBAC = true; return nil })
	admin := adminToken(t, env, env.Endpoints.Resource())
	for _, n := range []string{"a", "b"} {
		raw(t, env, "PUT", "/secrets/"+n+"?api-version=7.6", admin, `{"value":"`+n+`"}`)
	}
	oneOID, one := principal(t, env, "one-secret")
	allOID, all := principal(t, env, "whole-vault")
	manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: "Key Vault Secrets User", Assignee: oneOID, Scope: v.ID() + "/secrets/a"}, nil)
	manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: "Key Vault Secrets User", Assignee: allOID, Scope: v.ID()}, nil)
	for _, c := range []struct {
		tok, path string
		want      int
	}{
		{one, "/secrets/a", 200}, {one, "/secrets/b", 403}, {one, "/secrets", 403},
		{all, "/secrets/a", 200}, {all, "/secrets/b", 200}, {all, "/secrets", 200},
	} {
		resp, e := raw(t, env, "GET", c.path+"?api-version=7.6", c.tok, "")
		if resp.StatusCode != c.want {
			t.Errorf("GET %s: %d %s, want %d", c.path, resp.StatusCode, e.Error.Message, c.want)
		}
		if c.want == 403 && (!strings.Contains(e.Error.Message, "getSecret") && !strings.Contains(e.Error.Message, "readMetadata")) {
			t.Errorf("RBAC denial %q names no data action", e.Error.Message)
		}
	}
	// Scopes are checked: a vault that does not exist, a foreign subscription.
	for _, scope := range []string{"/subscriptions/" + env.Subscription + "/resourceGroups/default/providers/Microsoft.KeyVault/vaults/nope",
		"/subscriptions/00000000-0000-0000-0000-000000000000", v.ID() + "/widgets/a"} {
		err := env.Client.Manage(context.Background(), "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: "Key Vault Secrets User", Assignee: oneOID, Scope: scope}, nil)
		if err == nil {
			t.Errorf("assignment at bad scope %s accepted", scope)
		}
	}
	_ = fmt.Sprint
}
