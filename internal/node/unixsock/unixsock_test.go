package unixsock

import (
	"errors"
	"net"
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
	ln, err := Listen("unix://"+sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close() // a stale socket stays behind, as after a crash
	ln, err = Listen("unix://"+sock, 0)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	ln.Close()
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, []byte("keep"), 0o600)
	if _, err := Listen("unix://"+plain, 0); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep" {
		t.Fatal("a regular file was removed")
	}
	for _, bad := range []string{"tcp://0.0.0.0:1", "unix://relative.sock", "/no/scheme.sock", "unix://", "unix:///"} {
		if _, err := Listen(bad, 0); !errors.Is(err, ErrEndpoint) {
			t.Errorf("%q: %v, want ErrEndpoint", bad, err)
		}
	}
}

// TestListenMode checks that a socket with a mode has it as soon as it
// exists under its name, accepts connections there, and is gone after
// Close, with no temporary name left behind.
func TestListenMode(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	ln, err := Listen("unix://"+sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("mode %v, want a socket with 0600", fi.Mode())
	}
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ln.Close()
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("left behind after Close: %v", entries)
	}
}
