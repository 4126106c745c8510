package security

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/node/atomicdir"
	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/csidriver"
)

// CVE-2020-8567 (the Secrets Store providers' path traversal): a
// SecretProviderClass's objectName, objectAlias or filePermission must not
// name a file outside the volume or a mode beyond the permission bits.
func TestProviderObjectPaths(t *testing.T) {
	for name, obj := range map[string]string{
		"CVE-2020-8567: objectAlias climbing out":                  "objectName: s\nobjectType: secret\nobjectAlias: ../../etc/passwd",
		"CVE-2020-8567: objectAlias absolute":                      "objectName: s\nobjectType: secret\nobjectAlias: /etc/passwd",
		"CVE-2020-8567: objectAlias climbing from inside":          "objectName: s\nobjectType: secret\nobjectAlias: a/../../x",
		"CVE-2020-8567: objectAlias with a backslash":              "objectName: s\nobjectType: secret\nobjectAlias: ..\\\\x",
		"CVE-2020-8567: objectAlias onto the writer's ..data link": "objectName: s\nobjectType: secret\nobjectAlias: ..data",
		"CVE-2020-8567: objectAlias with a NUL byte":               "objectName: s\nobjectType: secret\nobjectAlias: \"a\\0b\"",
		"CVE-2020-8567: objectAlias '.', the volume itself":        "objectName: s\nobjectType: secret\nobjectAlias: .",
		"CVE-2020-8567: objectAlias with a trailing slash":         "objectName: s\nobjectType: secret\nobjectAlias: a/",
		"CVE-2020-8567: objectName climbing out":                   "objectName: ../../etc/shadow\nobjectType: secret",
		"CVE-2020-8567: objectName absolute":                       "objectName: /etc/shadow\nobjectType: secret",
		"file mode: setuid in filePermission":                      "objectName: s\nobjectType: secret\nfilePermission: \"4755\"",
		"file mode: beyond octal in filePermission":                "objectName: s\nobjectType: secret\nfilePermission: \"0999\"",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := azparams.ParseObjects("array:\n  - |\n"+indent(obj, "    ")+"\n", 0o644)
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func indent(s, by string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = by + lines[i]
	}
	return strings.Join(lines, "\n")
}

// tmpfsTarget mounts a tmpfs, as the driver mounts a volume, and returns it
// with a directory outside it that an attacker would aim at.
func tmpfsTarget(t *testing.T) (target, outside string) {
	t.Helper()
	root := t.TempDir()
	target, outside = filepath.Join(root, "target"), filepath.Join(root, "outside")
	for _, d := range []string{target, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := csidriver.NewMounter()
	if err := m.Mount("tmpfs", target, "tmpfs", nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(target); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target, outside
}

// outsideIntact fails unless outside still holds exactly its victim file.
func outsideIntact(t *testing.T, outside string) {
	t.Helper()
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatalf("the directory outside the volume: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(outside, "victim"))
	if err != nil || string(b) != "untouched" || len(entries) != 1 {
		t.Fatalf("the directory outside the volume changed: %d entries, victim %q %v", len(entries), b, err)
	}
}

// CVE-2020-8568 class (the driver writing where a provider response or
// the volume's existing content points): the driver's writer validates
// the response's paths and modes itself, and never follows a symlink that
// is already in the target directory.
func TestVolumeWriterSymlinks(t *testing.T) {
	file := func(p string) []atomicdir.File {
		return []atomicdir.File{{Path: p, Mode: 0o644, Contents: []byte("s3cr3t")}}
	}
	t.Run("CVE-2020-8568: a response path climbing out", func(t *testing.T) {
		target, outside := tmpfsTarget(t)
		if _, err := atomicdir.Write(target, file("../outside/victim")); !errors.Is(err, atomicdir.ErrBadPath) {
			t.Fatalf("%v", err)
		}
		outsideIntact(t, outside)
	})
	t.Run("CVE-2020-8568: a response path absolute", func(t *testing.T) {
		target, outside := tmpfsTarget(t)
		if _, err := atomicdir.Write(target, file(filepath.Join(outside, "victim"))); !errors.Is(err, atomicdir.ErrBadPath) {
			t.Fatalf("%v", err)
		}
		outsideIntact(t, outside)
	})
	for name, p := range map[string]string{
		"CVE-2020-8568: a response path '.', the volume itself": ".",
		"CVE-2020-8568: a response path with a NUL byte":        "a\x00b",
		"CVE-2020-8568: a response path onto the ..data link":   "..data",
	} {
		t.Run(name, func(t *testing.T) {
			target, _ := tmpfsTarget(t)
			if _, err := atomicdir.Write(target, file(p)); !errors.Is(err, atomicdir.ErrBadPath) {
				t.Fatalf("%v", err)
			}
		})
	}
	t.Run("file mode: a response mode with setuid", func(t *testing.T) {
		target, _ := tmpfsTarget(t)
		if _, err := atomicdir.Write(target, []atomicdir.File{{Path: "s", Mode: 0o755 | fs.ModeSetuid}}); !errors.Is(err, atomicdir.ErrBadPath) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("symlink in target: a file's name already links outside", func(t *testing.T) {
		target, outside := tmpfsTarget(t)
		if err := os.Symlink(filepath.Join(outside, "victim"), filepath.Join(target, "password")); err != nil {
			t.Fatal(err)
		}
		atomicdir.Write(target, file("password"))
		outsideIntact(t, outside)
	})
	t.Run("symlink in target: a directory's name already links outside", func(t *testing.T) {
		target, outside := tmpfsTarget(t)
		if err := os.Symlink(outside, filepath.Join(target, "dir")); err != nil {
			t.Fatal(err)
		}
		atomicdir.Write(target, file("dir/victim"))
		outsideIntact(t, outside)
	})
	t.Run("symlink in target: ..data_tmp already links outside", func(t *testing.T) {
		target, outside := tmpfsTarget(t)
		if err := os.Symlink(outside, filepath.Join(target, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if _, err := atomicdir.Write(target, file("password")); err != nil {
			t.Fatal(err)
		}
		outsideIntact(t, outside)
	})
	for name, link := range map[string]func(outside string) string{
		"symlink in target: ..data already links outside, relatively": func(string) string { return "../outside" },
		"symlink in target: ..data already links outside, absolutely": func(outside string) string { return outside },
	} {
		t.Run(name, func(t *testing.T) {
			target, outside := tmpfsTarget(t)
			if err := os.Symlink(link(outside), filepath.Join(target, "..data")); err != nil {
				t.Fatal(err)
			}
			if _, err := atomicdir.Write(target, file("password")); !errors.Is(err, atomicdir.ErrForeignLink) {
				t.Errorf("a planted ..data: %v, want ErrForeignLink", err)
			}
			outsideIntact(t, outside)
		})
	}
}
