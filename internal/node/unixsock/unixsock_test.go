package unixsock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "us")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "sub", "a.sock")
	ln, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close() // a stale socket stays behind, as after a crash
	ln, err = Listen("unix://" + sock)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	ln.Close()
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, []byte("keep"), 0o600)
	if _, err := Listen("unix://" + plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep" {
		t.Fatal("a regular file was removed")
	}
	for _, bad := range []string{"tcp://0.0.0.0:1", "unix://relative.sock", "/no/scheme.sock", "unix://"} {
		if _, err := Listen(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
