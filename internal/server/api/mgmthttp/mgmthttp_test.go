package mgmthttp_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// who names the caller of a case.
const (
	admin  = "admin"
	nobody = "nobody" // authenticated, no role
	anon   = ""
)

// routeCase is one request and what it must answer.
type routeCase struct {
	method string
	path   string
	body   string
	who    string
	status int
	code   string // the error code, for failures
	msg    string // a part of the error message
	check  func(t *testing.T, e *env, a answer)
}

func (c routeCase) run(t *testing.T, e *env) answer {
	t.Helper()
	tok := map[string]string{admin: e.admin, nobody: e.nobody}[c.who]
	if strings.HasPrefix(c.who, "raw:") {
		tok = strings.TrimPrefix(c.who, "raw:")
	}
	a := e.do(t, c.method, c.path, tok, c.body)
	if a.status != c.status {
		t.Fatalf("%s %s: status %d, want %d: %s", c.method, c.path, a.status, c.status, a.raw)
	}
	code, msg := a.errCode()
	if c.code != "" && (code != c.code || !strings.Contains(msg, c.msg)) {
		t.Fatalf("error %q %q, want %q containing %q", code, msg, c.code, c.msg)
	}
	// Every answer of an operation is no-store: some carry credentials.
	operation := a.status != http.StatusUnauthorized && !strings.HasPrefix(msg, "No management operation")
	if operation && a.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", a.header.Get("Cache-Control"))
	}
	if c.check != nil {
		c.check(t, e, a)
	}
	return a
}

func hasVault(name string) func(t *testing.T, e *env, a answer) {
	return func(t *testing.T, e *env, a answer) {
		t.Helper()
		vs, _ := a.body["value"].([]any)
		for _, v := range vs {
			if m, _ := v.(map[string]any); m["name"] == name {
				return
			}
		}
		if name != "" {
			t.Errorf("vault %s not in %s", name, a.raw)
		}
	}
}

func emptyList(t *testing.T, _ *env, a answer) {
	t.Helper()
	if vs, ok := a.body["value"].([]any); !ok || len(vs) != 0 {
		t.Errorf("want an empty list, got %s", a.raw)
	}
}

// Authentication comes first, for every route: the management audience
// only, with the Bearer challenge.
func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	vaultToken := e.token(t, e.state.TenantID, e.nobodySP.AppID, rotateSecret(t, e), e.ep.Resource())
	for name, c := range map[string]routeCase{
		"no token":             {method: "GET", path: "/coffer/v1/vaults", status: 401, code: "Unauthorized"},
		"not a token":          {method: "GET", path: "/coffer/v1/vaults", who: "raw:not.a.token", status: 401, code: "Unauthorized"},
		"the vault audience":   {method: "GET", path: "/coffer/v1/vaults", who: "raw:" + vaultToken, status: 401, code: "Unauthorized"},
		"before the body":      {method: "POST", path: "/coffer/v1/vaults", body: "{not json", status: 401, code: "Unauthorized"},
		"an unknown route too": {method: "POST", path: "/coffer/v1/operator/rotate-data-key", status: 401, code: "Unauthorized"},
	} {
		t.Run(name, func(t *testing.T) {
			a := c.run(t, e)
			ch := a.header.Get("WWW-Authenticate")
			if !strings.HasPrefix(ch, `Bearer authorization="`+e.ep.AuthorityURL()) || !strings.Contains(ch, `resource="`+endpoint.ManagementResource+`"`) {
				t.Errorf("WWW-Authenticate %q", ch)
			}
		})
	}
	t.Run("an expired token", func(t *testing.T) {
		e := newEnv(t)
		e.clock.add(2 * time.Hour)
		routeCase{method: "GET", path: "/coffer/v1/vaults", who: admin, status: 401, code: "Unauthorized", msg: "expired"}.run(t, e)
	})
}

