package barrier_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
	"github.com/cofferhq/coffer/internal/testing/fuzzstore"
)

// sealedFile lists the blobs the seed generator sealed with the committed
// keyring: the only (path, blob) pairs that may ever open.
const sealedFile = "testdata/sealed.json"

type sealedBlob struct {
	Path  string `json:"path"`
	Blob  []byte `json:"blob"`
	Plain []byte `json:"plain"`
}

// What the store holds, by path, in its real shapes.
var plaintexts = []sealedBlob{
	{Path: "o/demo/secrets/v/db-password/3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8", Plain: []byte(`{"id":"3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8","name":"db-password","attributes":{"enabled":true,"created":1767225600,"updated":1767225600},"contentType":"text/plain","data":{"value":"S3cr3t-P@ssw0rd!"}}`)},
	{Path: "o/demo/secrets/h/db-password", Plain: []byte(`{"name":"db-password","current":"3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8","created":1767225600}`)},
	{Path: "vaults/demo", Plain: []byte(`{"name":"demo","tenantId":"72f988bf-86f1-41af-91ab-2d7cd011db47","resourceGroup":"default","retentionDays":90,"enableRbacAuthorization":false}`)},
	{Path: "authority/replay/9b74c9897bac770ffc029102a200c5de", Plain: []byte(`{"expires":1767229200}`)},
	{Path: "bootstrap/state", Plain: []byte{}},
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzUnseal", func(t *testing.T) []fuzzseed.Seed {
		_, b := fuzzstore.Open(t)
		var genuine []sealedBlob
		var seeds []fuzzseed.Seed
		for i, p := range plaintexts {
			p.Blob = b.Seal(p.Path, p.Plain)
			genuine = append(genuine, p)
			name := strings.NewReplacer("/", "_").Replace(p.Path)
			if len(name) > 40 {
				name = name[:40]
			}
			tamper := func(kind string, path string, blob []byte) {
				seeds = append(seeds, fuzzseed.S(kind+"-"+name, path, blob))
			}
			tamper("genuine", p.Path, p.Blob)
			tamper("moved", p.Path+"x", p.Blob)
			tamper("truncated", p.Path, p.Blob[:len(p.Blob)-1])
			tamper("header-only", p.Path, p.Blob[:17])
			if i == 0 {
				flip := func(at int) []byte { c := bytes.Clone(p.Blob); c[at] ^= 1; return c }
				tamper("term-retired", p.Path, func() []byte { c := bytes.Clone(p.Blob); binary.BigEndian.PutUint32(c, 1); return c }())
				tamper("term-unknown", p.Path, func() []byte { c := bytes.Clone(p.Blob); binary.BigEndian.PutUint32(c, 3); return c }())
				tamper("version", p.Path, flip(4))
				tamper("nonce", p.Path, flip(5))
				tamper("ciphertext", p.Path, flip(20))
				tamper("tag", p.Path, flip(len(p.Blob)-1))
				tamper("extended", p.Path, append(bytes.Clone(p.Blob), 0))
				tamper("upper-path", strings.ToUpper(p.Path), p.Blob)
			}
		}
		// A blob sealed for the same path by another installation.
		_, other := openFresh(t)
		seeds = append(seeds, fuzzseed.S("other-installation", plaintexts[0].Path, other.Seal(plaintexts[0].Path, plaintexts[0].Plain)),
			fuzzseed.S("empty", "", []byte{}))
		js, err := json.MarshalIndent(genuine, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sealedFile, append(js, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return seeds
	})
	fuzzseed.Corpus(t, "FuzzOpenKeyring", func(t *testing.T) []fuzzseed.Seed {
		ring := fuzzstore.Keyring(t)
		otherPhys, _ := openFresh(t)
		otherRing, err := otherPhys.Get(context.Background(), fuzzstore.KeyringPath)
		if err != nil {
			t.Fatal(err)
		}
		flip := func(at int) []byte { c := bytes.Clone(ring); c[at] ^= 1; return c }
		return []fuzzseed.Seed{
			fuzzseed.S("genuine", ring),
			fuzzseed.S("other-root-key", otherRing),
			fuzzseed.S("version", flip(0)),
			fuzzseed.S("root-key-id", flip(3)),
			fuzzseed.S("nonce", flip(20)),
			fuzzseed.S("ciphertext", flip(40)),
			fuzzseed.S("truncated", ring[:len(ring)-1]),
			fuzzseed.S("header-only", ring[:29]),
			fuzzseed.S("empty", []byte{}),
		}
	})
}

