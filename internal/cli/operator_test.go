package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func runMain(args ...string) (int, string) {
	var out bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &out)
	return code, out.String()
}

// operator init runs as an init container on every start of a server pod:
// the second run must be a no-op when asked, and an error otherwise.
func TestOperatorInitIsRepeatableOnRequest(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "root.key")
	if code, out := runMain("operator", "generate-root-key", "--out", key); code != 0 {
		t.Fatalf("generate-root-key: %d %s", code, out)
	}
	data := filepath.Join(dir, "data")
	init := []string{"operator", "init", "--data-dir", data, "--dns-suffix", "vault.example.com", "--root-key-file", key}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "admin.env"))...); code != 0 {
		t.Fatalf("first init: %d %s", code, out)
	}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "again.env"))...); code == 0 || !strings.Contains(out, "already initialised") {
		t.Fatalf("second init without --skip-if-initialised: %d %s", code, out)
	}
	if code, out := runMain(append(init, "--out", filepath.Join(dir, "again.env"), "--skip-if-initialised")...); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("second init with --skip-if-initialised: %d %s", code, out)
	}
	for _, bad := range [][]string{
		append(init, "--out", "x", "--out-secret", "ns/name"),
		init,
		append(init, "--out-secret", "no-namespace"),
	} {
		if code, out := runMain(bad...); code != 2 {
			t.Errorf("%v: exit %d %s", bad[len(bad)-2:], code, out)
		}
	}
}