// rotateSecret gives the nobody principal a new secret and returns it.
func rotateSecret(t *testing.T, e *env) string {
	t.Helper()
	s, err := e.auth.AddClientSecret(context.Background(), e.state.TenantID, e.nobodySP.AppID, false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Each route: request -> status and body, for the administrator and for
// a principal without roles.
func TestRoutes(t *testing.T) {
	e := newEnv(t)
	big := `{"name":"` + strings.Repeat("a", 64<<10) + `"}`
	for name, c := range map[string]routeCase{
		// Vaults.
		"list vaults":                        {method: "GET", path: "/coffer/v1/vaults", who: admin, status: 200, check: hasVault("demo")},
		"list vaults, no role":               {method: "GET", path: "/coffer/v1/vaults", who: nobody, status: 200, check: emptyList},
		"show a vault":                       {method: "GET", path: "/coffer/v1/vaults/demo", who: admin, status: 200, check: fields(map[string]any{"name": "demo", "vaultUri": "https://demo.vault.localhost:8443/", "resourceGroup": "default", "softDeleteRetentionInDays": 90.0, "recoveryLevel": "Recoverable+Purgeable"})},
		"show a vault, no role":              {method: "GET", path: "/coffer/v1/vaults/demo", who: nobody, status: 403, code: "AuthorizationFailed", msg: "Microsoft.KeyVault/vaults/read"},
		"show a missing vault":               {method: "GET", path: "/coffer/v1/vaults/nope", who: admin, status: 404, code: "NotFound", msg: "nope"},
		"create a vault":                     {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"created1","resourceGroup":"rg1","softDeleteRetentionInDays":7,"enablePurgeProtection":true}`, who: admin, status: 201, check: fields(map[string]any{"name": "created1", "resourceGroup": "rg1", "recoveryLevel": "CustomizedRecoverable", "vaultUri": "https://created1.vault.localhost:8443/"})},
		"create a vault, no body":            {method: "POST", path: "/coffer/v1/vaults", who: admin, status: 400, code: "BadParameter"},
		"create a vault, no role":            {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"created2"}`, who: nobody, status: 403, code: "AuthorizationFailed", msg: "Microsoft.KeyVault/vaults/write"},
		"create an existing vault":           {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"demo"}`, who: admin, status: 409, code: "Conflict"},
		"create a badly named vault":         {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"no_underscores"}`, who: admin, status: 400, code: "BadParameter"},
		"create a vault, short retention":    {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"created3","softDeleteRetentionInDays":3}`, who: admin, status: 400, code: "BadParameter", msg: "retention must be 7 to 90 days"},
		"create a vault, bad resource group": {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"created4","resourceGroup":"a/b"}`, who: admin, status: 400, code: "BadParameter", msg: "resource group"},
		"bad JSON":                           {method: "POST", path: "/coffer/v1/vaults", body: `{"name":`, who: admin, status: 400, code: "BadParameter", msg: "not valid JSON"},
		"trailing data":                      {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"created5"} {}`, who: admin, status: 400, code: "BadParameter", msg: "not valid JSON"},
		"a field of the wrong type":          {method: "POST", path: "/coffer/v1/vaults", body: `{"name":5}`, who: admin, status: 400, code: "BadParameter", msg: "field 'name' must not be a JSON number"},
		"an oversized body":                  {method: "POST", path: "/coffer/v1/vaults", body: big, who: admin, status: 413, code: "RequestEntityTooLarge", msg: "65536-byte limit"},
		"a body nested 30,000 deep":          {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"n","tags":` + strings.Repeat("[", 30000) + strings.Repeat("]", 30000) + `}`, who: admin, status: 400, code: "BadParameter", msg: "exceeded max depth"},
		"set a policy":                       {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"11111111-1111-1111-1111-111111111111","secrets":["get","list"]}`, who: admin, status: 200, check: policy("11111111-1111-1111-1111-111111111111", "secrets", "get,list")},
		"set a policy by name":               {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"spn":"nobody","keys":["get"]}`, who: admin, status: 200, check: func(t *testing.T, e *env, a answer) { policy(e.nobodySP.ObjectID, "keys", "get")(t, e, a) }},
		"set a policy for an unknown name":   {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"spn":"no-such-app","keys":["get"]}`, who: admin, status: 404, code: "NotFound"},
		"set a policy, both targets":         {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"x","spn":"y","keys":["get"]}`, who: admin, status: 400, code: "BadParameter", msg: "exactly one of objectId and spn"},
		"set a policy, no target":            {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"keys":["get"]}`, who: admin, status: 400, code: "BadParameter", msg: "exactly one"},
		"set a policy, no permissions":       {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"22222222-2222-2222-2222-222222222222"}`, who: admin, status: 400, code: "BadParameter", msg: "at least one"},
		"set a policy, unknown permission":   {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"22222222-2222-2222-2222-222222222222","secrets":["fly"]}`, who: admin, status: 400, code: "BadParameter", msg: "fly"},
		"set a policy, no role":              {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"22222222-2222-2222-2222-222222222222","secrets":["get"]}`, who: nobody, status: 403, code: "AuthorizationFailed"},
		"set a policy, missing vault":        {method: "POST", path: "/coffer/v1/vaults/nope/set-policy", body: `{"objectId":"x","secrets":["get"]}`, who: admin, status: 404, code: "NotFound"},
		"delete a policy nobody has":         {method: "POST", path: "/coffer/v1/vaults/demo/delete-policy", body: `{"objectId":"33333333-3333-3333-3333-333333333333"}`, who: admin, status: 404, code: "NotFound", msg: "no access policy for object 33333333"},

		// The directory.
		"list service principals":             {method: "GET", path: "/coffer/v1/service-principals", who: admin, status: 200, check: noPasswords},
		"list service principals, no role":    {method: "GET", path: "/coffer/v1/service-principals", who: nobody, status: 403, code: "AuthorizationFailed", msg: "Microsoft.Directory/servicePrincipals/read"},
		"create a service principal":          {method: "POST", path: "/coffer/v1/service-principals", body: `{"displayName":"app-one"}`, who: admin, status: 201, check: fields(map[string]any{"displayName": "app-one", "password": nonEmpty})},
		"create a service principal, no role": {method: "POST", path: "/coffer/v1/service-principals", body: `{"displayName":"app-two"}`, who: nobody, status: 403, code: "AuthorizationFailed"},
		"reset credentials of a missing app":  {method: "POST", path: "/coffer/v1/service-principals/00000000-0000-0000-0000-000000000000/credentials", who: admin, status: 404, code: "NotFound"},
		"reset credentials, bad certificate":  {method: "POST", path: "/coffer/v1/service-principals/{nobody}/credentials", body: `{"certificate":"not a PEM"}`, who: admin, status: 400, code: "BadParameter", msg: "no PEM CERTIFICATE block"},
		"create an identity":                  {method: "POST", path: "/coffer/v1/identities", body: `{"name":"id-one","resourceGroup":"apps"}`, who: admin, status: 201, check: fields(map[string]any{"name": "id-one", "resourceGroup": "apps", "type": "Microsoft.ManagedIdentity/userAssignedIdentities", "clientId": nonEmpty, "principalId": nonEmpty, "id": "/subscriptions/{sub}/resourceGroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-one"})},
		"create an identity, no name":         {method: "POST", path: "/coffer/v1/identities", body: `{"resourceGroup":"apps"}`, who: admin, status: 400, code: "BadParameter", msg: "give the identity's name and resourceGroup"},
		"create an identity, no role":         {method: "POST", path: "/coffer/v1/identities", body: `{"name":"id-two","resourceGroup":"apps"}`, who: nobody, status: 403, code: "AuthorizationFailed", msg: "Microsoft.ManagedIdentity/userAssignedIdentities/write"},
		"show a missing identity":             {method: "GET", path: "/coffer/v1/identities/apps/nope", who: admin, status: 404, code: "NotFound"},
		"list identities, no role":            {method: "GET", path: "/coffer/v1/identities", who: nobody, status: 200, check: emptyList},
		"create a node pool, no name":         {method: "POST", path: "/coffer/v1/node-pools", body: `{}`, who: admin, status: 400, code: "BadParameter", msg: "node pool"},
		"create a node pool, no role":         {method: "POST", path: "/coffer/v1/node-pools", body: `{"name":"np","resourceGroup":"nodes"}`, who: nobody, status: 403, code: "AuthorizationFailed"},
		"assign to a missing node pool":       {method: "POST", path: "/coffer/v1/node-pools/nodes/nope/identities", body: `{"identities":[]}`, who: admin, status: 404, code: "NotFound"},

		// Roles.
		"list role definitions":               {method: "GET", path: "/coffer/v1/role-definitions", who: admin, status: 200, check: hasRole("Managed Identity Operator")},
		"create a role, no role":              {method: "POST", path: "/coffer/v1/role-definitions", body: `{"Name":"r","Actions":["*/read"]}`, who: nobody, status: 403, code: "AuthorizationFailed"},
		"assign an unknown role":              {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Wizard","assignee":"nobody","scope":"/subscriptions/{sub}"}`, who: admin, status: 400, code: "BadParameter", msg: `role "Wizard" does not exist`},
		"assign to an unknown principal":      {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"no-such-principal"}`, who: admin, status: 404, code: "NotFound"},
		"assign outside the subscription":     {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"/subscriptions/other"}`, who: admin, status: 400, code: "BadParameter", msg: "outside this tenant's subscription"},
		"assign at a malformed scope":         {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"subscriptions/x/"}`, who: admin, status: 400, code: "BadParameter", msg: "is not valid"},
		"assign at a missing vault":           {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"/subscriptions/{sub}/resourceGroups/default/providers/Microsoft.KeyVault/vaults/nope"}`, who: admin, status: 404, code: "NotFound", msg: "names vault nope"},
		"assign below a vault, badly":         {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"/subscriptions/{sub}/resourceGroups/default/providers/Microsoft.KeyVault/vaults/demo/blobs/x"}`, who: admin, status: 400, code: "BadParameter", msg: "secrets/{name}, keys/{name} or certificates/{name}"},
		"assign, no role":                     {method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody"}`, who: nobody, status: 403, code: "AuthorizationFailed", msg: "Microsoft.Authorization/roleAssignments/write"},
		"list assignments of an unknown role": {method: "GET", path: "/coffer/v1/role-assignments?role=Wizard", who: admin, status: 400, code: "BadParameter"},
		"list assignments, no role":           {method: "GET", path: "/coffer/v1/role-assignments", who: nobody, status: 200, check: emptyList},
		"delete a missing assignment":         {method: "DELETE", path: "/coffer/v1/role-assignments/nope", who: admin, status: 404, code: "NotFound"},

		// Operator actions.
		"rotate the data key":             {method: "POST", path: "/coffer/v1/operator/rotate-data-key", who: admin, status: 200, check: fields(map[string]any{"activeTerm": positive})},
		"rotate the data key, no role":    {method: "POST", path: "/coffer/v1/operator/rotate-data-key", who: nobody, status: 403, code: "AuthorizationFailed", msg: mgmthttp.ActionOperator},
		"rotate the root key, bad key":    {method: "POST", path: "/coffer/v1/operator/rotate-root-key", body: `{"newRootKey":"short"}`, who: admin, status: 400, code: "BadParameter", msg: "newRootKey:"},
		"rotate the root key, none given": {method: "POST", path: "/coffer/v1/operator/rotate-root-key", who: admin, status: 400, code: "BadParameter", msg: "pass newRootKey"},
		"rotate the root key, no role":    {method: "POST", path: "/coffer/v1/operator/rotate-root-key", who: nobody, status: 403, code: "AuthorizationFailed"},
		"rotate the signing key, no role": {method: "POST", path: "/coffer/v1/operator/rotate-signing-key", who: nobody, status: 403, code: "AuthorizationFailed"},

		// No such route.
		"an unknown route":  {method: "GET", path: "/coffer/v1/wizards", who: admin, status: 404, code: "NotFound", msg: "No management operation matches GET /coffer/v1/wizards"},
		"an unknown method": {method: "PATCH", path: "/coffer/v1/vaults", who: admin, status: 404, code: "NotFound", msg: "PATCH"},
	} {
		t.Run(name, func(t *testing.T) {
			c.path = e.fill(c.path)
			c.body = e.fill(c.body)
			c.run(t, e)
		})
	}
}

