package physicaltest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// KeySeeds are scripts for FuzzKeys in the store's real key shapes; each
// engine's seed corpus is made of them (see Seeds). A script is one step per line:
//
//	P key            put key (the value is derived from the key)
//	C key            put key if it is absent
//	D key            delete key
//	G key            get key
//	S prefix	after	limit   scan
//
// Writes up to the next read form one atomic batch. A key written as a Go
// quoted string ("o/a\x00b") is unquoted, so any byte can be in one.
var KeySeeds = map[string]string{
	"object-keys": "P o/demo/secrets/h/db-password\nP o/demo/secrets/v/db-password/3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8\nP o/demo/secrets/v/db-password/0b1c2d3e4f5a6b7c83f2a9c1d8e7b4a60\n" +
		"P o/demo/secrets/d/old-token\nP o/demo/keys/h/signing\nG o/demo/secrets/h/db-password\nS o/demo/secrets/v/db-password/\t\t1\nS o/demo/secrets/v/db-password/\to/demo/secrets/v/db-password/0b1c2d3e4f5a6b7c83f2a9c1d8e7b4a60\t0\n" +
		"S o/demo/\t\t0\nD o/demo/secrets/h/db-password\nG o/demo/secrets/h/db-password\nS o/\t\t2",
	"server-keys": "P vaults/demo\nP vaults/prod-eu\nC authority/tenants/72f988bf-86f1-41af-91ab-2d7cd011db47\nC authority/tenants/72f988bf-86f1-41af-91ab-2d7cd011db47\n" +
		"P authority/replay/9b74c9897bac770ffc029102a200c5de3b2d6f0e\nP rbac/72f988bf-86f1-41af-91ab-2d7cd011db47/8e3af657-a8ff-443c-a75c-2fe8c4bcb635\nP certops/demo/web-tls\nP bootstrap/state\n" +
		"S vaults/\t\t0\nS authority/\tauthority/replay/\t0\nS \t\t0",
	"prefix-edges": "P a\nP a/\nP a/b\nP a0\nP a\x7f\nP a/\xc3\xa9\nS a\t\t0\nS a/\ta/\t0\nS a/\t\t1\nS a\ta\t2\nG a/",
	"odd-bytes":    "P \"o/x\\x00y\"\nP \"o/x\\ny\"\nP \"\\xff\\xfe\"\nP \"o/\\u00e9t\\u00e9\"\nP o/ spaced key\nG \"o/x\\x00y\"\nS o/\t\t0\nS \"o/x\\x00\"\t\t0\nD \"o/x\\ny\"\nS o/x\t\t0",
	"empty-key":    "P \nG \nS \t\t0\nP \"\"",
	"cas":          "C o/demo/secrets/h/a\nC o/demo/secrets/h/a\nP o/demo/secrets/h/b\nC o/demo/secrets/h/b\nD o/demo/secrets/h/a\nC o/demo/secrets/h/a\nG o/demo/secrets/h/a",
	"long-key":     "P o/demo/secrets/h/" + strings.Repeat("n", 4100) + "\nP o/demo/secrets/h/" + strings.Repeat("k", 200) + "\nS o/demo/secrets/h/\t\t0",
	"limit-key":    "P " + strings.Repeat("k", physical.MaxKeyBytes) + "\nG " + strings.Repeat("k", physical.MaxKeyBytes) + "\nP " + strings.Repeat("k", physical.MaxKeyBytes+1) + "\nS k\t\t0",
}

// Seeds returns KeySeeds as a seed corpus, for fuzzseed.Corpus.
func Seeds(*testing.T) []fuzzseed.Seed {
	var out []fuzzseed.Seed
	for name, script := range KeySeeds {
		out = append(out, fuzzseed.S(name, script))
	}
	return out
}

type step struct {
	op    byte
	key   string
	after string
	limit int
}

// parseScript reads a script; lines it cannot read are skipped.
func parseScript(s string) []step {
	var out []step
	for _, line := range strings.Split(s, "\n") {
		if len(line) < 2 || line[1] != ' ' {
			continue
		}
		st := step{op: line[0]}
		rest := line[2:]
		if st.op == 'S' {
			f := strings.SplitN(rest, "\t", 3)
			for len(f) < 3 {
				f = append(f, "")
			}
			st.key, st.after = unquote(f[0]), unquote(f[1])
			st.limit, _ = strconv.Atoi(f[2])
		} else {
			st.key = unquote(rest)
		}
		out = append(out, st)
	}
	return out
}

func unquote(s string) string {
	if strings.HasPrefix(s, `"`) {
		if u, err := strconv.Unquote(s); err == nil {
			return u
		}
	}
	return s
}

