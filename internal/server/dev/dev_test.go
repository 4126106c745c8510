package dev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

func TestWriteHostsReplacesItsOwnBlock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(p, []byte("127.0.0.1 localhost\n10.0.0.1 db\n"), 0o644)
	ep, _ := endpoint.New("vault.localhost", 8443)
	if err := writeHosts(p, ep, []vault.Vault{{Name: "demo"}}); err != nil {
		t.Fatal(err)
	}
	if err := writeHosts(p, ep, []vault.Vault{{Name: "demo"}, {Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	want := "127.0.0.1 localhost\n10.0.0.1 db\n# BEGIN coffer dev\n127.0.0.1 vault.localhost demo.vault.localhost team-a.vault.localhost\n# END coffer dev\n"
	if string(data) != want {
		t.Fatalf("hosts file:\n%s\nwant:\n%s", data, want)
	}
	if strings.Count(string(data), "BEGIN coffer dev") != 1 {
		t.Fatal("block duplicated")
	}
}
