package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
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

// TestHotReadsNeverGoBack races readers against a writer on one key: a read
// that starts after a write returned must see that write or a later one,
// never the value it replaced, however the held values and the file
// interleave.
func TestHotReadsNeverGoBack(t *testing.T) {
	b, err := Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	put := func(n int) {
		if err := b.Apply(ctx, nil, []physical.Op{{Key: "k", Value: []byte(strconv.Itoa(n))}}); err != nil {
			t.Error(err)
		}
	}
	put(0)
	const writes = 300
	var acked atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for acked.Load() < writes {
				floor := acked.Load()
				v, err := b.Get(ctx, "k")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(v))
				if int64(n) < floor {
					t.Errorf("read %d after write %d was acknowledged", n, floor)
					return
				}
			}
		}()
	}
	for i := 1; i <= writes; i++ {
		put(i)
		acked.Store(int64(i))
	}
	wg.Wait()
	if v, err := b.Get(ctx, "k"); err != nil || string(v) != strconv.Itoa(writes) {
		t.Fatalf("final Get = %q, %v", v, err)
	}
}

// TestHotReadsAreCopies: what Get returns belongs to the caller, so writing
// it changes neither the store nor the next read.
func TestHotReadsAreCopies(t *testing.T) {
	b, err := Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Apply(ctx, nil, []physical.Op{{Key: "k", Value: []byte("value")}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		v, err := b.Get(ctx, "k")
		if err != nil || string(v) != "value" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		clear(v)
	}
	if err := b.Apply(ctx, nil, []physical.Op{{Key: "k", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); !errors.Is(err, physical.ErrNotFound) {
		t.Fatalf("Get after delete = %v, want ErrNotFound", err)
	}
}
