package ha

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

// cutter is a proxy between one replica and etcd that can be cut: while
// cut it blackholes every byte both ways, as a partitioned network does
// (nothing is refused, nothing arrives); when mended it drops the
// connections it held, and the replica reconnects.
type cutter struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	dir, err := os.MkdirTemp("", "cut")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "etcd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: strings.TrimPrefix(target, "unix://"), conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); c.mend(); os.RemoveAll(dir) })
	go c.serve()
	return c
}

func (c *cutter) endpoint() string { return "unix://" + c.ln.Addr().String() }

func (c *cutter) serve() {
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("unix", c.target)
		if err != nil {
			in.Close()
			continue
		}
		c.mu.Lock()
		c.conns[in], c.conns[out] = true, true
		c.mu.Unlock()
		go c.pipe(in, out)
		go c.pipe(out, in)
	}
}

// pipe copies src to dst, dropping what it reads while cut.
func (c *cutter) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// mend ends the cut and drops every connection made through it.
func (c *cutter) mend() {
	c.cut.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		conn.Close()
		delete(c.conns, conn)
	}
}

// TestPartitionedReplicaRefusesAndRecovers cuts one replica off from etcd:
// within 5 s it answers 503 in Azure's shape and fails /readyz, never
// serving what may be stale, while the other replica serves; mended, it
// recovers by itself and sees what was written meanwhile.
func TestPartitionedReplicaRefusesAndRecovers(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	cut := newCutter(t, etcd.Endpoint(0))
	ha := hatest.Start(t, etcd, 2, hatest.Options{Endpoints: func(i int) []string {
		if i == 1 {
			return []string{cut.endpoint()}
		}
		return etcd.Endpoints()
	}})
	ctx := context.Background()
	if _, err := secrets(t, ha.Client(0), "demo").SetSecret(ctx, "s", azsecrets.SetSecretParameters{Value: to.Ptr("before")}, nil); err != nil {
		t.Fatal(err)
	}
	tok, err := ha.Client(0).Token(ctx, ha.Endpoints.Resource())
	if err != nil {
		t.Fatal(err)
	}
	if status, v := getSecret(t, ha, 1, tok, "s"); status != 200 || v != "before" {
		t.Fatalf("before the cut, b answers %d %q", status, v)
	}
	ready := func(i int) int {
		resp, err := ha.HTTP(i).Get(ha.Endpoints.AuthorityURL() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if ready(1) != 200 {
		t.Fatal("b is not ready before the cut")
	}

	cut.cut.Store(true)
	// Written on a during the cut: b must never answer the old value.
	if _, err := secrets(t, ha.Client(0), "demo").SetSecret(ctx, "s", azsecrets.SetSecretParameters{Value: to.Ptr("during")}, nil); err != nil {
		t.Fatalf("a, which still reaches etcd, refuses a write: %v", err)
	}
	start := time.Now()
	req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/s?api-version=7.6", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := ha.HTTP(1).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Value string
		Error struct{ Code string }
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 503 || body.Error.Code != "ServiceUnavailable" || resp.Header.Get("Retry-After") == "" || body.Value != "" {
		t.Fatalf("cut off, b answered %d %+v (Retry-After %q)", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if took > 5*time.Second {
		t.Fatalf("cut off, b took %v to answer 503, over 5 s", took)
	}
	t.Logf("cut off: 503 after %v", took.Round(time.Millisecond))
	if s := ready(1); s != 503 {
		t.Fatalf("cut off, b's /readyz answers %d", s)
	}
	if s := ready(0); s != 200 {
		t.Fatalf("a's /readyz answers %d during b's cut", s)
	}

	cut.mend()
	deadline := time.Now().Add(60 * time.Second)
	for {
		status, v := getSecret(t, ha, 1, tok, "s")
		if status == 200 {
			if v != "during" {
				t.Fatalf("mended, b answers the stale value %q", v)
			}
			break
		}
		if status != 503 || time.Now().After(deadline) {
			t.Fatalf("mended, b answers %d", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s := ready(1); s != 200 {
		t.Fatalf("mended, b's /readyz answers %d", s)
	}
}