// fill replaces {sub} and {nobody} with the tenant's subscription and the
// role-less principal's app id.
func (e *env) fill(s string) string {
	return strings.NewReplacer("{sub}", e.sub, "{nobody}", e.nobodySP.AppID).Replace(s)
}

// nonEmpty and positive are field expectations that are not one value.
var (
	nonEmpty = func(v any) bool { s, _ := v.(string); return s != "" }
	positive = func(v any) bool { f, _ := v.(float64); return f > 0 }
)

// fields checks top-level fields: a value (with {sub} filled in) or a
// predicate.
func fields(want map[string]any) func(t *testing.T, e *env, a answer) {
	return func(t *testing.T, e *env, a answer) {
		t.Helper()
		for k, w := range want {
			got := a.field(k)
			switch w := w.(type) {
			case func(any) bool:
				if !w(got) {
					t.Errorf("%s = %v", k, got)
				}
			case string:
				if got != e.fill(w) {
					t.Errorf("%s = %v, want %v", k, got, e.fill(w))
				}
			default:
				if got != w {
					t.Errorf("%s = %v, want %v", k, got, w)
				}
			}
		}
	}
}

func policy(oid, kind, perms string) func(t *testing.T, e *env, a answer) {
	return func(t *testing.T, e *env, a answer) {
		t.Helper()
		aps, _ := a.body["accessPolicies"].([]any)
		for _, ap := range aps {
			m, _ := ap.(map[string]any)
			if m["objectId"] != oid {
				continue
			}
			var got []string
			list, _ := m["permissions"].(map[string]any)[kind].([]any)
			for _, p := range list {
				got = append(got, p.(string))
			}
			if strings.Join(got, ",") != perms {
				t.Errorf("%s %s = %v, want %s", oid, kind, got, perms)
			}
			return
		}
		t.Errorf("no access policy for %s in %s", oid, a.raw)
	}
}

