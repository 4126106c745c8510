// Package testpath finds files of the repository from a test, whatever
// package directory the test runs in.
package testpath

import (
	"os"
	"path/filepath"
	"testing"
)

// Repo returns rel resolved from the repository root (the directory of
// go.mod above the working directory).
func Repo(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for ; dir != "/"; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
	}
	t.Fatal("no go.mod above the working directory")
	return ""
}
