package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

func TestRootKeyRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)
	keyFile := filepath.Join(dir, "root.key")
	oldKey, _ := os.ReadFile(keyFile)
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "before", "--value", "v1")

	// Online: the server generates, stages and installs the new key.
	out := mustCLI(t, ef, "operator", "rotate-root-key")
	if !strings.Contains(out, "root key rotated") {
		t.Fatalf("rotate output: %q", out)
	}
	newKey, _ := os.ReadFile(keyFile)
	if string(newKey) == string(oldKey) {
		t.Fatal("root key file unchanged")
	}
	if _, err := os.Stat(keyFile + ".new"); !os.IsNotExist(err) {
		t.Fatal("staged key left behind")
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("new key file mode %v", fi.Mode().Perm())
	}
	// Reads and writes go on without a restart.
	if !strings.Contains(mustCLI(t, ef, "secret", "show", "--vault-name", "demo", "--name", "before", "-o", "tsv"), "v1") {
		t.Fatal("read after online rotation failed")
	}
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "after", "--value", "v2")
	out = mustCLI(t, ef, "operator", "rotate-data-key")
	if !strings.Contains(out, "active term 2") {
		t.Fatalf("rotate-data-key: %q", out)
	}
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "term2", "--value", "v3")
	d.stop(t)

	// The old key no longer opens the store; the error names both key ids.
	oldFile := filepath.Join(t.TempDir(), "old.key")
	os.WriteFile(oldFile, oldKey, 0o600)
	r := cli(t, ef, "", "operator", "rotate-root-key", "--data-dir", dir, "--root-key-file", oldFile)
	if r.code != 1 || !strings.Contains(r.err, "does not unlock this store") {
		t.Fatalf("old key: %d %s", r.code, r.err)
	}
	// Offline rotation with the current key, then a restart with the result.
	out = mustCLI(t, ef, "operator", "rotate-root-key", "--data-dir", dir, "--root-key-file", keyFile)
	if !strings.Contains(out, "rotated offline") {
		t.Fatalf("offline rotate: %q", out)
	}
	startDev(t, dir)
	for name, want := range map[string]string{"before": "v1", "after": "v2", "term2": "v3"} {
		if !strings.Contains(mustCLI(t, ef, "secret", "show", "--vault-name", "demo", "--name", name, "-o", "tsv"), want) {
			t.Fatalf("%s unreadable after two rotations and a restart", name)
		}
	}
	// While the server runs, offline rotation is refused with a clear error.
	r = cli(t, ef, "", "operator", "rotate-root-key", "--data-dir", dir, "--root-key-file", keyFile)
	if r.code != 1 || !strings.Contains(r.err, "locked by another process") {
		t.Fatalf("offline rotation with a live server: %d %s", r.code, r.err)
	}
}
