package server

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/server/storage/transfer"
)

// A store that an unfinished migration or restore is writing holds part
// of another store: a server that opened it would serve that part as if
// it were everything.
func TestOpenStoreRefusesAnUnfinishedCopy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "root.key")
	if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
		t.Fatal(err)
	}
	o := StoreOptions{DataDir: dir, RootKeyFile: keyFile}
	e, err := OpenEngine(ctx, o, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte(`{"op":"migrate","source":"bolt:/old/coffer.db","started":"2026-01-02T03:04:05Z"}`)
	if err := e.Apply(ctx, nil, []physical.Op{{Key: transfer.MarkerKey, Value: marker}}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	var ue *transfer.UnfinishedError
	if st, err := OpenStore(ctx, o, nil, nil); !errors.As(err, &ue) {
		if err == nil {
			st.Close()
		}
		t.Fatalf("OpenStore = %v, want an *UnfinishedError", err)
	}
}
