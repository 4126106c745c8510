package server

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// At the cap, a new connection is closed at once (Accept does not block
// the others), and a place comes back when a connection closes.
func TestCapListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newCapListener(inner, 2, slog.New(slog.DiscardHandler))
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	first := <-accepted
	<-accepted
	over := dial()
	over.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a connection past the cap: read %v, want it closed (EOF)", err)
	}
	if l.Open() != 2 || l.Refused() != 1 {
		t.Fatalf("open %d refused %d, want 2 and 1", l.Open(), l.Refused())
	}
	first.Close()
	first.Close() // a second Close gives nothing back twice
	if l.Open() != 1 {
		t.Fatalf("open %d after a close, want 1", l.Open())
	}
	dial()
	select {
	case <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("no connection accepted once a place came back")
	}
}
