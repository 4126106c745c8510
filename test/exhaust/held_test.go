package exhaust

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server/api/kvhttp"
)

// TestHeldReadCap holds 20,000 conditional reads (Prefer: wait) at once,
// the server's cap (kvhttp.MaxHeld), over HTTP/2 as Coffer's provider
// sends them. It logs the server's memory per held read, checks that one
// more read is answered at once and told it was not held
// ("Preference-Applied: wait=0"), and that one write then answers every
// held read with the new value: nothing is lost or left hanging.
func TestHeldReadCap(t *testing.T) {
	const held = kvhttp.MaxHeld
	d := startDev(t)
	hc, tok := vaultClient(t, d.Env)
	secretURL := strings.TrimSuffix(d.Env.VaultURL, "/") + "/secrets/watched?api-version=7.6"
	putSecret(t, hc, tok, secretURL, "v0")
	etag := etagOf(t, hc, tok, secretURL)
	before := d.memory(t)

	// The reads share 100 HTTP/2 connections opened first, 200 streams
	// each (the server allows 250): left to itself, net/http's pool would
	// dial one connection per waiting request, hundreds of TLS handshakes
	// at once, which is a test of the client's patience, not the server.
	conns := h2Conns(t, d, secretURL, 100)
	// Each reader holds a read until the value changes; a hold that ends
	// without a change (its 30 s, on a slow machine) is asked again.
	var changed, refusedHold, failed atomic.Int64
	var firstErr atomic.Value
	var answeredMu sync.Mutex
	var answered []time.Time // when each reader had the new value
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := http.Header{"If-None-Match": {etag}, "Prefer": {"wait=30"}}
			for ctx.Err() == nil {
				status, applied, err := heldGet(ctx, conns[i%len(conns)], tok, secretURL, h)
				switch {
				case err != nil && ctx.Err() == nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				case status == http.StatusOK:
					changed.Add(1)
					answeredMu.Lock()
					answered = append(answered, time.Now())
					answeredMu.Unlock()
					return
				case status == http.StatusNotModified && applied == "wait=0":
					// Not held: at the cap. Ask again soon, as the
					// provider does.
					refusedHold.Add(1)
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				case status != http.StatusNotModified:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Minute)
	for n := d.metric("coffer_held_reads"); n < held; n = d.metric("coffer_held_reads") {
		if failed.Load() > 0 {
			t.Fatalf("%d held reads failed (first: %v)", failed.Load(), firstErr.Load())
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %.0f reads three minutes after %d were sent", n, held)
		}
		time.Sleep(50 * time.Millisecond)
	}
	filled := time.Since(start)
	during := d.memory(t)

	// One more: answered at once, not held. A probe sent just as a
	// reader's hold ended and before it asked again takes the free place
	// and is held; it asks for 1 s only, and the probe is sent again.
	var probe time.Duration
	for {
		if time.Now().After(deadline) {
			t.Fatal("no read past the cap was answered at once in three minutes")
		}
		pstart := time.Now()
		pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
		status, applied, err := heldGet(pctx, hc.Transport, tok, secretURL, http.Header{"If-None-Match": {etag}, "Prefer": {"wait=1"}})
		pcancel()
		if err != nil || status != http.StatusNotModified {
			t.Fatalf("the read past the cap: %d %v", status, err)
		}
		if applied == "wait=0" {
			probe = time.Since(pstart)
			break
		}
	}

	// A write answers every held read, with the new value.
	wstart := time.Now()
	putSecret(t, hc, tok, secretURL, "v1")
	putTook := time.Since(wstart)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("three minutes after the write, %d of %d readers have the new value", changed.Load(), held)
	}
	woken := time.Since(wstart)
	var wakes []time.Duration
	for _, at := range answered {
		wakes = append(wakes, at.Sub(wstart))
	}
	if failed.Load() > 0 || changed.Load() != held {
		t.Fatalf("after the write: %d readers have the new value, %d failed (first: %v), of %d", changed.Load(), failed.Load(), firstErr.Load(), held)
	}
	after := d.memory(t)
	t.Logf("%d reads held after %s; the read past the cap answered in %s (304, Preference-Applied: wait=0); %d holds refused at the cap along the way (reads that came back while a probe held a place)",
		held, filled.Round(time.Millisecond), probe.Round(time.Microsecond), refusedHold.Load())
	t.Logf("server memory before: %s", before)
	t.Logf("server memory with %d held: %s", held, during)
	t.Logf("per held read: %.1f KiB RSS, %.1f KiB heap, %.2f goroutines", (during.rss-before.rss)/held/1024, (during.heap-before.heap)/held/1024, (during.goroutines-before.goroutines)/held)
	t.Logf("one write answered all %d with the new value in %s (p50 %s, p99 %s after the write's request, which took %s); memory after: %s", held, woken.Round(time.Millisecond),
		percentile(wakes, 50).Round(time.Millisecond), percentile(wakes, 99).Round(time.Millisecond), putTook.Round(time.Millisecond), after)
	// The bound: 100 KiB a held read, several times the measured figure.
	if bound := float64(held) * (100 << 10); during.rss-before.rss > bound {
		t.Errorf("the server's RSS grew %.0f MiB with %d held reads, over the %.0f MiB bound", (during.rss-before.rss)/(1<<20), held, bound/(1<<20))
	}
}

// heldGet is a conditional GET; it returns the status and the
// Preference-Applied header.
func heldGet(ctx context.Context, hc http.RoundTripper, tok, url string, h http.Header) (int, string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Preference-Applied"), nil
}

func etagOf(t *testing.T, hc *http.Client, tok, url string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("ETag") == "" {
		t.Fatalf("GET %s: %s, ETag %q", url, resp.Status, resp.Header.Get("ETag"))
	}
	return resp.Header.Get("ETag")
}

// h2Conns opens n HTTP/2 connections to the vault of url.
func h2Conns(t *testing.T, d *devServer, rawURL string, n int) []*http.ClientConn {
	t.Helper()
	u, _ := url.Parse(rawURL)
	roots, err := httpclient.RootPool(d.Env.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &net.Dialer{Timeout: time.Minute}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, httpclient.LoopbackLocalhost(addr))
		},
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Protocols:       new(http.Protocols),
	}
	tr.Protocols.SetHTTP2(true)
	var conns []*http.ClientConn
	for range n {
		cc, err := tr.NewClientConn(context.Background(), "https", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		conns = append(conns, cc)
	}
	return conns
}
