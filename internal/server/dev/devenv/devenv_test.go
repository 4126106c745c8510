package devenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteReadExactVariables(t *testing.T) {
	p := filepath.Join(t.TempDir(), FileName)
	e := Env{VaultURL: "https://demo.vault.localhost:8443/", TenantID: "t", ClientID: "c", ClientSecret: "s'e cret",
		AuthorityHost: "https://vault.localhost:8443/", CAFile: "/tmp/a b/ca.pem", CABundle: "/tmp/a b/ca.pem", DataDir: "/tmp/a b"}
	if err := e.Write(p); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("dev.env mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := Read(p)
	if err != nil || got != e {
		t.Fatalf("Read = %+v, %v", got, err)
	}
	data, _ := os.ReadFile(p)
	var names []string
	for _, line := range strings.Split(string(data), "\n") {
		if k, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			names = append(names, k)
		}
	}
	if strings.Join(names, ",") != strings.Join(Names(), ",") {
		t.Fatalf("dev.env variables = %v, want exactly %v", names, Names())
	}
}

// The Azure CLI recipe: printed for a shell, the credentials stay
// variables (the banner never shows the secret); expanded, they are the
// env's values.
func TestAzureCLIRecipe(t *testing.T) {
	e := Env{TenantID: "t", ClientID: "c", ClientSecret: "s'e cret", AuthorityHost: "https://vault.localhost:8443/"}
	var lines []string
	for _, argv := range e.AzureCLI() {
		lines = append(lines, Shell(argv))
	}
	want := []string{
		"az cloud register --name Coffer --endpoint-resource-manager https://vault.localhost:8443",
		"az cloud set --name Coffer",
		`az login --service-principal --username "$AZURE_CLIENT_ID" --password "$AZURE_CLIENT_SECRET" --tenant "$AZURE_TENANT_ID"`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("recipe:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	login := e.Expand(e.AzureCLI()[2])
	if strings.Join(login, "|") != "az|login|--service-principal|--username|c|--password|s'e cret|--tenant|t" {
		t.Fatalf("expanded login = %q", login)
	}
}
