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

// build is one build of cmd/coffer, made at most once per test process.
type build struct {
	once sync.Once
	bin  string
	err  error
}

var full, node, prov build

// Coffer builds cmd/coffer once per test process and returns its path.
// It is built without the race detector: these tests measure, load or
// kill the process as it ships, and the in-process tests run the same
// code under the detector.
func Coffer(t testing.TB) string {
	t.Helper()
	return full.get(t)
}

// CofferNode builds the node build of cmd/coffer (`-tags node`: the CSI
// driver, the provider and the node agent only), as the node image ships
// it, once per test process, and returns its path.
func CofferNode(t testing.TB) string {
	t.Helper()
	return node.get(t, "-tags", "node")
}

// CofferProvider builds the provider build of cmd/coffer (`-tags
// node,provider`: the provider only), as the node image ships it for the
// provider's DaemonSet, once per test process, and returns its path.
func CofferProvider(t testing.TB) string {
	t.Helper()
	return prov.get(t, "-tags", "node,provider")
}

func (b *build) get(t testing.TB, flags ...string) string {
	t.Helper()
	src := testpath.Repo(t, "cmd/coffer")
	b.once.Do(func() {
		dir, e := os.MkdirTemp("", "coffer-bin")
		if e != nil {
			b.err = e
			return
		}
		b.bin = filepath.Join(dir, "coffer")
		args := append(append([]string{"build"}, flags...), "-o", b.bin, src)
		if out, e := exec.Command("go", args...).CombinedOutput(); e != nil {
			b.err = fmt.Errorf("go %v: %v\n%s", args, e, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}
