// Package rootkey loads, generates and safely replaces the root key that wraps
// the barrier's data keys.
//
// The key is 32 random bytes, written as one line of standard base64. It is
// read from a file (--root-key-file) or from the COFFER_ROOT_KEY variable.
package rootkey

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvVar is the environment variable that may carry the root key.
const EnvVar = "COFFER_ROOT_KEY"

// Size is the root key's length in bytes (AES-256).
const Size = 32

// Key is a root key. Its String and GoString methods print only its ID, so a
// key that reaches a log line or a panic never shows its bytes.
type Key struct{ b [Size]byte }

// ErrMissing means neither a root key file nor COFFER_ROOT_KEY was given.
var ErrMissing = errors.New("no root key: pass --root-key-file FILE or set " + EnvVar + " (32 random bytes, base64; `coffer operator generate-root-key` prints one)")

// Generate returns a new random key.
func Generate() Key {
	var k Key
	if _, err := rand.Read(k.b[:]); err != nil {
		panic("rootkey: crypto/rand failed: " + err.Error())
	}
	return k
}

// Parse decodes a base64 key. The error never contains the input.
func Parse(text string) (Key, error) {
	var k Key
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return k, errors.New("root key is not valid base64")
	}
	if len(raw) != Size {
		return k, fmt.Errorf("root key decodes to %d bytes, want %d", len(raw), Size)
	}
	copy(k.b[:], raw)
	clear(raw)
	return k, nil
}

// Bytes returns a copy of the key material.
func (k Key) Bytes() []byte { return append([]byte(nil), k.b[:]...) }

// Encode returns the key as base64, for writing it to a file.
func (k Key) Encode() string { return base64.StdEncoding.EncodeToString(k.b[:]) }

// ID is a short public fingerprint that tells keys apart without revealing them.
func (k Key) ID() string {
	m := hmac.New(sha256.New, k.b[:])
	m.Write([]byte("coffer root key id v1"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// IsZero reports whether k is the zero value (no key loaded).
func (k Key) IsZero() bool { return k.b == [Size]byte{} }

// String prints the key's ID only.
func (k Key) String() string { return "rootkey:" + k.ID() }

// GoString prints the key's ID only.
func (k Key) GoString() string { return k.String() }

// ReadFile reads a key file. It refuses files that other users can read.
func ReadFile(path string) (Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Key{}, fmt.Errorf("root key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Key{}, fmt.Errorf("root key file %s has mode %v: other users can read it; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("root key file: %w", err)
	}
	k, err := Parse(string(data))
	if err != nil {
		return Key{}, fmt.Errorf("root key file %s: %w", path, err)
	}
	return k, nil
}

// WriteFile durably writes k to path with mode 0600: a temporary file is
// written and synced, renamed into place, and the directory is synced.
func WriteFile(path string, k Key) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".rootkey-*")
	if err != nil {
		return fmt.Errorf("write root key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write root key: %w", err)
	}
	if _, err := tmp.WriteString(k.Encode() + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write root key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write root key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write root key: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write root key: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Source says where the root key came from, and so how a rotation must
// persist the new key.
type Source struct {
	// Path is the key file, or empty when the key came from the environment.
	Path string
}

// FromEnv reports whether the key came from COFFER_ROOT_KEY.
func (s Source) FromEnv() bool { return s.Path == "" }

// pendingPath is where a rotation stages the new key before the store is
// re-wrapped; see Resolve.
func pendingPath(path string) string { return path + ".new" }

// Load returns the root key from path if set, else from COFFER_ROOT_KEY.
// storeKeyID is the ID of the key that sealed the store ("" for a new store).
// If the key file does not match but a staged rotation (path.new) does, the
// rotation was interrupted after the store was re-wrapped: Load finishes it
// by moving the staged key into place.
func Load(path string, storeKeyID string) (Key, Source, error) {
	if path == "" {
		env := os.Getenv(EnvVar)
		if env == "" {
			return Key{}, Source{}, ErrMissing
		}
		k, err := Parse(env)
		if err != nil {
			return Key{}, Source{}, fmt.Errorf("%s: %w", EnvVar, err)
		}
		return k, Source{}, nil
	}
	k, err := ReadFile(path)
	if err != nil {
		return Key{}, Source{}, err
	}
	if k.ID() != storeKeyID {
		if next, ok := StagedFor(path, storeKeyID); ok {
			if err := os.Rename(pendingPath(path), path); err != nil {
				return Key{}, Source{}, fmt.Errorf("finish interrupted root key rotation: %w", err)
			}
			if err := syncDir(filepath.Dir(path)); err != nil {
				return Key{}, Source{}, fmt.Errorf("finish interrupted root key rotation: %w", err)
			}
			return next, Source{Path: path}, nil
		}
	}
	return k, Source{Path: path}, nil
}

// StagedFor returns the key staged at path.new when it is the one that
// sealed the store (storeKeyID) and the key file is not: a rotation that was
// interrupted after the store was re-wrapped. Unlike Load it moves nothing,
// so read-only tools can open such a store; the next server start finishes
// the rotation.
func StagedFor(path string, storeKeyID string) (Key, bool) {
	if path == "" || storeKeyID == "" {
		return Key{}, false
	}
	next, err := ReadFile(pendingPath(path))
	if err != nil || next.ID() != storeKeyID {
		return Key{}, false
	}
	return next, true
}

// Candidates are the keys the file holds now, read again: the staged next
// key (a rotation under way, on this replica or, through a shared Secret,
// on another) and the current one. Unreadable files are left out.
func (s Source) Candidates() []Key {
	if s.FromEnv() {
		return nil
	}
	var out []Key
	for _, p := range []string{pendingPath(s.Path), s.Path} {
		if k, err := ReadFile(p); err == nil {
			out = append(out, k)
		}
	}
	return out
}

// Stage durably writes the next key beside the current key file. It is the
// first step of a rotation; Commit is the last.
func (s Source) Stage(next Key) error {
	if s.FromEnv() {
		return errors.New("the root key came from " + EnvVar + ": there is no file to stage a new key in")
	}
	return WriteFile(pendingPath(s.Path), next)
}

// Commit moves the staged key into place once the store is re-wrapped with it.
func (s Source) Commit() error {
	if err := os.Rename(pendingPath(s.Path), s.Path); err != nil {
		return fmt.Errorf("install new root key: %w", err)
	}
	return syncDir(filepath.Dir(s.Path))
}
