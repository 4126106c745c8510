package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func TestSnapshot(t *testing.T) {
	en := newEngines(t)
	ctx := context.Background()

	// Taken from either engine, restored into either: the same entries,
	// and the file never holds a value or a key in plaintext.
	t.Run("RoundTrip", func(t *testing.T) {
		for _, from := range engineNames {
			for _, to := range engineNames {
				t.Run(from+"To"+to, func(t *testing.T) {
					src, dst := en.open(t, from), en.open(t, to)
					root := rootkey.Generate()
					br := fill(t, src, root, 700, 50)
					canary := []byte("canary-7f3a9c-never-in-a-snapshot")
					if err := br.Apply(ctx, nil, []barrier.Op{{Key: "o/demo/secrets/v/canary/x", Value: canary}}); err != nil {
						t.Fatal(err)
					}
					path := filepath.Join(t.TempDir(), "coffer.snap")
					h, err := Save(ctx, src, path, SaveOptions{Engine: from, Source: from + ":src", Root: &root})
					if err != nil {
						t.Fatal(err)
					}
					if h.Entries != 702 || h.RootKeyID != root.ID() || h.MAC == "" || h.Engine != from {
						t.Fatalf("header %+v: want 702 entries (700, the canary, the keyring), the root key id, a MAC", h)
					}
					file, _ := os.ReadFile(path)
					for what, plain := range map[string][]byte{"the canary value": canary, "a value": []byte("value of 17 "), "the root key": root.Bytes()} {
						if bytes.Contains(file, plain) {
							t.Fatalf("the snapshot holds %s in plaintext", what)
						}
					}
					if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
						t.Fatalf("snapshot mode %v, want 0600", fi.Mode().Perm())
					}
					snap, err := OpenSnapshot(path)
					if err != nil {
						t.Fatal(err)
					}
					if a, err := snap.Authenticate(root); err != nil || a != Authenticated {
						t.Fatalf("Authenticate = %v, %v", a, err)
					}
					rep, err := Copy(ctx, snap, dst, CopyOptions{Op: "restore"})
					if err != nil {
						t.Fatal(err)
					}
					if !rep.Target.Same(h.Summary()) || rep.Copied != 702 {
						t.Fatalf("restored %+v, want the header's %+v", rep.Target, h.Summary())
					}
					sameEntries(t, src, dst)
					// The restored store opens with the root key.
					rb, err := barrier.Open(ctx, dst, root)
					if err != nil {
						t.Fatal(err)
					}
					if rec, err := rb.Get(ctx, "o/demo/secrets/v/canary/x"); err != nil || !bytes.Equal(rec.Value, canary) {
						t.Fatalf("restored canary = %q, %v", rec.Value, err)
					}
				})
			}
		}
	})

	saved := func(t *testing.T, withKey bool) (string, rootkey.Key) {
		t.Helper()
		src := inmem.New()
		root := rootkey.Generate()
		fill(t, src, root, 50, 40)
		o := SaveOptions{Engine: "inmem", Source: "inmem"}
		if withKey {
			o.Root = &root
		}
		path := filepath.Join(t.TempDir(), "s.snap")
		if _, err := Save(ctx, src, path, o); err != nil {
			t.Fatal(err)
		}
		return path, root
	}

	// Every kind of damage is refused before a single entry is written.
	t.Run("RefusesADamagedFile", func(t *testing.T) {
		for name, damage := range map[string]func(b []byte) []byte{
			"aByteOfAValueFlipped":  func(b []byte) []byte { b[len(b)-10] ^= 1; return b },
			"aByteOfAKeyFlipped":    func(b []byte) []byte { b[headerBlock+3] ^= 1; return b },
			"truncatedInTheBody":    func(b []byte) []byte { return b[:len(b)-100] },
			"truncatedByOneByte":    func(b []byte) []byte { return b[:len(b)-1] },
			"truncatedInTheHeader":  func(b []byte) []byte { return b[:100] },
			"withBytesAppended":     func(b []byte) []byte { return append(b, "more"...) },
			"notASnapshot":          func(b []byte) []byte { return []byte(strings.Repeat("x", 5000)) },
			"theHeaderUnparseable":  func(b []byte) []byte { b[len(snapshotMagic)] = '['; return b },
			"theDigestInTheHeader":  func(b []byte) []byte { i := bytes.Index(b, []byte(`"sha256:`)); b[i+9] ^= 1; return b },
			"theCountInTheHeader":   func(b []byte) []byte { return editHeader(t, b, func(h *Header) { h.Entries-- }) },
			"anEntryMovedOutOfLine": func(b []byte) []byte { return swapLastTwo(t, b) },
		} {
			t.Run(name, func(t *testing.T) {
				path, _ := saved(t, false)
				b, _ := os.ReadFile(path)
				os.WriteFile(path, damage(b), 0o600)
				dst := inmem.New()
				snap, err := OpenSnapshot(path)
				if err == nil {
					_, err = Copy(ctx, snap, dst, CopyOptions{Op: "restore"})
				}
				if !errors.Is(err, ErrCorruptSnapshot) {
					t.Fatalf("restore of a damaged snapshot = %v, want ErrCorruptSnapshot", err)
				}
				t.Log(err)
				if n := len(entries(t, dst)); n != 0 {
					t.Fatalf("%d entries were written from a damaged snapshot", n)
				}
			})
		}
	})

	// The digest alone cannot stop someone who rewrites it: dropping an
	// entry and fixing up the header passes it. The MAC, under a key only
	// the root key gives, does not let that through.
	t.Run("TheMACCatchesARewrittenHeader", func(t *testing.T) {
		path, root := saved(t, true)
		b, _ := os.ReadFile(path)
		os.WriteFile(path, dropOne(t, b), 0o600)
		snap, err := OpenSnapshot(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := snap.Summarize(ctx); err != nil {
			t.Fatalf("the rewritten file should pass its digest (it was fixed up): %v", err)
		}
		if _, err := snap.Authenticate(root); !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("Authenticate = %v, want ErrCorruptSnapshot", err)
		}
		var mm *barrier.RootKeyMismatchError
		if _, err := snap.Authenticate(rootkey.Generate()); !errors.As(err, &mm) {
			t.Fatalf("Authenticate with another key = %v, want a *RootKeyMismatchError", err)
		}
		unkeyed, root2 := saved(t, false)
		s2, _ := OpenSnapshot(unkeyed)
		if a, err := s2.Authenticate(root2); err != nil || a != Unauthenticated {
			t.Fatalf("a snapshot taken without the root key: %v, %v; want Unauthenticated", a, err)
		}
	})

	t.Run("RestoresOnlyIntoAnEmptyStore", func(t *testing.T) {
		path, _ := saved(t, false)
		snap, _ := OpenSnapshot(path)
		dst := en.open(t, "etcd")
		mustApply(t, dst, physical.Op{Key: "vaults/mine", Value: []byte("x")})
		var ne *NotEmptyError
		if _, err := Copy(ctx, snap, dst, CopyOptions{Op: "restore"}); !errors.As(err, &ne) {
			t.Fatalf("restore into a non-empty store = %v, want a *NotEmptyError", err)
		}
		if got, _ := dst.Get(ctx, "vaults/mine"); string(got) != "x" {
			t.Fatal("the refused restore changed the store")
		}
	})

	t.Run("AnInterruptedRestoreResumes", func(t *testing.T) {
		path, _ := saved(t, false)
		snap, _ := OpenSnapshot(path)
		dst := en.open(t, "bolt")
		if _, err := Copy(ctx, snap, &crashAfter{Backend: dst, n: 2}, CopyOptions{Op: "restore", MaxBatchOps: 10}); !errors.Is(err, errCrash) {
			t.Fatal(err)
		}
		// Moved to another name, it is still the same snapshot.
		moved := filepath.Join(t.TempDir(), "moved.snap")
		os.Rename(path, moved)
		snap, _ = OpenSnapshot(moved)
		rep, err := Copy(ctx, snap, dst, CopyOptions{Op: "restore"})
		if err != nil || !rep.Resumed || !rep.Target.Same(snap.Header.Summary()) {
			t.Fatalf("resumed restore: %+v, %v", rep, err)
		}
	})

	t.Run("SaveRefuses", func(t *testing.T) {
		path, root := saved(t, false)
		src := inmem.New()
		fill(t, src, root, 3, 3)
		var ee *ExistsError
		if _, err := Save(ctx, src, path, SaveOptions{}); !errors.As(err, &ee) {
			t.Fatalf("Save over an existing file = %v, want an *ExistsError", err)
		}
		var mm *barrier.RootKeyMismatchError
		other := rootkey.Generate()
		if _, err := Save(ctx, src, path+".2", SaveOptions{Root: &other}); !errors.As(err, &mm) {
			t.Fatalf("Save with another root key = %v, want a *RootKeyMismatchError", err)
		}
		if _, err := Save(ctx, inmem.New(), path+".3", SaveOptions{}); !errors.Is(err, ErrEmptySource) {
			t.Fatalf("Save of an empty store = %v, want ErrEmptySource", err)
		}
		for _, p := range []string{path + ".2", path + ".3"} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("a refused save left %s behind", p)
			}
		}
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*partial*"))
		if len(left) > 0 {
			t.Fatalf("partial files left behind: %v", left)
		}
	})

	t.Run("RefusesANewerFormat", func(t *testing.T) {
		path, _ := saved(t, false)
		b, _ := os.ReadFile(path)
		os.WriteFile(path, editHeader(t, b, func(h *Header) { h.Format = 2 }), 0o600)
		if _, err := OpenSnapshot(path); err == nil || !strings.Contains(err.Error(), "format 2") {
			t.Fatalf("OpenSnapshot of format 2 = %v", err)
		}
	})
}

