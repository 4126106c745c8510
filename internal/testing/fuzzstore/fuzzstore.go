// Package fuzzstore opens a barrier over the in-memory engine with a root
// key and keyring committed beside this file, the same in every run. Fuzz
// targets need that: their seed corpora hold sealed blobs (backups, barrier
// values) that must open in every later run, and a fresh store's data keys
// are random.
//
// The keyring has two data keys, terms 1 and 2 (active), so that seeds can
// be sealed under a retired term too. Regenerating it with
//
//	go test ./internal/testing/fuzzstore -args -update-seeds
//
// makes every committed sealed seed unopenable: regenerate those corpora
// after it.
package fuzzstore

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// KeyringPath is where the barrier keeps its keyring.
const KeyringPath = "core/keyring"

//go:embed keyring.json
var committed []byte

// Material is the committed store material.
type Material struct {
	RootKey string `json:"rootKey"` // base64, as COFFER_ROOT_KEY
	Keyring []byte `json:"keyring"` // the sealed keyring blob, as stored
}

func load() (Material, rootkey.Key, error) {
	var m Material
	if err := json.Unmarshal(committed, &m); err != nil {
		return m, rootkey.Key{}, fmt.Errorf("fuzzstore: keyring.json: %w", err)
	}
	k, err := rootkey.Parse(m.RootKey)
	return m, k, err
}

// RootKey returns the committed root key.
func RootKey(t testing.TB) rootkey.Key {
	t.Helper()
	_, k, err := load()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Keyring returns the committed keyring blob.
func Keyring(t testing.TB) []byte {
	t.Helper()
	m, _, err := load()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), m.Keyring...)
}

// Open returns the in-memory engine, holding the committed keyring only,
// and the barrier unsealed over it.
func Open(t testing.TB) (*inmem.Backend, *barrier.Barrier) {
	t.Helper()
	m, k, err := load()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	phys := inmem.New()
	if err := phys.Apply(ctx, nil, []physical.Op{{Key: KeyringPath, Value: m.Keyring}}); err != nil {
		t.Fatal(err)
	}
	b, err := barrier.Open(ctx, phys, k)
	if err != nil {
		t.Fatalf("fuzzstore: the committed keyring does not open: %v", err)
	}
	return phys, b
}

// Generate makes new store material: a root key and a keyring with two
// data keys.
func Generate() (Material, error) {
	ctx := context.Background()
	k := rootkey.Generate()
	phys := inmem.New()
	b, err := barrier.Open(ctx, phys, k)
	if err != nil {
		return Material{}, err
	}
	if _, err := b.RotateDataKey(ctx); err != nil {
		return Material{}, err
	}
	ring, err := phys.Get(ctx, KeyringPath)
	if err != nil {
		return Material{}, err
	}
	return Material{RootKey: k.Encode(), Keyring: ring}, nil
}