func noPasswords(t *testing.T, _ *env, a answer) {
	t.Helper()
	if strings.Contains(a.raw, `"password"`) {
		t.Errorf("a list shows a password: %s", a.raw)
	}
	if vs, _ := a.body["value"].([]any); len(vs) < 2 {
		t.Errorf("want the administrator and nobody listed: %s", a.raw)
	}
}

func hasRole(name string) func(t *testing.T, e *env, a answer) {
	return func(t *testing.T, _ *env, a answer) {
		t.Helper()
		if !strings.Contains(a.raw, `"roleName":"`+name+`"`) {
			t.Errorf("role %s not listed", name)
		}
	}
}

// A tenant sees nothing of another tenant's vaults, not even that they
// exist.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	other, err := e.auth.CreateTenant(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	sp, secret, err := e.auth.CreateServicePrincipal(ctx, other.ID, "other-admin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.roles.Create(ctx, rbac.Assignment{TenantID: other.ID, RoleID: rbac.OwnerID, PrincipalID: sp.ObjectID, PrincipalType: authority.TypeServicePrincipal, Scope: rbac.Root}); err != nil {
		t.Fatal(err)
	}
	tok := e.token(t, other.ID, sp.AppID, secret, endpoint.ManagementResource)
	for name, c := range map[string]routeCase{
		"list":                 {method: "GET", path: "/coffer/v1/vaults", who: "raw:" + tok, status: 200, check: emptyList},
		"show":                 {method: "GET", path: "/coffer/v1/vaults/demo", who: "raw:" + tok, status: 404, code: "NotFound"},
		"set policy":           {method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"x","secrets":["get"]}`, who: "raw:" + tok, status: 404, code: "NotFound"},
		"create the same name": {method: "POST", path: "/coffer/v1/vaults", body: `{"name":"demo"}`, who: "raw:" + tok, status: 409, code: "Conflict"},
		"assign at its vault":  {method: "POST", path: "/coffer/v1/role-assignments", body: e.fill(`{"role":"Reader","assignee":"other-admin","scope":"/subscriptions/` + other.SubscriptionID + `/resourceGroups/default/providers/Microsoft.KeyVault/vaults/demo"}`), who: "raw:" + tok, status: 404, code: "NotFound"},
	} {
		t.Run(name, func(t *testing.T) { c.run(t, e) })
	}
}

// Creating things and reading them back through the API.
func TestWrites(t *testing.T) {
	e := newEnv(t)
	t.Run("a service principal's credentials", func(t *testing.T) {
		created := routeCase{method: "POST", path: "/coffer/v1/service-principals", body: `{"displayName":"rotating"}`, who: admin, status: 201}.run(t, e)
		appID, first := created.body["appId"].(string), created.body["password"].(string)
		reset := routeCase{method: "POST", path: "/coffer/v1/service-principals/" + appID + "/credentials", who: admin, status: 200}.run(t, e)
		second, _ := reset.body["password"].(string)
		if second == "" || second == first {
			t.Fatalf("reset answered password %q", second)
		}
		ctx := context.Background()
		if !e.auth.VerifyClientSecret(ctx, e.state.TenantID, appID, second) || e.auth.VerifyClientSecret(ctx, e.state.TenantID, appID, first) {
			t.Fatal("a reset without append must replace the secret")
		}
		kept := routeCase{method: "POST", path: "/coffer/v1/service-principals/" + appID + "/credentials", body: `{"append":true}`, who: admin, status: 200}.run(t, e)
		if third, _ := kept.body["password"].(string); !e.auth.VerifyClientSecret(ctx, e.state.TenantID, appID, third) || !e.auth.VerifyClientSecret(ctx, e.state.TenantID, appID, second) {
			t.Fatal("append must keep the earlier secret")
		}
	})
	t.Run("a service principal with a bad certificate", func(t *testing.T) {
		// Refused whole: no principal is left behind with a secret that
		// nobody was shown.
		expired := expiredCertPEM(t)
		for body, msg := range map[string]string{
			`{"displayName":"half-made","certificate":"not a PEM"}`:     "no PEM CERTIFICATE block",
			`{"displayName":"half-made","certificate":` + expired + `}`: "the certificate expired",
		} {
			routeCase{method: "POST", path: "/coffer/v1/service-principals", body: body, who: admin, status: 400, code: "BadParameter", msg: msg}.run(t, e)
		}
		listed := routeCase{method: "GET", path: "/coffer/v1/service-principals", who: admin, status: 200}.run(t, e)
		if strings.Contains(listed.raw, "half-made") {
			t.Fatalf("a refused creation left its principal: %s", listed.raw)
		}
		routeCase{method: "POST", path: e.fill("/coffer/v1/service-principals/{nobody}/credentials"), body: `{"certificate":` + expired + `}`, who: admin, status: 400, code: "BadParameter", msg: "the certificate expired"}.run(t, e)
	})
	t.Run("federated credentials", func(t *testing.T) {
		routeCase{method: "POST", path: "/coffer/v1/identities", body: `{"name":"fed","resourceGroup":"apps"}`, who: admin, status: 201}.run(t, e)
		base := "/coffer/v1/identities/apps/fed/federated-credentials"
		put := routeCase{method: "PUT", path: base + "/github", body: `{"issuer":"https://issuer.example","subject":"system:serviceaccount:ns:sa"}`, who: admin, status: 200,
			check: fields(map[string]any{"name": "github", "issuer": "https://issuer.example", "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"})}.run(t, e)
		if aud, _ := put.body["audiences"].([]any); len(aud) != 1 || aud[0] != "api://AzureADTokenExchange" {
			t.Errorf("audiences %v, want the default", put.body["audiences"])
		}
		routeCase{method: "PUT", path: base + "/bad", body: `{"subject":"x"}`, who: admin, status: 400, code: "BadParameter"}.run(t, e)
		routeCase{method: "PUT", path: base + "/github", body: `{"issuer":"https://issuer.example","subject":"s"}`, who: nobody, status: 403, code: "AuthorizationFailed"}.run(t, e)
		listed := routeCase{method: "GET", path: base, who: admin, status: 200}.run(t, e)
		if vs, _ := listed.body["value"].([]any); len(vs) != 1 {
			t.Fatalf("listed %s", listed.raw)
		}
		routeCase{method: "DELETE", path: base + "/github", who: admin, status: 204}.run(t, e)
		routeCase{method: "GET", path: base, who: admin, status: 200, check: emptyList}.run(t, e)

		// Flexible credentials: a claims-matching expression instead of a subject.
		const teamA = `{"issuer":"https://issuer.example","claimsMatchingExpression":{"value":"claims['sub'] matches 'system:serviceaccount:team-a:*'","languageVersion":1}}`
		routeCase{method: "PUT", path: base + "/team-a", body: teamA, who: admin, status: 200,
			check: fields(map[string]any{"name": "team-a", "claimsMatchingExpression.value": "claims['sub'] matches 'system:serviceaccount:team-a:*'", "claimsMatchingExpression.languageVersion": 1.0})}.run(t, e)
		routeCase{method: "PUT", path: base + "/team-a-again", body: teamA, who: admin, status: 409, code: "Conflict", msg: "team-a"}.run(t, e)
		for _, c := range []struct{ body, msg string }{
			{`{"issuer":"https://issuer.example"}`, "give a subject"},
			{`{"issuer":"https://issuer.example","subject":"system:serviceaccount:a:b","claimsMatchingExpression":{"value":"claims['sub'] eq 'x'","languageVersion":1}}`, "not both"},
			{`{"issuer":"https://issuer.example","claimsMatchingExpression":{"value":"claims['sub'] matches 'a:*' or claims['sub'] eq 'b'","languageVersion":1}}`, "at column 28"},
			{`{"issuer":"https://issuer.example","claimsMatchingExpression":{"value":"claims['sub'] matches 'a:***'","languageVersion":1}}`, "at column 26"},
			{`{"issuer":"https://issuer.example","claimsMatchingExpression":{"value":"claims['aud'] eq 'x'","languageVersion":1}}`, "claims['sub']"},
			{`{"issuer":"https://issuer.example","claimsMatchingExpression":{"value":"claims['sub'] eq 'x'","languageVersion":2}}`, "languageVersion 2"},
			{`{"issuer":"https://issuer.example","claimsMatchingExpression":"claims['sub'] eq 'x'"}`, "claimsMatchingExpression"},
			{`{"issuer":"https://issuer.example","subject":"system:serviceaccount:team-a:*"}`, "claims['sub'] matches 'system:serviceaccount:team-a:*'"},
			{`{"issuer":"https://issuer.example","subject":"system:serviceaccount:a:b\n"}`, "subject"},
		} {
			routeCase{method: "PUT", path: base + "/refused", body: c.body, who: admin, status: 400, code: "BadParameter", msg: c.msg}.run(t, e)
		}
		listed = routeCase{method: "GET", path: base, who: admin, status: 200}.run(t, e)
		if vs, _ := listed.body["value"].([]any); len(vs) != 1 {
			t.Fatalf("listed %s", listed.raw)
		}
	})
	t.Run("role assignments", func(t *testing.T) {
		scope := "/subscriptions/" + e.sub + "/resourceGroups/default/providers/Microsoft.KeyVault/vaults/demo"
		made := routeCase{method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"` + scope + `"}`, who: admin, status: 201,
			check: fields(map[string]any{"principalId": e.nobodySP.ObjectID, "roleDefinitionName": "Reader", "scope": scope, "principalType": "ServicePrincipal"})}.run(t, e)
		routeCase{method: "POST", path: "/coffer/v1/role-assignments", body: `{"role":"Reader","assignee":"nobody","scope":"` + scope + `"}`, who: admin, status: 409, code: "Conflict"}.run(t, e)
		// Reader at the vault lets nobody read it, and only it.
		routeCase{method: "GET", path: "/coffer/v1/vaults/demo", who: nobody, status: 200}.run(t, e)
		routeCase{method: "GET", path: "/coffer/v1/vaults", who: nobody, status: 200, check: hasVault("demo")}.run(t, e)
		routeCase{method: "POST", path: "/coffer/v1/vaults/demo/set-policy", body: `{"objectId":"x","secrets":["get"]}`, who: nobody, status: 403, code: "AuthorizationFailed"}.run(t, e)
		listed := routeCase{method: "GET", path: "/coffer/v1/role-assignments?assignee=nobody&role=Reader", who: admin, status: 200}.run(t, e)
		if vs, _ := listed.body["value"].([]any); len(vs) != 1 {
			t.Fatalf("listed %s", listed.raw)
		}
		id, _ := made.body["name"].(string)
		routeCase{method: "DELETE", path: "/coffer/v1/role-assignments/" + id, who: nobody, status: 403, code: "AuthorizationFailed"}.run(t, e)
		routeCase{method: "DELETE", path: "/coffer/v1/role-assignments/" + id, who: admin, status: 204}.run(t, e)
		routeCase{method: "GET", path: "/coffer/v1/vaults/demo", who: nobody, status: 403, code: "AuthorizationFailed"}.run(t, e)
	})
	t.Run("node pools", func(t *testing.T) {
		routeCase{method: "POST", path: "/coffer/v1/identities", body: `{"name":"for-pool","resourceGroup":"apps"}`, who: admin, status: 201}.run(t, e)
		pool := routeCase{method: "POST", path: "/coffer/v1/node-pools", body: `{"name":"pool","resourceGroup":"nodes"}`, who: admin, status: 201,
			check: fields(map[string]any{"agentClientId": nonEmpty, "agentClientSecret": nonEmpty, "systemAssignedIdentity.type": "SystemAssigned"})}.run(t, e)
		id := "/subscriptions/" + e.sub + "/resourceGroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/for-pool"
		for range 2 { // assigning twice is no error
			assigned := routeCase{method: "POST", path: "/coffer/v1/node-pools/nodes/pool/identities", body: `{"identities":["` + id + `"]}`, who: admin, status: 200}.run(t, e)
			if !strings.Contains(assigned.raw, `"roleDefinitionName":"Managed Identity Operator"`) || !strings.Contains(assigned.raw, pool.body["agentObjectId"].(string)) {
				t.Fatalf("assigned %s", assigned.raw)
			}
		}
		routeCase{method: "POST", path: "/coffer/v1/node-pools/nodes/pool/identities", body: `{"identities":["` + id + `-missing"]}`, who: admin, status: 404, code: "NotFound"}.run(t, e)
	})
	t.Run("custom roles", func(t *testing.T) {
		routeCase{method: "POST", path: "/coffer/v1/role-definitions", body: `{"Name":"Vault Lister","Actions":["Microsoft.KeyVault/vaults/read"]}`, who: admin, status: 201, check: fields(map[string]any{"roleName": "Vault Lister"})}.run(t, e)
		routeCase{method: "POST", path: "/coffer/v1/role-definitions", body: `{"Name":"Vault Lister","Actions":["Microsoft.KeyVault/vaults/read"]}`, who: admin, status: 409, code: "Conflict"}.run(t, e)
		routeCase{method: "GET", path: "/coffer/v1/role-definitions", who: admin, status: 200, check: hasRole("Vault Lister")}.run(t, e)
	})
	t.Run("the root and signing keys", func(t *testing.T) {
		k := rootkey.Generate()
		raw, _ := json.Marshal(map[string]string{"newRootKey": k.Encode()})
		routeCase{method: "POST", path: "/coffer/v1/operator/rotate-root-key", body: string(raw), who: admin, status: 200, check: fields(map[string]any{"rootKeyId": k.ID(), "fromEnv": true})}.run(t, e)
		if e.barrier.RootKeyID() != k.ID() {
			t.Fatal("the barrier is not wrapped with the new root key")
		}
		routeCase{method: "POST", path: "/coffer/v1/operator/rotate-signing-key", who: admin, status: 200, check: fields(map[string]any{"kid": nonEmpty})}.run(t, e)
		// Tokens signed before the rotation stay good.
		routeCase{method: "GET", path: "/coffer/v1/vaults/demo", who: admin, status: 200}.run(t, e)
	})
}