// FuzzKeys runs arbitrary scripts against a backend and a model of the
// Backend contract (a sorted map), and fails where they disagree: every
// non-empty key is stored and read back byte for byte, scans return
// exactly the model's keys in bytewise order, an empty or oversized key
// (over physical.MaxKeyBytes) fails its batch with physical.ErrInvalidKey
// and writes nothing, and conditions hold atomically for the whole batch.
//
// open is called once; the backend is emptied before each script.
func FuzzKeys(f *testing.F, open func(t testing.TB) physical.Backend) {
	b := open(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, script string) {
		steps := parseScript(script)
		if len(steps) > 64 {
			steps = steps[:64]
		}
		clearAll(t, b)
		model := map[string][]byte{}
		var conds []physical.Cond
		var ops []physical.Op
		flush := func() {
			if len(ops) == 0 && len(conds) == 0 {
				return
			}
			defer func() { conds, ops = nil, nil }()
			err := b.Apply(ctx, conds, ops)
			wantErr := modelApply(model, conds, ops)
			switch {
			case wantErr == nil && err != nil:
				t.Fatalf("Apply(%s) = %v; the model accepts it", describe(conds, ops), err)
			case wantErr != nil && err == nil:
				t.Fatalf("Apply(%s) succeeded; want %v", describe(conds, ops), wantErr)
			case wantErr != nil && !errors.Is(err, wantErr):
				t.Fatalf("Apply(%s) = %v; want an error matching %v", describe(conds, ops), err, wantErr)
			}
		}
		for _, s := range steps {
			switch s.op {
			case 'P':
				ops = append(ops, physical.Op{Key: s.key, Value: []byte("v=" + s.key)})
			case 'C':
				conds = append(conds, physical.Cond{Key: s.key})
				ops = append(ops, physical.Op{Key: s.key, Value: []byte("c=" + s.key)})
			case 'D':
				ops = append(ops, physical.Op{Key: s.key, Delete: true})
			case 'G':
				flush()
				got, err := b.Get(ctx, s.key)
				want, ok := model[s.key]
				switch {
				case ok && (err != nil || !bytes.Equal(got, want)):
					t.Fatalf("Get(%.80q) = %.80q, %v; want %.80q", s.key, got, err, want)
				case !ok && physical.ValidateKey(s.key) != nil && !errors.Is(err, physical.ErrNotFound) && !errors.Is(err, physical.ErrInvalidKey):
					// No such key can be stored: either answer is right.
					t.Fatalf("Get(%.80q) = %.80q, %v; want ErrNotFound or ErrInvalidKey", s.key, got, err)
				case !ok && physical.ValidateKey(s.key) == nil && !errors.Is(err, physical.ErrNotFound):
					t.Fatalf("Get(%.80q) = %.80q, %v; want ErrNotFound", s.key, got, err)
				}
			case 'S':
				flush()
				got, err := b.Scan(ctx, s.key, s.after, s.limit)
				if err != nil {
					t.Fatalf("Scan(%.80q, %.80q, %d) = %v", s.key, s.after, s.limit, err)
				}
				want := modelScan(model, s.key, s.after, s.limit)
				if len(got) != len(want) {
					t.Fatalf("Scan(%.80q, %.80q, %d) = %d entries, want %d", s.key, s.after, s.limit, len(got), len(want))
				}
				for i := range got {
					if got[i].Key != want[i] || !bytes.Equal(got[i].Value, model[want[i]]) {
						t.Fatalf("Scan(%.80q, %.80q, %d)[%d] = %.80q, want %.80q", s.key, s.after, s.limit, i, got[i].Key, want[i])
					}
				}
			}
		}
		flush()
		// Whatever the script did, the store holds exactly the model.
		all, err := b.Scan(ctx, "", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != len(model) {
			t.Fatalf("the store holds %d keys, the model %d", len(all), len(model))
		}
	})
}

// modelApply applies a batch to the model as the contract says, or
// returns the error the batch must fail with.
func modelApply(model map[string][]byte, conds []physical.Cond, ops []physical.Op) error {
	for _, c := range conds {
		if err := physical.ValidateKey(c.Key); err != nil {
			return physical.ErrInvalidKey
		}
	}
	for _, o := range ops {
		if err := physical.ValidateKey(o.Key); err != nil {
			return physical.ErrInvalidKey
		}
	}
	for _, c := range conds {
		cur, ok := model[c.Key]
		if (c.Value == nil) == ok || !bytes.Equal(cur, c.Value) {
			return physical.ErrConflict
		}
	}
	for _, o := range ops {
		if o.Delete {
			delete(model, o.Key)
		} else {
			model[o.Key] = bytes.Clone(o.Value)
		}
	}
	return nil
}

func modelScan(model map[string][]byte, prefix, after string, limit int) []string {
	var keys []string
	for k := range model {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
	}
	return keys
}

func clearAll(t *testing.T, b physical.Backend) {
	ctx := context.Background()
	all, err := b.Scan(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 {
		return
	}
	ops := make([]physical.Op, len(all))
	for i, e := range all {
		ops[i] = physical.Op{Key: e.Key, Delete: true}
	}
	if err := b.Apply(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
}

func describe(conds []physical.Cond, ops []physical.Op) string {
	var b strings.Builder
	for _, c := range conds {
		fmt.Fprintf(&b, "if-absent %.60q; ", c.Key)
	}
	for _, o := range ops {
		if o.Delete {
			fmt.Fprintf(&b, "delete %.60q (%d bytes); ", o.Key, len(o.Key))
		} else {
			fmt.Fprintf(&b, "put %.60q (%d bytes); ", o.Key, len(o.Key))
		}
	}
	return b.String()
}
