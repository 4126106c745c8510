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