// failingOperator fails as a broken store would.
type failingOperator struct{}

func (failingOperator) RotateRootKey(context.Context, *rootkey.Key) (mgmthttp.RootKeyRotation, error) {
	return mgmthttp.RootKeyRotation{}, errors.New("write /var/lib/coffer/coffer.db: no space left on device")
}

func (failingOperator) RotateDataKey(context.Context) (uint32, error) {
	return 0, fmt.Errorf("rewrap: %w", errors.New("write /var/lib/coffer/coffer.db: no space left on device"))
}

// An unexpected failure is a 500 with a fixed message; its text goes to
// the log only.
func TestInternalErrors(t *testing.T) {
	e := newEnv(t)
	e.h = mgmthttp.New(mgmthttp.Deps{Endpoints: e.ep, Authority: e.auth, Vaults: e.vaults, Roles: e.roles,
		Access: access.New(e.roles), Operator: failingOperator{}, Log: slog.New(slog.NewJSONHandler(e.log, nil))})
	for _, path := range []string{"/coffer/v1/operator/rotate-data-key", "/coffer/v1/operator/rotate-root-key"} {
		body := ""
		if strings.HasSuffix(path, "root-key") {
			raw, _ := json.Marshal(map[string]string{"newRootKey": rootkey.Generate().Encode()})
			body = string(raw)
		}
		a := routeCase{method: "POST", path: path, body: body, who: admin, status: http.StatusInternalServerError, code: "InternalServerError", msg: "see its log"}.run(t, e)
		if strings.Contains(a.raw, "/var/lib") || strings.Contains(a.raw, "no space") {
			t.Fatalf("the body holds the internal error: %s", a.raw)
		}
	}
	if !strings.Contains(e.log.String(), "no space left on device") {
		t.Fatalf("the log lacks the error:\n%s", e.log.String())
	}
}

// expiredCertPEM is a certificate that expired an hour ago, as a JSON
// string.
func expiredCertPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	return string(b)
}

// A stored record that does not decode is the server's failure, not the
// client's bad JSON: 500, with the decoder's text in the log only.
func TestDamagedRecord(t *testing.T) {
	e := newEnv(t)
	if err := e.barrier.Apply(context.Background(), nil, []barrier.Op{{Key: "authority/tenants/" + e.state.TenantID, Value: []byte("not json")}}); err != nil {
		t.Fatal(err)
	}
	a := routeCase{method: "POST", path: "/coffer/v1/vaults", body: `{"name":"after-damage"}`, who: admin, status: http.StatusInternalServerError, code: "InternalServerError", msg: "see its log"}.run(t, e)
	if strings.Contains(a.raw, "invalid character") {
		t.Fatalf("the body holds the decoder's error: %s", a.raw)
	}
	if !strings.Contains(e.log.String(), "invalid character") {
		t.Fatalf("the log lacks the detail:\n%s", e.log.String())
	}
}
