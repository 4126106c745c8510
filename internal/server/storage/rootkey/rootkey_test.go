package rootkey

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRoundTripAndErrorsHideInput(t *testing.T) {
	k := Generate()
	got, err := Parse(k.Encode() + "\n")
	if err != nil || got != k {
		t.Fatalf("Parse(Encode) = %v, %v", got, err)
	}
	secret := "c2VjcmV0LW5vdC1hLWtleQ=="
	_, err = Parse(secret)
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("Parse(short) = %v; want an error that does not echo the input", err)
	}
	if _, err := Parse("!!!"); err == nil {
		t.Fatal("Parse(not base64) succeeded")
	}
}

func TestFormattingNeverShowsKey(t *testing.T) {
	k := Generate()
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
		if strings.Contains(s, k.Encode()) || !strings.Contains(s, k.ID()) {
			t.Fatalf("formatted key %q shows key bytes or hides the ID", s)
		}
	}
}

func TestReadFileRefusesGroupReadable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "root.key")
	if err := os.WriteFile(p, []byte(Generate().Encode()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("ReadFile(0644) = %v, want a chmod hint", err)
	}
}

func TestLoadFinishesInterruptedRotation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "root.key")
	old, next := Generate(), Generate()
	if err := WriteFile(p, old); err != nil {
		t.Fatal(err)
	}
	src := Source{Path: p}
	if err := src.Stage(next); err != nil {
		t.Fatal(err)
	}
	// The store was re-wrapped with next, then the process died before Commit.
	k, _, err := Load(p, next.ID())
	if err != nil || k != next {
		t.Fatalf("Load = %v, %v; want the staged key", k, err)
	}
	if onDisk, _ := ReadFile(p); onDisk != next {
		t.Fatal("Load did not move the staged key into place")
	}
	// The store still matches the old key: the staged file must be ignored.
	p2 := filepath.Join(t.TempDir(), "root.key")
	WriteFile(p2, old)
	Source{Path: p2}.Stage(next)
	if k, _, _ := Load(p2, old.ID()); k != old {
		t.Fatal("Load preferred a staged key the store was never re-wrapped with")
	}
}

func TestLoadFromEnv(t *testing.T) {
	k := Generate()
	t.Setenv(EnvVar, k.Encode())
	got, src, err := Load("", "")
	if err != nil || got != k || !src.FromEnv() {
		t.Fatalf("Load from env = %v, %v, %v", got, src, err)
	}
	t.Setenv(EnvVar, "")
	if _, _, err := Load("", ""); err != ErrMissing {
		t.Fatalf("Load with nothing = %v, want ErrMissing", err)
	}
}

func TestStagedForReadsButNeverMoves(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "root.key")
	cur, next := Generate(), Generate()
	if err := WriteFile(path, cur); err != nil {
		t.Fatal(err)
	}
	if _, ok := StagedFor(path, next.ID()); ok {
		t.Fatal("StagedFor found a key with nothing staged")
	}
	if err := WriteFile(pendingPath(path), next); err != nil {
		t.Fatal(err)
	}
	if _, ok := StagedFor(path, Generate().ID()); ok {
		t.Fatal("StagedFor returned a staged key that did not seal the store")
	}
	got, ok := StagedFor(path, next.ID())
	if !ok || got.ID() != next.ID() {
		t.Fatalf("StagedFor = %v, %v; want the staged key", got, ok)
	}
	if k, err := ReadFile(path); err != nil || k.ID() != cur.ID() {
		t.Fatalf("the key file changed: %v, %v", k, err)
	}
	if _, err := ReadFile(pendingPath(path)); err != nil {
		t.Fatalf("the staged file moved: %v", err)
	}
}
