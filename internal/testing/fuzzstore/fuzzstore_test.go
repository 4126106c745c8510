package fuzzstore

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update-seeds", false, "generate a new keyring.json (invalidates every sealed seed)")

func TestCommittedKeyringOpens(t *testing.T) {
	if *update {
		m, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("keyring.json", append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote keyring.json (%d-byte keyring): regenerate the sealed seed corpora", len(m.Keyring))
		return
	}
	_, b := Open(t)
	if b.ActiveTerm() != 2 {
		t.Fatalf("active term %d, want 2", b.ActiveTerm())
	}
	// Every store opened from it is independent.
	_, b2 := Open(t)
	if err := b.Apply(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	sealed := b.Seal("p", []byte("x"))
	plain, err := b2.Unseal("p", sealed)
	if err != nil || !bytes.Equal(plain, []byte("x")) {
		t.Fatalf("a blob sealed in one store does not open in another: %q %v", plain, err)
	}
}
