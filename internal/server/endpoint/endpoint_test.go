package endpoint

import "testing"

func TestURLsAndParse(t *testing.T) {
	e, err := New("Vault.LocalHost.", 8443)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.VaultURL("Demo"); got != "https://demo.vault.localhost:8443/" {
		t.Fatalf("VaultURL = %s", got)
	}
	if got := string(e.AppendVaultBase([]byte("id="), "Demo")); got != "id=https://demo.vault.localhost:8443" {
		t.Fatalf("AppendVaultBase = %s", got)
	}
	if got := e.Resource(); got != "https://vault.localhost:8443" {
		t.Fatalf("Resource = %s", got)
	}
	e443, _ := New("kv.example.com", 443)
	if got := e443.VaultURL("a1b"); got != "https://a1b.kv.example.com/" {
		t.Fatalf("VaultURL on 443 = %s", got)
	}
	cases := map[string]struct {
		r    Route
		name string
	}{
		"demo.vault.localhost:8443": {RouteVault, "demo"},
		"DEMO.vault.localhost":      {RouteVault, "demo"},
		"vault.localhost:8443":      {RouteApex, ""},
		"localhost:8443":            {RouteApex, ""},
		"127.0.0.1:8443":            {RouteApex, ""},
		"[::1]:8443":                {RouteApex, ""},
		"a.b.vault.localhost":       {RouteUnknown, ""},
		"evil.example":              {RouteUnknown, ""},
		"xvault.localhost":          {RouteUnknown, ""},
	}
	for host, want := range cases {
		r, name := e.Parse(host)
		if r != want.r || name != want.name {
			t.Errorf("Parse(%q) = %v %q, want %v %q", host, r, name, want.r, want.name)
		}
	}
	for _, bad := range []string{"localhost", "", "a..b", "-a.b"} {
		if _, err := New(bad, 8443); err == nil {
			t.Errorf("New(%q) accepted", bad)
		}
	}
	if _, err := New("a.b", 0); err == nil {
		t.Error("port 0 accepted")
	}
}
