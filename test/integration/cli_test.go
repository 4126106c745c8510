package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

func TestCLISecretVerbs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	startDev(t, dir)
	ef := devenv.Path(dir)
	v := []string{"--vault-name", "demo"}
	args := func(a ...string) []string { return append(append([]string{}, a...), v...) }

	var set struct {
		ID         string
		Value      string
		Name       string
		Tags       map[string]string
		Attributes struct {
			Enabled       bool
			RecoveryLevel string
		}
	}
	out := mustCLI(t, ef, args("secret", "set", "--name", "api-key", "--value", "s3cr3t-1", "--tags", "team=a", "--content-type", "text/plain")...)
	if err := json.Unmarshal([]byte(out), &set); err != nil || set.Value != "s3cr3t-1" || set.Name != "api-key" || set.Tags["team"] != "a" || !set.Attributes.Enabled {
		t.Fatalf("set output: %s", out)
	}
	r := cli(t, ef, "s3cr3t-2 from stdin", args("secret", "set", "--name", "api-key", "--file", "-")...)
	if r.code != 0 {
		t.Fatal(r.err)
	}
	if out := mustCLI(t, ef, args("secret", "show", "--name", "api-key", "-o", "tsv")...); !strings.Contains(out, "s3cr3t-2 from stdin") {
		t.Fatalf("show tsv: %q", out)
	}
	v1 := set.ID[strings.LastIndex(set.ID, "/")+1:]
	if out := mustCLI(t, ef, args("secret", "show", "--name", "api-key", "--version", v1, "-o", "table")...); !strings.Contains(out, "s3cr3t-1") || !strings.Contains(out, "Name") {
		t.Fatalf("show table by version: %q", out)
	}
	var versions []json.RawMessage
	json.Unmarshal([]byte(mustCLI(t, ef, args("secret", "list-versions", "--name", "api-key")...)), &versions)
	if len(versions) != 2 {
		t.Fatalf("list-versions: %d", len(versions))
	}
	list := mustCLI(t, ef, args("secret", "list")...)
	if strings.Contains(list, "s3cr3t") {
		t.Fatal("list printed values")
	}
	mustCLI(t, ef, args("secret", "set-attributes", "--name", "api-key", "--version", v1, "--enabled", "false")...)
	if r := cli(t, ef, "", args("secret", "show", "--name", "api-key", "--version", v1)...); r.code == 0 || !strings.Contains(r.err, "(Forbidden/") {
		t.Fatalf("show of a disabled version: %d %s", r.code, r.err)
	}

	backup := filepath.Join(t.TempDir(), "api-key.bak")
	mustCLI(t, ef, args("secret", "backup", "--name", "api-key", "--file", backup)...)
	if data, _ := os.ReadFile(backup); len(data) == 0 || strings.Contains(string(data), "s3cr3t") {
		t.Fatal("backup file is empty or holds plaintext")
	}
	if r := cli(t, ef, "", args("secret", "backup", "--name", "api-key", "--file", backup)...); r.code == 0 {
		t.Fatal("backup overwrote an existing file")
	}
	mustCLI(t, ef, args("secret", "delete", "--name", "api-key")...)
	if out := mustCLI(t, ef, args("secret", "list-deleted", "-o", "tsv")...); !strings.HasPrefix(out, "api-key\t") {
		t.Fatalf("list-deleted: %q", out)
	}
	mustCLI(t, ef, args("secret", "show-deleted", "--name", "api-key")...)
	mustCLI(t, ef, args("secret", "recover", "--name", "api-key")...)
	mustCLI(t, ef, args("secret", "delete", "--name", "api-key")...)
	mustCLI(t, ef, args("secret", "purge", "--name", "api-key")...)
	mustCLI(t, ef, args("secret", "restore", "--file", backup)...)
	if out := mustCLI(t, ef, args("secret", "show", "--name", "api-key", "-o", "tsv")...); !strings.Contains(out, "s3cr3t-2 from stdin") {
		t.Fatalf("after restore: %q", out)
	}

	// Errors: one line, non-zero exit, 2 for usage.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{args("secret", "show", "--name", "nope"), 1, "(SecretNotFound)"},
		{[]string{"secret", "show", "--vault-name", "absent", "--name", "x"}, 1, "(VaultNotFound)"},
		{args("secret", "show"), 2, "--name"},
		{args("secret", "set", "--name", "x"), 2, "--value"},
		{args("secret", "set", "--name", "bad_name", "--value", "x"), 1, "(BadParameter)"},
		{args("secret", "list", "-o", "yaml"), 2, "--output"},
		{args("secret", "show", "--name", "x", "--bogus"), 2, "unknown flag"},
	} {
		r := cli(t, ef, "", c.args...)
		if r.code != c.code || !strings.Contains(r.err, c.want) || strings.Count(strings.TrimSpace(r.err), "\n") != 0 || !strings.HasPrefix(r.err, "ERROR: ") {
			t.Errorf("coffer %s: exit %d, stderr %q; want exit %d, one ERROR line with %q", strings.Join(c.args, " "), r.code, r.err, c.code, c.want)
		}
	}
	if r := cli(t, filepath.Join(t.TempDir(), "missing.env"), "", args("secret", "list")...); r.code != 1 || !strings.Contains(r.err, "missing.env") {
		t.Errorf("missing env file: %d %q", r.code, r.err)
	}
}

