package exhaust

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
)

// The flood's size: idle keep-alive connections (the 10,000 with
// `make exhaust`, fewer in `make test` to keep it well under a minute on a
// shared machine: see idleConns), and slow ones that the server must close
// on its own timeouts.
const (
	slowlorisConns = 200
	silentConns    = 200
	// readHeaderTimeout is the server's http.Server.ReadHeaderTimeout
	// (internal/server), which also bounds a TLS handshake.
	readHeaderTimeout = 10 * time.Second
	// idleTimeout is its IdleTimeout: an idle keep-alive connection is
	// closed after it.
	idleTimeout = 120 * time.Second
)

// TestIdleTLSFloodAndSlowloris opens 10,000 TLS connections that each make
// one request and then sit idle (kept by the server for its IdleTimeout),
// plus connections that finish the handshake and send nothing, and
// slowloris connections that send one header line a second. Meanwhile a
// normal client keeps reading a secret. It logs the server's memory before
// and during the flood and the normal client's latency, and asserts what
// cannot flake: every normal request succeeds, the server holds all the
// idle connections within a memory bound far above the measured one, and
// it closes every slow connection on its ReadHeaderTimeout.
func TestIdleTLSFloodAndSlowloris(t *testing.T) {
	idleConns := envInt(t, "COFFER_EXHAUST_CONNS", 2000)
	if need := uint64(idleConns + slowlorisConns + silentConns + 1000); fds() < need {
		t.Fatalf("this process may open %d files, and the flood needs %d: raise `ulimit -n` (TestMain tried to)", fds(), need)
	}
	d := startDev(t)
	hc, tok := vaultClient(t, d.Env)
	secretURL := strings.TrimSuffix(d.Env.VaultURL, "/") + "/secrets/steady?api-version=7.6"
	putSecret(t, hc, tok, secretURL, "a value the normal client reads")
	normal := func(n int) []time.Duration {
		t.Helper()
		var ds []time.Duration
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			status, err := getStatus(ctx, hc, tok, secretURL, nil)
			cancel()
			if err != nil || status != 200 {
				t.Fatalf("a normal read during the flood: %d %v", status, err)
			}
			ds = append(ds, time.Since(start))
		}
		return ds
	}
	quiet := normal(300)
	before := d.memory(t)
	// The normal client reads on while the flood opens, too: that is when
	// the server works hardest (a TLS handshake per connection).
	stopReads := make(chan struct{})
	opening := make(chan []time.Duration)
	go func() {
		var ds []time.Duration
		defer func() { opening <- ds }()
		for {
			select {
			case <-stopReads:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			status, err := getStatus(ctx, hc, tok, secretURL, nil)
			cancel()
			if err != nil || status != 200 {
				t.Errorf("a normal read while the flood opened: %d %v", status, err)
				return
			}
			ds = append(ds, time.Since(start))
		}
	}()

	au, _ := url.Parse(d.Env.AuthorityHost)
	roots, err := httpclient.RootPool(d.Env.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := httpclient.LoopbackLocalhost(au.Host)
	cfg := &tls.Config{RootCAs: roots, ServerName: au.Hostname(), NextProtos: []string{"http/1.1"}, ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	dial := func() (*tls.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 30 * time.Second}, Config: cfg}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		return c.(*tls.Conn), nil
	}
	var (
		mu       sync.Mutex
		conns    []net.Conn
		openedAt []time.Time // when each idle connection's request was answered
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})

	// The slow ones first, so that they overlap the flood. Each records
	// how long the server took to close it.
	type slow struct {
		kind   string
		closed time.Duration
	}
	slows := make(chan slow, slowlorisConns+silentConns)
	for i := range slowlorisConns + silentConns {
		kind := "silent"
		if i < slowlorisConns {
			kind = "slowloris"
		}
		go func() {
			c, err := dial()
			if err != nil {
				slows <- slow{kind: kind + " (dial failed: " + err.Error() + ")", closed: -1}
				return
			}
			defer c.Close()
			start := time.Now()
			gone := make(chan struct{})
			go func() {
				// Read returns once the server closes the connection.
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				io.Copy(io.Discard, c)
				close(gone)
			}()
			if kind == "slowloris" {
				fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n", au.Host)
				for i := 0; ; i++ {
					select {
					case <-gone:
					case <-time.After(time.Second):
						fmt.Fprintf(c, "X-Slow-%d: x\r\n", i)
						continue
					}
					break
				}
			}
			<-gone
			slows <- slow{kind: kind, closed: time.Since(start)}
		}()
	}

	// The flood: idle keep-alive connections, 32 opened at a time.
	floodStart := time.Now()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(idleConns) {
				c, err := dial()
				if err == nil {
					err = healthz(c, au.Host)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				openedAt = append(openedAt, time.Now())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	opened := time.Since(floodStart)
	close(stopReads)
	whileOpening := <-opening
	if failed.Load() > 0 {
		t.Fatalf("%d of %d idle connections failed (first: %v)", failed.Load(), idleConns, firstErr.Load())
	}
	// On a machine slow enough that opening took longer than the server's
	// IdleTimeout, the first ones were rightly closed as idle: only those
	// answered since must still be open.
	expect := func(at time.Time) int {
		n := 0
		for _, o := range openedAt {
			if at.Sub(o) < idleTimeout-5*time.Second {
				n++
			}
		}
		return n
	}
	mustOpen := expect(time.Now())
	open := d.metric("coffer_connections_open")
	during := d.memory(t)
	flooded := normal(300)
	// Still held after the normal client's reads: the flood was there all
	// along.
	mustOpenAfter := expect(time.Now())
	openAfter := d.metric("coffer_connections_open")

	perConn := (during.rss - before.rss) / float64(idleConns)
	t.Logf("%d idle TLS connections opened in %s (%.0f a second); the server reports %.0f open, %.0f after the normal reads", idleConns, opened.Round(time.Millisecond), float64(idleConns)/opened.Seconds(), open, openAfter)
	t.Logf("server memory before: %s", before)
	t.Logf("server memory during: %s", during)
	t.Logf("per idle connection: %.1f KiB RSS, %.1f KiB heap, %.2f goroutines", perConn/1024, (during.heap-before.heap)/float64(idleConns)/1024, (during.goroutines-before.goroutines)/float64(idleConns))
	t.Logf("normal reads (HTTP/2, one connection; machine shared with other work): quiet (300) p50 %s p99 %s; while the flood opened (%d) p50 %s p99 %s (p99 ratio %.2f); with it held open (300) p50 %s p99 %s (p99 ratio %.2f)",
		percentile(quiet, 50), percentile(quiet, 99), len(whileOpening), percentile(whileOpening, 50), percentile(whileOpening, 99), ratio(whileOpening, quiet),
		percentile(flooded, 50), percentile(flooded, 99), ratio(flooded, quiet))
	if mustOpen < idleConns {
		t.Logf("opening took longer than the server's %s IdleTimeout: %d of the idle connections were still inside it", idleTimeout, mustOpen)
	}
	if open < float64(mustOpen) || openAfter < float64(mustOpenAfter) {
		t.Errorf("the server reports %.0f then %.0f connections open, fewer than the %d then %d idle ones inside its IdleTimeout: it dropped some", open, openAfter, mustOpen, mustOpenAfter)
	}
	// The bound: 200 KiB a connection, several times the measured figure.
	if bound := float64(idleConns) * (200 << 10); during.rss-before.rss > bound {
		t.Errorf("the server's RSS grew %.0f MiB with %d idle connections, over the %.0f MiB bound", (during.rss-before.rss)/(1<<20), idleConns, bound/(1<<20))
	}

	// Every slow connection is closed by the server, on ReadHeaderTimeout
	// (measured from the end of the handshake, so a little less than the
	// figure here), whatever it trickles.
	closedBy := map[string]time.Duration{}
	for range slowlorisConns + silentConns {
		s := <-slows
		if s.closed < 0 {
			t.Fatalf("a %s connection", s.kind)
		}
		if s.closed > 2*readHeaderTimeout+30*time.Second {
			t.Errorf("a %s connection stayed open %s, well past the server's %s ReadHeaderTimeout", s.kind, s.closed, readHeaderTimeout)
		}
		closedBy[s.kind] = max(closedBy[s.kind], s.closed)
	}
	t.Logf("slow connections closed by the server within: slowloris %s (%d), silent %s (%d); ReadHeaderTimeout %s",
		closedBy["slowloris"].Round(time.Millisecond), slowlorisConns, closedBy["silent"].Round(time.Millisecond), silentConns, readHeaderTimeout)

	// Closed, the connections give their memory's places back.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	for deadline := time.Now().Add(time.Minute); d.metric("coffer_connections_open") > 100; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server still reports %.0f connections open a minute after the flood closed them", d.metric("coffer_connections_open"))
		}
	}
}

// healthz sends one request on c and reads its answer, leaving c idle
// in keep-alive.
func healthz(c net.Conn, host string) error {
	c.SetDeadline(time.Now().Add(time.Minute))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET /healthz: %s", resp.Status)
	}
	return nil
}

func putSecret(t *testing.T, hc *http.Client, tok, url, value string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"value": value})
	req, _ := http.NewRequest("PUT", url, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("PUT %s: %s %s", url, resp.Status, body)
	}
}

// getStatus GETs url with headers and returns the status; the body is
// read and dropped.
func getStatus(ctx context.Context, hc *http.Client, tok, url string, h http.Header) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
