package providerclient

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// Every call through a provider's new connection waits for the provider
// to listen for pushes, not only the call that dialed it: concurrent
// first mounts would otherwise go ahead unwatched.
func TestCallsWaitForTheProviderToListen(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "p.sock")) // the socket file is what get looks for
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	listening := make(chan struct{})
	dials := 0
	p := New([]string{dir}, 1<<20)
	p.Dialed = func(string, *grpc.ClientConn) <-chan struct{} { dials++; return listening }
	p.ReadyWait = time.Minute
	defer p.Close()
	returned := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := p.Get("p")
			returned <- err
		}()
	}
	select {
	case <-returned:
		t.Fatal("a call went ahead before the provider listened")
	case <-time.After(100 * time.Millisecond):
	}
	close(listening)
	for range 3 {
		if err := <-returned; err != nil {
			t.Fatal(err)
		}
	}
	if dials != 1 {
		t.Fatalf("dialed %d times, want once", dials)
	}
	// Later calls do not wait.
	if _, err := p.Get("p"); err != nil {
		t.Fatal(err)
	}
}
