package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

func TestIdentityAndAccessCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)

	var mi struct{ ID, ClientID, PrincipalID, Name, ResourceGroup, TenantID string }
	json.Unmarshal([]byte(mustCLI(t, ef, "identity", "create", "--name", "web", "--resource-group", "apps")), &mi)
	if mi.Name != "web" || mi.ResourceGroup != "apps" || mi.TenantID != d.Env.TenantID || !strings.Contains(mi.ID, "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web") {
		t.Fatalf("identity create: %+v", mi)
	}
	if r := cli(t, ef, "", "identity", "create", "--name", "web", "--resource-group", "apps"); r.code != 1 || !strings.Contains(r.err, "(Conflict)") {
		t.Fatalf("duplicate identity: %d %s", r.code, r.err)
	}
	mustCLI(t, ef, "identity", "federated-credential", "create", "--identity-name", "web", "-g", "apps", "--name", "k8s",
		"--issuer", "https://issuer.example", "--subject", "system:serviceaccount:default:web")
	if out := mustCLI(t, ef, "identity", "federated-credential", "list", "--identity-name", "web", "-g", "apps", "-o", "tsv"); !strings.Contains(out, "system:serviceaccount:default:web\tapi://AzureADTokenExchange") {
		t.Fatalf("federated list: %q", out)
	}
	if r := cli(t, ef, "", "identity", "federated-credential", "create", "--identity-name", "web", "-g", "apps", "--name", "bad", "--issuer", "http://plain", "--subject", "s"); r.code != 1 || !strings.Contains(r.err, "https") {
		t.Fatalf("http issuer: %d %s", r.code, r.err)
	}
	// A flexible credential: every service account of namespace team-a.
	mustCLI(t, ef, "identity", "federated-credential", "create", "--identity-name", "web", "-g", "apps", "--name", "team-a",
		"--issuer", "https://issuer.example", "--claims-matching-expression", "claims['sub'] matches 'system:serviceaccount:team-a:*'")
	if out := mustCLI(t, ef, "identity", "federated-credential", "list", "--identity-name", "web", "-g", "apps", "-o", "tsv"); !strings.Contains(out, "team-a\thttps://issuer.example\t\tapi://AzureADTokenExchange\tclaims['sub'] matches 'system:serviceaccount:team-a:*'") {
		t.Fatalf("federated list: %q", out)
	}
	if r := cli(t, ef, "", "identity", "federated-credential", "create", "--identity-name", "web", "-g", "apps", "--name", "bad", "--issuer", "https://issuer.example",
		"--claims-matching-expression", "claims['sub'] matches 'a:*' or claims['sub'] eq 'b'"); r.code != 1 || !strings.Contains(r.err, "at column 28") {
		t.Fatalf("bad expression: %d %s", r.code, r.err)
	}
	if r := cli(t, ef, "", "identity", "federated-credential", "create", "--identity-name", "web", "-g", "apps", "--name", "bad", "--issuer", "https://issuer.example",
		"--subject", "system:serviceaccount:x:y", "--claims-matching-expression", "claims['sub'] eq 'b'"); r.code != 1 || !strings.Contains(r.err, "not both") {
		t.Fatalf("both: %d %s", r.code, r.err)
	}
	mustCLI(t, ef, "identity", "federated-credential", "delete", "--identity-name", "web", "-g", "apps", "--name", "team-a")
	mustCLI(t, ef, "identity", "federated-credential", "delete", "--identity-name", "web", "-g", "apps", "--name", "k8s")

	var pool struct{ AgentClientID, AgentClientSecret, ID string }
	json.Unmarshal([]byte(mustCLI(t, ef, "nodepool", "create", "--name", "pool1", "-g", "nodes")), &pool)
	if pool.AgentClientID == "" || pool.AgentClientSecret == "" {
		t.Fatalf("nodepool create: %+v", pool)
	}
	mustCLI(t, ef, "nodepool", "identity", "assign", "--name", "pool1", "-g", "nodes", "--identities", mi.ID)
	if out := mustCLI(t, ef, "role", "assignment", "list", "--scope", mi.ID, "-o", "tsv"); !strings.Contains(out, "Managed Identity Operator") {
		t.Fatalf("assignment list: %q", out)
	}

	// Access policies by display name and by object id.
	mustCLI(t, ef, "sp", "create", "--name", "reader-app")
	var v struct {
		AccessPolicies []struct {
			ObjectID    string
			Permissions struct{ Secrets []string }
		}
	}
	json.Unmarshal([]byte(mustCLI(t, ef, "vault", "set-policy", "--name", "demo", "--spn", "reader-app", "--secret-permissions", "get,list")), &v)
	found := false
	for _, p := range v.AccessPolicies {
		if strings.Join(p.Permissions.Secrets, ",") == "get,list" {
			found = true
		}
	}
	if !found {
		t.Fatalf("set-policy: %+v", v)
	}
	if r := cli(t, ef, "", "vault", "set-policy", "--name", "demo", "--object-id", mi.PrincipalID, "--secret-permissions", "fly"); r.code != 1 || !strings.Contains(r.err, "not a secret permission") {
		t.Fatalf("bad permission: %d %s", r.code, r.err)
	}
	mustCLI(t, ef, "vault", "set-policy", "--name", "demo", "--object-id", mi.PrincipalID, "--secret-permissions", "get")
	mustCLI(t, ef, "vault", "delete-policy", "--name", "demo", "--object-id", mi.PrincipalID)
	if r := cli(t, ef, "", "vault", "delete-policy", "--name", "demo", "--object-id", mi.PrincipalID); r.code != 1 || !strings.Contains(r.err, "no access policy") {
		t.Fatalf("second delete-policy: %d %s", r.code, r.err)
	}

	// RBAC vault, role assignments at vault scope, custom roles.
	var rv struct{ ID string }
	json.Unmarshal([]byte(mustCLI(t, ef, "vault", "create", "--name", "rbac-vault", "--enable-rbac-authorization")), &rv)
	var ra struct{ Name, RoleDefinitionName, Scope string }
	json.Unmarshal([]byte(mustCLI(t, ef, "role", "assignment", "create", "--role", "Key Vault Secrets User", "--assignee", "reader-app", "--scope", rv.ID)), &ra)
	if ra.RoleDefinitionName != "Key Vault Secrets User" || ra.Scope != rv.ID {
		t.Fatalf("assignment create: %+v", ra)
	}
	if r := cli(t, ef, "", "role", "assignment", "create", "--role", "Key Vault Wizard", "--assignee", "reader-app", "--scope", rv.ID); r.code != 1 || !strings.Contains(r.err, "does not exist") {
		t.Fatalf("unknown role: %d %s", r.code, r.err)
	}
	def := filepath.Join(t.TempDir(), "role.json")
	os.WriteFile(def, []byte(`{"Name":"Secret Writer","DataActions":["Microsoft.KeyVault/vaults/secrets/setSecret/action"]}`), 0o600)
	mustCLI(t, ef, "role", "definition", "create", "--role-definition", "@"+def)
	if out := mustCLI(t, ef, "role", "definition", "list", "-o", "tsv"); !strings.Contains(out, "Secret Writer") || !strings.Contains(out, "4633458b-17de-408a-b874-0445c86b69e6") {
		t.Fatalf("role definition list: %q", out)
	}
	mustCLI(t, ef, "role", "assignment", "delete", "--ids", ra.Name)
	if out := mustCLI(t, ef, "role", "assignment", "list", "--scope", rv.ID, "-o", "tsv"); strings.Contains(out, ra.Name) {
		t.Fatal("deleted assignment still listed")
	}
}