func TestManagementAndDefaultDeny(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)

	var vault struct{ Name, VaultURI string }
	json.Unmarshal([]byte(mustCLI(t, ef, "vault", "create", "--name", "team-a", "--retention-days", "7", "--enable-purge-protection")), &vault)
	if vault.Name != "team-a" || !strings.HasPrefix(vault.VaultURI, "https://team-a.vault.localhost:") {
		t.Fatalf("vault create: %+v", vault)
	}
	if r := cli(t, ef, "", "vault", "create", "--name", "team-a"); r.code != 1 || !strings.Contains(r.err, "(Conflict)") {
		t.Fatalf("duplicate vault: %d %s", r.code, r.err)
	}
	if r := cli(t, ef, "", "vault", "create", "--name", "ab"); r.code != 1 || !strings.Contains(r.err, "(BadParameter)") {
		t.Fatalf("short vault name: %d %s", r.code, r.err)
	}
	if out := mustCLI(t, ef, "vault", "list", "-o", "tsv"); !strings.Contains(out, "team-a\t") || !strings.Contains(out, "demo\t") {
		t.Fatalf("vault list: %q", out)
	}
	// Purge protection: a deleted secret cannot be purged.
	mustCLI(t, ef, "secret", "set", "--vault-name", "team-a", "--name", "p", "--value", "x")
	var del struct{ ScheduledPurgeDate, DeletedDate string }
	json.Unmarshal([]byte(mustCLI(t, ef, "secret", "delete", "--vault-name", "team-a", "--name", "p")), &del)
	if del.ScheduledPurgeDate == "" {
		t.Fatal("no scheduled purge date")
	}
	if r := cli(t, ef, "", "secret", "purge", "--vault-name", "team-a", "--name", "p"); r.code != 1 || !strings.Contains(r.err, "purge protection") {
		t.Fatalf("purge under protection: %d %s", r.code, r.err)
	}

	// A new service principal: works with the SDK, but is denied by default.
	var sp struct{ AppID, Password, Tenant, ObjectID string }
	json.Unmarshal([]byte(mustCLI(t, ef, "sp", "create", "--name", "app1")), &sp)
	if sp.AppID == "" || sp.Password == "" || sp.Tenant != d.Env.TenantID {
		t.Fatalf("sp create: %+v", sp)
	}
	if strings.Contains(mustCLI(t, ef, "sp", "list"), sp.Password) {
		t.Fatal("sp list shows a password")
	}
	spEnv := d.Env
	spEnv.ClientID, spEnv.ClientSecret = sp.AppID, sp.Password
	spFile := filepath.Join(t.TempDir(), "sp.env")
	if err := spEnv.Write(spFile); err != nil {
		t.Fatal(err)
	}
	r := cli(t, spFile, "", "secret", "show", "--vault-name", "demo", "--name", "x")
	if r.code != 1 || !strings.Contains(r.err, "(Forbidden/") || !strings.Contains(r.err, "secrets get") || !strings.Contains(r.err, sp.ObjectID) {
		t.Fatalf("non-admin read: %d %s", r.code, r.err)
	}
	if r := cli(t, spFile, "", "vault", "create", "--name", "mine"); r.code != 1 || !strings.Contains(r.err, "(AuthorizationFailed)") || !strings.Contains(r.err, "Microsoft.KeyVault/vaults/write") {
		t.Fatalf("non-admin vault create: %d %s", r.code, r.err)
	}
	// Reset the secret: the old one stops working.
	var reset struct{ Password string }
	json.Unmarshal([]byte(mustCLI(t, ef, "sp", "credential", "reset", "--id", sp.AppID)), &reset)
	if reset.Password == "" || reset.Password == sp.Password {
		t.Fatal("credential reset returned no new password")
	}
	if r := cli(t, spFile, "", "secret", "show", "--vault-name", "demo", "--name", "x"); r.code != 1 || !strings.Contains(r.err, "authentication failed") || !strings.Contains(r.err, "7000215") {
		t.Fatalf("old secret after reset: %d %s", r.code, r.err)
	}
}
