// Package atomicdir publishes a set of files into a directory so that a
// reader sees either the whole old set or the whole new set, never a mix:
// the kubelet's atomic-writer layout, which the Secrets Store CSI driver
// also uses.
//
// The directory holds one timestamped data directory per generation, a
// "..data" symlink naming the current one, and, for each top-level entry of
// the payload, a user-visible symlink "name" -> "..data/name". A new
// generation is written beside the old one and made current by renaming a
// fresh symlink over "..data", which is atomic.
package atomicdir

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File is one file of a payload.
type File struct {
	Path     string // relative, slash-separated
	Mode     fs.FileMode
	Contents []byte
}

const (
	dataLink    = "..data"
	newDataLink = "..data_tmp"
)

// ErrBadPath is returned, wrapped, for a payload path that could escape the
// directory or collide with the writer's own names.
var ErrBadPath = errors.New("invalid payload path")

// ValidatePath checks one payload path: relative, not empty, not ".", no
// ".." element, no leading "..", no NUL, no element over 255 bytes (the
// longest file name Linux allows), at most 4096 bytes, and clean.
func ValidatePath(p string) error {
	bad := func(why string) error { return fmt.Errorf("%w %q: %s", ErrBadPath, p, why) }
	switch {
	case p == "":
		return bad("empty")
	case p == ".":
		return bad("the directory itself")
	case len(p) > 4096:
		return bad("longer than 4096 bytes")
	case strings.ContainsRune(p, 0):
		return bad("contains NUL")
	case filepath.IsAbs(p) || strings.HasPrefix(p, "/"):
		return bad("absolute")
	case strings.HasPrefix(p, ".."):
		return bad(`starts with ".."`)
	case slices.Contains(strings.Split(p, "/"), ".."):
		return bad(`has a ".." element`)
	case filepath.ToSlash(filepath.Clean(p)) != p:
		return bad("not clean (a trailing slash, an empty or '.' element)")
	case slices.ContainsFunc(strings.Split(p, "/"), func(e string) bool { return len(e) > maxNameBytes }):
		return bad(fmt.Sprintf("has an element longer than %d bytes", maxNameBytes))
	}
	return nil
}

// The kernel's limits on a file name and on a whole path (Linux NAME_MAX
// and PATH_MAX, the latter counting the terminating NUL).
const (
	maxNameBytes = 255
	maxPathBytes = 4095
)

// genNameBytes bounds the name of a generation directory: the timestamp
// prefix Write uses and MkdirTemp's random suffix.
const genNameBytes = len("..2006_01_02_15_04_05.") + 20

// fits reports whether every file of files can be opened under a new
// generation in dir: a path the kernel cannot take fails with
// ENAMETOOLONG halfway through a write otherwise.
func fits(dir string, files []File) error {
	for _, f := range files {
		if n := len(dir) + 1 + genNameBytes + 1 + len(f.Path); n > maxPathBytes {
			return fmt.Errorf("%w %.64q...: %d bytes long under %s, over the kernel's %d-byte path limit", ErrBadPath, f.Path, len(f.Path), dir, maxPathBytes)
		}
	}
	return nil
}

// Validate checks every path of a payload, and that no file is also
// another's directory.
func Validate(files []File) error {
	seen := map[string]bool{}
	for _, f := range files {
		if err := ValidatePath(f.Path); err != nil {
			return err
		}
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("%w %q: mode %o has bits beyond the permission bits", ErrBadPath, f.Path, f.Mode)
		}
		if seen[f.Path] {
			return fmt.Errorf("%w %q: given twice", ErrBadPath, f.Path)
		}
		seen[f.Path] = true
	}
	for _, f := range files {
		for dir := filepath.Dir(f.Path); dir != "."; dir = filepath.Dir(dir) {
			if seen[filepath.ToSlash(dir)] {
				return fmt.Errorf("%w %q: %q is both a file and its directory", ErrBadPath, f.Path, dir)
			}
		}
	}
	return nil
}