// openFresh opens a barrier with a new random root key.
func openFresh(t *testing.T) (*inmem.Backend, *barrier.Barrier) {
	t.Helper()
	m, err := fuzzstore.Generate()
	if err != nil {
		t.Fatal(err)
	}
	phys := inmem.New()
	if err := phys.Apply(context.Background(), nil, []physical.Op{{Key: fuzzstore.KeyringPath, Value: m.Keyring}}); err != nil {
		t.Fatal(err)
	}
	b, err := barrier.Open(context.Background(), phys, mustRoot(t, m.RootKey))
	if err != nil {
		t.Fatal(err)
	}
	return phys, b
}

// FuzzUnseal feeds the barrier's blob format arbitrary (path, blob) pairs.
// Only a blob sealed for exactly that path may open, to exactly its
// plaintext; anything else is ErrCorrupt. The input is then sealed as a
// plaintext: it opens at its path only, the ciphertext does not hold it,
// and a single flipped byte makes it fail.
func FuzzUnseal(f *testing.F) {
	raw, err := os.ReadFile(sealedFile)
	if err != nil {
		f.Fatal(err)
	}
	var genuine []sealedBlob
	if err := json.Unmarshal(raw, &genuine); err != nil {
		f.Fatal(err)
	}
	known := map[string][]byte{}
	for _, g := range genuine {
		known[g.Path+"\x00"+string(g.Blob)] = g.Plain
	}
	_, b := fuzzstore.Open(f)
	f.Fuzz(func(t *testing.T, path string, blob []byte) {
		plain, err := b.Unseal(path, blob)
		if err == nil {
			want, ok := known[path+"\x00"+string(blob)]
			if !ok {
				t.Fatalf("a %d-byte blob that was never sealed for %q opened", len(blob), path)
			}
			if !bytes.Equal(plain, want) {
				t.Fatalf("a genuine blob opened to %q, want %q", plain, want)
			}
		} else if !errors.Is(err, barrier.ErrCorrupt) {
			t.Fatalf("Unseal error %v is not ErrCorrupt", err)
		}

		sealed := b.Seal(path, blob)
		if term := binary.BigEndian.Uint32(sealed); term != b.ActiveTerm() {
			t.Fatalf("sealed under term %d, the active term is %d", term, b.ActiveTerm())
		}
		if len(blob) >= 8 && bytes.Contains(sealed, blob) {
			t.Fatal("the sealed blob holds its plaintext")
		}
		back, err := b.Unseal(path, sealed)
		if err != nil || !bytes.Equal(back, blob) {
			t.Fatalf("round trip: %q, %v", back, err)
		}
		if _, err := b.Unseal(path+"/", sealed); !errors.Is(err, barrier.ErrCorrupt) {
			t.Fatalf("a blob moved to another path opened: %v", err)
		}
		flipped := bytes.Clone(sealed)
		flipped[len(blob)%len(flipped)] ^= 0x80
		if _, err := b.Unseal(path, flipped); !errors.Is(err, barrier.ErrCorrupt) {
			t.Fatalf("a blob with byte %d flipped opened: %v", len(blob)%len(flipped), err)
		}
	})
}

// FuzzOpenKeyring stores an arbitrary keyring blob and opens the store
// with the committed root key: only the committed keyring opens; anything
// else is ErrCorrupt or a root key mismatch (and then the stored id is
// not the key's), and no error carries key material.
func FuzzOpenKeyring(f *testing.F) {
	root := fuzzstore.RootKey(f)
	ring := fuzzstore.Keyring(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, raw []byte) {
		phys := inmem.New()
		if err := phys.Apply(ctx, nil, []physical.Op{{Key: fuzzstore.KeyringPath, Value: raw}}); err != nil {
			t.Fatal(err)
		}
		id, idErr := barrier.StoreRootKeyID(ctx, phys)
		b, err := barrier.Open(ctx, phys, root)
		if err == nil {
			if !bytes.Equal(raw, ring) {
				t.Fatalf("a %d-byte keyring that is not the committed one opened", len(raw))
			}
			if b.RootKeyID() != root.ID() || idErr != nil || id != root.ID() {
				t.Fatalf("opened with root key id %s, stored id %q (%v)", b.RootKeyID(), id, idErr)
			}
			return
		}
		var mismatch *barrier.RootKeyMismatchError
		switch {
		case errors.As(err, &mismatch):
			if idErr != nil || id == root.ID() || mismatch.Sealed != id {
				t.Fatalf("mismatch %v, but the stored id is %q (%v)", err, id, idErr)
			}
		case errors.Is(err, barrier.ErrCorrupt):
		default:
			t.Fatalf("Open error %v is neither ErrCorrupt nor a root key mismatch", err)
		}
		if msg := err.Error(); strings.Contains(msg, root.Encode()) || strings.Contains(msg, string(root.Bytes())) {
			t.Fatalf("the error carries the root key: %s", msg)
		}
	})
}

func mustRoot(t *testing.T, s string) rootkey.Key {
	t.Helper()
	k, err := rootkey.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
