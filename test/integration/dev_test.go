package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

func TestDevBootstrapAndReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	env := d.Env
	guid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !guid.MatchString(env.TenantID) || !guid.MatchString(env.ClientID) || len(env.ClientSecret) < 32 {
		t.Fatalf("dev.env ids are malformed: %+v", env)
	}
	if !regexp.MustCompile(`^https://demo\.vault\.localhost:\d+/$`).MatchString(env.VaultURL) ||
		!regexp.MustCompile(`^https://vault\.localhost:\d+/$`).MatchString(env.AuthorityHost) {
		t.Fatalf("dev.env URLs: %s %s", env.VaultURL, env.AuthorityHost)
	}
	if env.DataDir != dir || env.CAFile != filepath.Join(dir, "tls", "ca.pem") {
		t.Fatalf("dev.env paths: %s %s", env.DataDir, env.CAFile)
	}
	for _, f := range []string{"root.key", "dev.env", "coffer.db", "tls/ca-key.pem", "tls/server-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v, want 0600", f, err, fi.Mode().Perm())
		}
	}
	if !strings.Contains(d.Stdout.String(), env.VaultURL) || !strings.Contains(d.Stdout.String(), "secret set") {
		t.Fatalf("banner lacks the vault URL or commands:\n%s", d.Stdout)
	}
	// The Azure CLI recipe, exactly as test/azcli runs it.
	for _, argv := range env.AzureCLI() {
		if !strings.Contains(d.Stdout.String(), "\n  "+devenv.Shell(argv)+"\n") {
			t.Fatalf("banner lacks %q:\n%s", devenv.Shell(argv), d.Stdout)
		}
	}
	if strings.Contains(d.Stdout.String(), env.ClientSecret) || strings.Contains(d.Stderr.String(), env.ClientSecret) {
		t.Fatal("coffer dev printed the administrator's client secret")
	}
	envFile := devenv.Path(dir)
	mustCLI(t, envFile, "secret", "set", "--vault-name", "demo", "--name", "kept", "--value", "across-restarts")
	d.stop(t)

	d2 := startDev(t, dir)
	if d2.Env.TenantID != env.TenantID || d2.Env.ClientID != env.ClientID || d2.Env.ClientSecret != env.ClientSecret {
		t.Fatal("a restart created a new tenant, administrator or secret")
	}
	var s struct{ Value string }
	json.Unmarshal([]byte(mustCLI(t, envFile, "secret", "show", "--vault-name", "demo", "--name", "kept")), &s)
	if s.Value != "across-restarts" {
		t.Fatalf("secret after restart = %q", s.Value)
	}
	d2.stop(t)

	// A lost dev.env: the next start issues a new administrator secret.
	os.Remove(envFile)
	d3 := startDev(t, dir)
	if d3.Env.TenantID != env.TenantID || d3.Env.ClientSecret == env.ClientSecret {
		t.Fatal("without dev.env, the administrator secret was not replaced")
	}
	if r := cli(t, envFile, "", "secret", "show", "--vault-name", "demo", "--name", "kept"); r.code != 0 {
		t.Fatalf("new secret does not work: %s", r.err)
	}
}