// Write publishes files as the directory's new content and reports whether
// anything changed; an identical payload (paths, modes and bytes) writes
// nothing. The steps:
//
//  1. Validate the payload, and check that every path fits under dir.
//  2. Read the current generation through "..data", refusing a link that
//     is not to a generation of this directory (a planted "..data" would
//     otherwise be read, then removed, wherever it points); if it equals
//     the payload, stop.
//  3. Write the payload into a new timestamped directory, creating
//     subdirectories, and chmod each file explicitly (the umask must not
//     decide a secret file's mode).
//  4. Point a new symlink "..data_tmp" at it and rename it over "..data":
//     readers switch generations atomically.
//  5. Create the user-visible symlink of each new top-level entry.
//  6. Remove user-visible symlinks the payload no longer has.
//  7. Remove the old generation.
func Write(dir string, files []File) (changed bool, err error) {
	// 1.
	if err := Validate(files); err != nil {
		return false, err
	}
	if err := fits(dir, files); err != nil {
		return false, err
	}
	// 2.
	old, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", dataLink, err)
	}
	if old != "" && !generationName(old) {
		return false, fmt.Errorf("%w: %s points to %q, not to a data directory of %s; refusing to read or remove it", ErrForeignLink, dataLink, old, dir)
	}
	if old != "" && same(filepath.Join(dir, old), files) {
		return false, nil
	}
	// 3.
	gen, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return false, fmt.Errorf("create a data directory: %w", err)
	}
	if err := os.Chmod(gen, 0o755); err != nil {
		os.RemoveAll(gen)
		return false, err
	}
	for _, f := range files {
		if err := writeFile(gen, f); err != nil {
			os.RemoveAll(gen)
			return false, err
		}
	}
	// 4.
	tmp := filepath.Join(dir, newDataLink)
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		os.RemoveAll(gen)
		return false, fmt.Errorf("create %s: %w", newDataLink, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		os.Remove(tmp)
		os.RemoveAll(gen)
		return false, fmt.Errorf("swap %s: %w", dataLink, err)
	}
	// 5.
	want := map[string]bool{}
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		want[top] = true
	}
	for top := range want {
		link := filepath.Join(dir, top)
		if old != "" { // on a first write, no link can exist yet
			if target, err := os.Readlink(link); err == nil && target == filepath.Join(dataLink, top) {
				continue
			}
			os.Remove(link)
		}
		if err := os.Symlink(filepath.Join(dataLink, top), link); err != nil {
			return true, fmt.Errorf("create the symlink %s: %w", top, err)
		}
	}
	if old == "" {
		return true, nil
	}
	// 6.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true, err
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") || want[name] || e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return true, err
		}
	}
	// 7.
	if old != "" && old != filepath.Base(gen) {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			return true, err
		}
	}
	return true, nil
}

// ErrForeignLink is returned, wrapped, when the directory's "..data" link
// was not made by Write.
var ErrForeignLink = errors.New("foreign data link")

// generationName reports whether name is one element of the form step 3
// creates: "..", then a timestamp, never ".." itself or the links' names.
func generationName(name string) bool {
	return strings.HasPrefix(name, "..") && len(name) > len("..") && !strings.ContainsAny(name, `/\`) &&
		name != dataLink && name != newDataLink && name[2] >= '0' && name[2] <= '9'
}

func writeFile(gen string, f File) error {
	p := filepath.Join(gen, filepath.FromSlash(f.Path))
	if strings.Contains(f.Path, "/") {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = fh.Write(f.Contents)
	if err == nil {
		err = fh.Chmod(f.Mode) // on the descriptor: no second path walk
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// same reports whether generation dir holds exactly files.
func same(gen string, files []File) bool {
	n := 0
	err := filepath.WalkDir(gen, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil || n != len(files) {
		return false
	}
	for _, f := range files {
		p := filepath.Join(gen, filepath.FromSlash(f.Path))
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode {
			return false
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, f.Contents) {
			return false
		}
	}
	return true
}

// Current reads the directory's current generation back as a payload,
// sorted by path; an empty directory gives none.
func Current(dir string) ([]File, error) {
	gen, err := os.Readlink(filepath.Join(dir, dataLink))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, gen)
	var out []File
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, File{Path: filepath.ToSlash(rel), Mode: fi.Mode().Perm(), Contents: b})
		return nil
	})
	// A walk is in order of each directory's names, which is not path
	// order: "cert/b" comes before "cert a.crt" though ' ' sorts before '/'.
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out, err
}
