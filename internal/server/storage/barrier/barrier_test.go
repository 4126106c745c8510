package barrier

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func open(t *testing.T, phys physical.Backend, root rootkey.Key) *Barrier {
	t.Helper()
	b, err := Open(context.Background(), phys, root)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripAndNoPlaintextBelow(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	b := open(t, phys, rootkey.Generate())
	secret := []byte("hunter2-very-secret-value")
	if err := b.Apply(ctx, nil, []Op{{Key: "v/demo/a", Value: secret}}); err != nil {
		t.Fatal(err)
	}
	rec, err := b.Get(ctx, "v/demo/a")
	if err != nil || !bytes.Equal(rec.Value, secret) {
		t.Fatalf("Get = %q, %v", rec.Value, err)
	}
	all, _ := phys.Scan(ctx, "", "", 0)
	for _, e := range all {
		if bytes.Contains(e.Value, secret) {
			t.Fatalf("physical entry %q holds the plaintext", e.Key)
		}
	}
}

// A sealed value copied to another path must not open there: the path is the
// additional data.
func TestMoveIntegrity(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	b := open(t, phys, rootkey.Generate())
	if err := b.Apply(ctx, nil, []Op{{Key: "v/demo/a", Value: []byte("alpha")}}); err != nil {
		t.Fatal(err)
	}
	raw, _ := phys.Get(ctx, "v/demo/a")
	if err := phys.Apply(ctx, nil, []physical.Op{{Key: "v/demo/b", Value: raw}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "v/demo/b"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a moved blob = %v, want ErrCorrupt", err)
	}
}

func TestTamperDetected(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	b := open(t, phys, rootkey.Generate())
	b.Apply(ctx, nil, []Op{{Key: "k", Value: []byte("alpha")}})
	raw, _ := phys.Get(ctx, "k")
	raw[len(raw)-1] ^= 1
	phys.Apply(ctx, nil, []physical.Op{{Key: "k", Value: raw}})
	if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a tampered blob = %v, want ErrCorrupt", err)
	}
}

func TestWrongRootKey(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	right := rootkey.Generate()
	open(t, phys, right)
	wrong := rootkey.Generate()
	_, err := Open(ctx, phys, wrong)
	var mm *RootKeyMismatchError
	if !errors.As(err, &mm) || mm.Given != wrong.ID() || mm.Sealed != right.ID() {
		t.Fatalf("Open with the wrong key = %v, want a mismatch naming both IDs", err)
	}
	if id, _ := StoreRootKeyID(ctx, phys); id != right.ID() {
		t.Fatalf("StoreRootKeyID = %q, want %q", id, right.ID())
	}
}

func TestRotateRootKeyKeepsData(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	old := rootkey.Generate()
	b := open(t, phys, old)
	b.Apply(ctx, nil, []Op{{Key: "k", Value: []byte("alpha")}})
	sealedBefore, _ := phys.Get(ctx, "k")
	next := rootkey.Generate()
	if err := b.RotateRootKey(ctx, next); err != nil {
		t.Fatal(err)
	}
	if b.RootKeyID() != next.ID() {
		t.Fatal("barrier still reports the old root key")
	}
	// Online: the running barrier keeps working.
	if rec, err := b.Get(ctx, "k"); err != nil || string(rec.Value) != "alpha" {
		t.Fatalf("Get after rotation = %q, %v", rec.Value, err)
	}
	// Data blobs are untouched; only the keyring was re-wrapped.
	if sealedAfter, _ := phys.Get(ctx, "k"); !bytes.Equal(sealedBefore, sealedAfter) {
		t.Fatal("root key rotation rewrote data blobs")
	}
	if _, err := Open(ctx, phys, old); err == nil {
		t.Fatal("the old root key still opens the store")
	}
	b2 := open(t, phys, next)
	if rec, err := b2.Get(ctx, "k"); err != nil || string(rec.Value) != "alpha" {
		t.Fatalf("Get after reopen with the new key = %q, %v", rec.Value, err)
	}
}

func TestRotateDataKey(t *testing.T) {
	ctx := context.Background()
	phys := inmem.New()
	root := rootkey.Generate()
	b := open(t, phys, root)
	b.Apply(ctx, nil, []Op{{Key: "old", Value: []byte("one")}})
	term, err := b.RotateDataKey(ctx)
	if err != nil || term != 2 {
		t.Fatalf("RotateDataKey = %d, %v", term, err)
	}
	b.Apply(ctx, nil, []Op{{Key: "new", Value: []byte("two")}})
	b2 := open(t, phys, root)
	for k, want := range map[string]string{"old": "one", "new": "two"} {
		if rec, err := b2.Get(ctx, k); err != nil || string(rec.Value) != want {
			t.Fatalf("Get(%s) = %q, %v", k, rec.Value, err)
		}
	}
	if b2.ActiveTerm() != 2 {
		t.Fatalf("active term = %d after reopen, want 2", b2.ActiveTerm())
	}
}

func TestConditionsUseRevisions(t *testing.T) {
	ctx := context.Background()
	b := open(t, inmem.New(), rootkey.Generate())
	if err := b.Apply(ctx, []Cond{{Key: "k"}}, []Op{{Key: "k", Value: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	rec, _ := b.Get(ctx, "k")
	if err := b.Apply(ctx, []Cond{{Key: "k"}}, []Op{{Key: "k", Value: []byte("2")}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("absent-condition on existing key = %v", err)
	}
	if err := b.Apply(ctx, []Cond{{Key: "k", Rev: rec.Rev}}, []Op{{Key: "k", Value: []byte("2")}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, []Cond{{Key: "k", Rev: rec.Rev}}, []Op{{Key: "k", Value: []byte("3")}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale revision = %v, want ErrConflict", err)
	}
}

func TestReservedNamespace(t *testing.T) {
	b := open(t, inmem.New(), rootkey.Generate())
	if err := b.Apply(context.Background(), nil, []Op{{Key: "core/keyring", Value: []byte("x")}}); !errors.Is(err, ErrReservedPath) {
		t.Fatalf("write to core/ = %v", err)
	}
	if _, err := b.Scan(context.Background(), "", "", 0); !errors.Is(err, ErrReservedPath) {
		t.Fatalf("scan of everything = %v", err)
	}
}

func TestSealUnsealForBackups(t *testing.T) {
	b := open(t, inmem.New(), rootkey.Generate())
	blob := b.Seal("backup/secret", []byte("payload"))
	if got, err := b.Unseal("backup/secret", blob); err != nil || string(got) != "payload" {
		t.Fatalf("Unseal = %q, %v", got, err)
	}
	if _, err := b.Unseal("backup/key", blob); !errors.Is(err, ErrCorrupt) {
		t.Fatal("a backup opened under another purpose")
	}
	if _, err := b.Unseal("x", []byte{1, 2}); !errors.Is(err, ErrCorrupt) {
		t.Fatal("a short blob did not fail cleanly")
	}
}
