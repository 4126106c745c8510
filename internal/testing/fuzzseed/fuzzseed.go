// Package fuzzseed writes the seed corpora of Coffer's fuzz targets: the
// files under a package's testdata/fuzz/FuzzXxx/ that `go test` replays as
// regular test cases and that `go test -fuzz` starts mutating from.
//
// Seeds are built in code, from real requests and real key material, so
// that they can be regenerated when a wire format changes:
//
//	scripts/fuzz.sh --update-seeds
//
// (which runs go test -run TestSeedCorpus PKG -args -update-seeds in every
// package with fuzz targets).
// Files whose names start with "seed-" belong to the generator; any other
// file (a crash the fuzzer found, kept as a regression case) is never
// touched by it.
package fuzzseed

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update-seeds", false, "rewrite the generated seed corpora under testdata/fuzz")

// Prefix starts the name of every generated seed file.
const Prefix = "seed-"

// Seed is one corpus entry: the arguments of the fuzz function after its
// *testing.T, in order.
type Seed struct {
	Name string
	Args []any
}

// S is a Seed.
func S(name string, args ...any) Seed { return Seed{Name: name, Args: args} }

// Corpus keeps the seed corpus of target (a fuzz function's name) in the
// calling package's testdata/fuzz/target. With -update-seeds it calls
// build and rewrites the generated files; otherwise it checks that the
// corpus is there, since a fuzz target without it replays nothing in
// `make test`.
func Corpus(t *testing.T, target string, build func(t *testing.T) []Seed) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if !*update {
		entries, err := os.ReadDir(dir)
		n := 0
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), Prefix) {
				n++
			}
		}
		if err != nil || n == 0 {
			t.Fatalf("%s has no generated seeds (%v): run go test -run %s -args -update-seeds", dir, err, t.Name())
		}
		return
	}
	seeds := build(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, Prefix+"*"))
	var names []string
	for _, s := range seeds {
		if slices.Contains(names, s.Name) {
			t.Fatalf("seed %s of %s is given twice", s.Name, target)
		}
		names = append(names, s.Name)
		b, err := Encode(s.Args...)
		if err != nil {
			t.Fatalf("seed %s: %v", s.Name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, Prefix+s.Name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range old {
		if !slices.Contains(names, strings.TrimPrefix(filepath.Base(p), Prefix)) {
			os.Remove(p)
		}
	}
	t.Logf("wrote %d seeds to %s", len(seeds), dir)
}

// Encode renders args in the "go test fuzz v1" corpus format.
func Encode(args ...any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case byte:
			fmt.Fprintf(&b, "byte(%q)\n", v)
		case int, int64, uint16, uint32, uint64, bool:
			fmt.Fprintf(&b, "%T(%v)\n", v, v)
		default:
			return nil, fmt.Errorf("fuzzseed: unsupported argument type %T", a)
		}
	}
	return b.Bytes(), nil
}