// editHeader rewrites a snapshot's header with edit.
func editHeader(t *testing.T, b []byte, edit func(*Header)) []byte {
	t.Helper()
	js, _, _ := bytes.Cut(b[len(snapshotMagic):headerBlock], []byte("\n"))
	var h Header
	if err := json.Unmarshal(js, &h); err != nil {
		t.Fatal(err)
	}
	edit(&h)
	block, err := encodeHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	return append(block, b[headerBlock:]...)
}

// bodyEntries decodes a snapshot's body.
func bodyEntries(t *testing.T, b []byte) []physical.Entry {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	os.WriteFile(p, b, 0o600)
	s, err := OpenSnapshot(p)
	if err != nil {
		t.Fatal(err)
	}
	var out []physical.Entry
	if err := s.Walk(context.Background(), func(e physical.Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// rewrite builds a snapshot of es under h's other fields, with a digest
// and counts that match: what someone who edits a file would make.
func rewrite(t *testing.T, b []byte, es []physical.Entry) []byte {
	t.Helper()
	d := newDigester()
	var body []byte
	for _, e := range es {
		d.add(e)
		body = Encode(body, e)
	}
	sum := d.summary()
	return append(editHeader(t, b, func(h *Header) {
		h.Entries, h.Bytes, h.Body, h.Digest = sum.Entries, sum.Bytes, int64(len(body)), sum.Digest
	})[:headerBlock], body...)
}

// dropOne drops a value (the second entry: the first is the keyring).
func dropOne(t *testing.T, b []byte) []byte {
	es := bodyEntries(t, b)
	return rewrite(t, b, append(es[:1], es[2:]...))
}

// swapLastTwo puts the last two entries out of key order, with a digest
// that matches, so that only the order gives it away.
func swapLastTwo(t *testing.T, b []byte) []byte {
	es := bodyEntries(t, b)
	n := len(es)
	es[n-1], es[n-2] = es[n-2], es[n-1]
	var body []byte
	for _, e := range es {
		body = Encode(body, e)
	}
	sum := sha256.Sum256(body)
	return append(editHeader(t, b, func(h *Header) { h.Digest = "sha256:" + hex.EncodeToString(sum[:]) })[:headerBlock], body...)
}
