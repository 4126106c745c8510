package integration

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

func TestAuditLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	hc, tok := vaultClient(t, d.Env)
	base := strings.TrimSuffix(d.Env.VaultURL, "/")
	value := "AUDITSCAN-value-4711"
	ids := map[string]int{} // request id -> expected status
	do := func(method, path, body string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ids[resp.Header.Get("x-ms-request-id")] = resp.StatusCode
	}
	do("PUT", "/secrets/audited?api-version=7.6", `{"value":"`+value+`"}`)
	do("GET", "/secrets/audited?api-version=7.6", "")
	do("GET", "/secrets/missing?api-version=7.6", "")
	do("DELETE", "/secrets/audited?api-version=7.6", "")
	req, _ := http.NewRequest("GET", base+"/secrets/audited?api-version=7.6", nil) // no token: a 401
	resp, _ := hc.Do(req)
	resp.Body.Close()
	ids[resp.Header.Get("x-ms-request-id")] = 401
	ef := devenv.Path(dir)
	mustCLI(t, ef, "vault", "create", "--name", "audited-vault")
	d.stop(t)

	logPath := filepath.Join(dir, "audit.log")
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{value, d.Env.ClientSecret, tok, tok[len(tok)-30:]} {
		if strings.Contains(string(data), s) {
			t.Fatalf("the audit log holds a secret (%.12s...)", s)
		}
	}
	seen := map[string]int{}
	var mgmt bool
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line is not JSON: %s", sc.Text())
		}
		id, _ := e["requestId"].(string)
		if want, ok := ids[id]; ok {
			seen[id]++
			if int(e["status"].(float64)) != want || e["vault"] != "demo" || e["time"] == "" || e["latencyMs"] == nil || e["operation"] == "" {
				t.Errorf("audit line %v does not match status %d", e, want)
			}
			if want != 401 && (e["principal"] == "" || e["tenant"] != d.Env.TenantID || e["decision"] != "allow") {
				t.Errorf("audit line %v lacks principal, tenant or decision", e)
			}
			if want == 401 && e["decision"] != "unauthenticated" {
				t.Errorf("401 audit line %v", e)
			}
		}
		if e["operation"] == "Microsoft.KeyVault/vaults/write" && e["decision"] == "allow" {
			mgmt = true
		}
	}
	for id := range ids {
		if seen[id] != 1 {
			t.Errorf("request %s has %d audit lines, want 1", id, seen[id])
		}
	}
	if !mgmt {
		t.Error("the management request (vault create) has no audit line")
	}
	if out := mustCLI(t, ef, "audit", "verify", "--file", logPath); !strings.Contains(out, "chain intact") {
		t.Fatalf("audit verify: %s", out)
	}
	if out := mustCLI(t, ef, "audit", "tail", "--file", logPath, "-n", "2"); strings.Count(out, "\n") != 2 {
		t.Fatalf("audit tail -n 2 printed %q", out)
	}
	// Edit one line: verify fails and names it.
	lines := strings.SplitAfter(string(data), "\n")
	lines[2] = strings.Replace(lines[2], `"status":`, `"status":1`, 1)
	os.WriteFile(logPath, []byte(strings.Join(lines, "")), 0o600)
	r := cli(t, ef, "", "audit", "verify", "--file", logPath)
	if r.code != 1 || !strings.Contains(r.err, "line 3") || !strings.Contains(r.err, "TAMPERED") {
		t.Fatalf("audit verify after an edit: %d %s", r.code, r.err)
	}
}
