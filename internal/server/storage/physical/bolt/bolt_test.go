package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
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
