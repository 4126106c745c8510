package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

func TestBackend(t *testing.T) {
	physicaltest.Exercise(t, func(t *testing.T) physical.Backend {
		b, err := Open(filepath.Join(t.TempDir(), "store.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(context.Background(), nil, []physical.Op{{Key: "k", Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := b.Get(context.Background(), "k"); err != nil || string(got) != "v" {
		t.Fatalf("after reopen Get = %q, %v", got, err)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

func TestSeedCorpus(t *testing.T) { fuzzseed.Corpus(t, "FuzzKeys", physicaltest.Seeds) }

// FuzzKeys keeps its store on tmpfs when the machine has one: every
// batch is fsynced, which costs tens of milliseconds on a virtual disk and
// nothing on tmpfs, and the fuzzer needs thousands of batches a second.
func FuzzKeys(f *testing.F) {
	physicaltest.FuzzKeys(f, func(t testing.TB) physical.Backend {
		dir := t.TempDir()
		if shm, err := os.MkdirTemp("/dev/shm", "coffer-fuzz-"); err == nil {
			dir = shm
			t.Cleanup(func() { os.RemoveAll(shm) })
		}
		b, err := Open(filepath.Join(dir, "store.db"))
		if err != nil {
			t.Fatal(err)
		}
		// One writer has no one to share a commit with: waiting for
		// others would only slow the fuzzer.
		b.db.MaxBatchDelay = time.Microsecond
		t.Cleanup(func() { b.Close() })
		return b
	})
}
