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

// The state a kill leaves between re-wrapping the store and moving the
// staged key into place, built from files so that it is there every run:
// root.key still holds the old key and root.key.new the key that sealed the
// store. Every offline tool that takes the key file opens such a store and
// moves nothing; the next server start finishes the rotation.
func TestInterruptedRotationOfflineTools(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)
	keyFile := filepath.Join(dir, "root.key")
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "kept", "--value", "v1")
	d.stop(t)
	oldKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	mustOp(t, "rotate-root-key", "--data-dir", dir, "--root-key-file", keyFile)
	if err := os.Rename(keyFile, keyFile+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, oldKey, 0o600); err != nil {
		t.Fatal(err)
	}
	staged := func(out string) bool {
		return strings.Contains(out, "sealed with the root key staged in "+keyFile+".new")
	}

	if out := mustOp(t, "verify", "--data-dir", dir, "--root-key-file", keyFile); !staged(out) || !strings.Contains(out, "No damage") {
		t.Fatalf("verify:\n%s", out)
	}
	snap := filepath.Join(t.TempDir(), "s.snap")
	if out := mustOp(t, "snapshot", "save", "--data-dir", dir, "--root-key-file", keyFile, "--out", snap); !staged(out) || strings.Contains(out, "has no MAC") {
		t.Fatalf("snapshot save:\n%s", out)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	if out := mustOp(t, "snapshot", "restore", "--in", snap, "--data-dir", restored, "--root-key-file", keyFile); !staged(out) || !strings.Contains(out, "Its MAC matches") || !strings.Contains(out, "No damage") {
		t.Fatalf("snapshot restore:\n%s", out)
	}
	migrated := filepath.Join(t.TempDir(), "migrated")
	if out := mustOp(t, "migrate", "--from", "bolt:"+dir, "--to", "bolt:"+migrated, "--root-key-file", keyFile); !staged(out) || !strings.Contains(out, "No damage") {
		t.Fatalf("migrate:\n%s", out)
	}
	// The tools only read: the rotation is still half done on disk.
	if now, _ := os.ReadFile(keyFile); string(now) != string(oldKey) {
		t.Fatal("an offline tool moved the staged key")
	}
	// Without the staged file the old key is refused with both key ids.
	staging, _ := os.ReadFile(keyFile + ".new")
	os.Remove(keyFile + ".new")
	if out, code := op(t, "verify", "--data-dir", dir, "--root-key-file", keyFile); code != 1 || !strings.Contains(out, "does not unlock this store") {
		t.Fatalf("verify with the old key alone: exit %d\n%s", code, out)
	}
	os.WriteFile(keyFile+".new", staging, 0o600)

	startDev(t, dir)
	if _, err := os.Stat(keyFile + ".new"); !os.IsNotExist(err) {
		t.Fatal("the server start left the staged key in place")
	}
	if !strings.Contains(mustCLI(t, ef, "secret", "show", "--vault-name", "demo", "--name", "kept", "-o", "tsv"), "v1") {
		t.Fatal("secret unreadable after the server finished the rotation")
	}
}
