// Package testbin builds the coffer binary for tests that run it as its
// own process: crash and failover trials, memory and fleet figures.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cofferhq/coffer/internal/testing/testpath"
)

var (
	once sync.Once
	bin  string
	err  error
)

// Coffer builds cmd/coffer once per test process and returns its path.
// It is built without the race detector: these tests measure, load or
// kill the process as it ships, and the in-process tests run the same
// code under the detector.
func Coffer(t testing.TB) string {
	t.Helper()
	src := testpath.Repo(t, "cmd/coffer")
	once.Do(func() {
		dir, e := os.MkdirTemp("", "coffer-bin")
		if e != nil {
			err = e
			return
		}
		bin = filepath.Join(dir, "coffer")
		if out, e := exec.Command("go", "build", "-o", bin, src).CombinedOutput(); e != nil {
			err = fmt.Errorf("go build ./cmd/coffer: %v\n%s", e, out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
