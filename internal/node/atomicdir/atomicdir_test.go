package atomicdir

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteSwapsGenerations(t *testing.T) {
	old := syscall.Umask(0o077) // modes must not depend on the umask
	defer syscall.Umask(old)
	dir := t.TempDir()
	v1 := []File{{Path: "a", Mode: 0o644, Contents: []byte("a1")}, {Path: "hist/0", Mode: 0o600, Contents: []byte("h1")}, {Path: "gone", Mode: 0o444, Contents: []byte("g")}}
	if changed, err := Write(dir, v1); err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if read(t, filepath.Join(dir, "a")) != "a1" || read(t, filepath.Join(dir, "hist", "0")) != "h1" {
		t.Fatal("content")
	}
	for p, mode := range map[string]fs.FileMode{"a": 0o644, "hist/0": 0o600, "gone": 0o444} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: mode %v, want %v (%v)", p, fi.Mode().Perm(), mode, err)
		}
	}
	gen1, _ := os.Readlink(filepath.Join(dir, "..data"))

	// The same payload writes nothing.
	if changed, err := Write(dir, v1); err != nil || changed {
		t.Fatalf("identical write: %v %v", changed, err)
	}
	if gen, _ := os.Readlink(filepath.Join(dir, "..data")); gen != gen1 {
		t.Fatal("an identical payload made a new generation")
	}
	// A changed mode alone is a change.
	v1[0].Mode = 0o640
	if changed, _ := Write(dir, v1); !changed {
		t.Fatal("a mode change was not written")
	}

	v2 := []File{{Path: "a", Mode: 0o644, Contents: []byte("a2")}, {Path: "hist/0", Mode: 0o600, Contents: []byte("h2")}, {Path: "hist/1", Mode: 0o600, Contents: []byte("h1")}}
	if changed, err := Write(dir, v2); err != nil || !changed {
		t.Fatalf("second write: %v %v", changed, err)
	}
	if read(t, filepath.Join(dir, "a")) != "a2" || read(t, filepath.Join(dir, "hist", "1")) != "h1" {
		t.Fatal("content after the swap")
	}
	if _, err := os.Lstat(filepath.Join(dir, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a file the new payload lacks is still visible")
	}
	entries, _ := os.ReadDir(dir)
	gens := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") && e.IsDir() {
			gens++
		}
	}
	if gens != 1 {
		t.Fatalf("%d generations left, want 1", gens)
	}
	cur, err := Current(dir)
	if err != nil || len(cur) != 3 || cur[0].Path != "a" || string(cur[0].Contents) != "a2" {
		t.Fatalf("Current = %+v, %v", cur, err)
	}
}

func TestValidateRefusesEscapes(t *testing.T) {
	for _, p := range []string{"", "/etc/passwd", "../../etc/passwd", "a/../../b", "..data", "..hidden", "a//b", "a/", "./a", "a/./b", "a\x00b", strings.Repeat("a", 4097)} {
		if err := ValidatePath(p); !errors.Is(err, ErrBadPath) {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"a", "SECRET_1", "dir/file.pem", "a..b", "x/y/z"} {
		if err := ValidatePath(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for label, files := range map[string][]File{
		"duplicate":      {{Path: "a"}, {Path: "a"}},
		"file and dir":   {{Path: "a"}, {Path: "a/b"}},
		"setuid":         {{Path: "a", Mode: fs.ModeSetuid | 0o755}},
		"escape in list": {{Path: "ok"}, {Path: "../x"}},
	} {
		if err := Validate(files); !errors.Is(err, ErrBadPath) {
			t.Errorf("%s: %v", label, err)
		}
	}
	// A refused payload leaves the directory as it was.
	dir := t.TempDir()
	Write(dir, []File{{Path: "a", Mode: 0o644, Contents: []byte("1")}})
	if _, err := Write(dir, []File{{Path: "a", Mode: 0o644, Contents: []byte("2")}, {Path: "../../etc/passwd", Mode: 0o644}}); err == nil {
		t.Fatal("an escaping path was written")
	}
	if read(t, filepath.Join(dir, "a")) != "1" {
		t.Fatal("a refused payload changed the directory")
	}
}

// A reader that resolves ..data once sees one whole generation: both files
// of the same write, each complete.
func TestReadersNeverSeeAMix(t *testing.T) {
	dir := t.TempDir()
	payload := func(i int) []File {
		big := bytes.Repeat([]byte(fmt.Sprint(i%10)), 64<<10)
		return []File{{Path: "a", Mode: 0o644, Contents: big}, {Path: "b", Mode: 0o644, Contents: []byte(fmt.Sprint(i))}}
	}
	Write(dir, payload(0))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan error, 1)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				gen, err := os.Readlink(filepath.Join(dir, "..data"))
				if err != nil {
					continue
				}
				a, errA := os.ReadFile(filepath.Join(dir, gen, "a"))
				b, errB := os.ReadFile(filepath.Join(dir, gen, "b"))
				if errA != nil || errB != nil {
					continue // the generation was removed under us; a real reader retries
				}
				want := bytes.Repeat([]byte(string(b[len(b)-1:])), 64<<10)
				if !bytes.Equal(a, want) {
					select {
					case errs <- fmt.Errorf("generation %s: a does not match b=%s", gen, b):
					default:
					}
					return
				}
				reads.Add(1)
			}
		}()
	}
	// At least 200 writes, and on until the readers have read during them:
	// on a busy machine they may get no CPU for a while.
	for i := 1; i <= 200 || (reads.Load() < 100 && i <= 100_000); i++ {
		if _, err := Write(dir, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if reads.Load() == 0 {
		t.Fatal("no read completed; the test proves nothing")
	}
}
