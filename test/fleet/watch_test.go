package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
)

// The fleet: 1,000 nodes, each watching 50 objects through one vault
// watch, and so one stream per node and identity. A node here is a watch
// client, not a whole driver and provider: it holds one stream, and on a
// change reads the object once, conditionally, as Coffer's provider does;
// BenchmarkFleetRotation runs the real provider.
const (
	fleetNodes      = 1000
	fleetObjects    = 50
	fleetIdentities = 20 // node i is identity i % 20
)

// idleWindow covers at least one re-authorization pass of every stream
// (each comes every 30 s, the first at a random point of the first
// period); FLEET_IDLE shortens it for a quick try.
func idleWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("FLEET_IDLE")); err == nil {
		return d
	}
	return 60 * time.Second
}

// refresh is a node having read one object's new version.
type refresh struct {
	object  int
	version string
	at      time.Time
}

// watchNode is one simulated node.
type watchNode struct {
	kv    *kvclient.Client
	apex  string
	base  string
	token string
	names []string

	retries *atomic.Int64

	mu    sync.Mutex
	etags []string
}

// mount reads every object once, as a node's mounts do before they
// watch: the ETags are what the watch is asked for.
func (n *watchNode) mount(ctx context.Context) error {
	for i, name := range n.names {
		var item kvclient.Item
		tag, _, err := n.kv.Get(ctx, n.base, n.token, "secrets", name, "", "", &item)
		if err != nil {
			return err
		}
		n.etags[i] = tag
	}
	return nil
}

// run holds the node's watch until ctx ends: each Changed is read once.
func (n *watchNode) run(ctx context.Context, ready func(), refreshed chan<- refresh) error {
	objs := make([]vaultwatch.Object, len(n.names))
	n.mu.Lock()
	for i, name := range n.names {
		objs[i] = vaultwatch.Object{Vault: "demo", Kind: vaultwatch.Secrets, Name: name, ETag: n.etags[i]}
	}
	n.mu.Unlock()
	ws, err := n.kv.OpenWatch(ctx, n.apex, n.token, objs)
	if err != nil {
		return err
	}
	defer ws.Close()
	for {
		rec, err := ws.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return ctx.Err()
			}
			return err
		}
		switch rec.Type {
		case vaultwatch.Ready:
			ready()
		case vaultwatch.Changed:
			go n.read(ctx, rec.Object, refreshed)
		case vaultwatch.End, vaultwatch.Dropped:
			return fmt.Errorf("the watch said %s (%s)", rec.Type, rec.Reason)
		}
	}
}

// read reads object i with the ETag the node holds, as a refresh does.
func (n *watchNode) read(ctx context.Context, i int, refreshed chan<- refresh) {
	n.mu.Lock()
	etag := n.etags[i]
	n.mu.Unlock()
	var item kvclient.Item
	tag, notModified, err := n.kv.Get(ctx, n.base, n.token, "secrets", n.names[i], "", etag, &item)
	for err != nil && ctx.Err() == nil {
		// A refused or failed read is tried again, as a refresh would be;
		// the retries show in the latency.
		n.retries.Add(1)
		time.Sleep(100 * time.Millisecond)
		tag, notModified, err = n.kv.Get(ctx, n.base, n.token, "secrets", n.names[i], "", etag, &item)
	}
	if err != nil || notModified {
		return
	}
	n.mu.Lock()
	n.etags[i] = tag
	n.mu.Unlock()
	select {
	case refreshed <- refresh{object: i, version: item.Version(), at: time.Now()}:
	case <-ctx.Done():
	}
}

// BenchmarkFleetWatch runs 1,000 nodes × 50 objects against one server
// and reports the server's memory with every stream open, its CPU while
// nothing changes (and that it answers no vault request meanwhile), and,
// per write (one op), the time from the write's start until each node has
// read the new version: p50 and p99 over every node's refresh, and the
// median and worst time until the last node of a write had it.
func BenchmarkFleetWatch(b *testing.B) {
	srv := startServer(b)
	sc, err := srv.admin.Secrets("demo")
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, fleetObjects)
	for i := range names {
		names[i] = "fleet-" + strconv.Itoa(i)
		srv.setSecret(b, sc, names[i], "v0")
	}
	tokens := make([]string, fleetIdentities)
	for i := range tokens {
		tokens[i] = srv.token(b, srv.identity(b, "fleet-"+strconv.Itoa(i)))
	}
	rssBefore, liveBefore := rss(b, srv.pid), liveHeap(srv.scrape(b))

	ctx, cancel := context.WithCancel(context.Background())
	var retries atomic.Int64
	nodes := make([]*watchNode, fleetNodes)
	for i := range nodes {
		hc, err := httpclient.New(srv.env.CAFile)
		if err != nil {
			b.Fatal(err)
		}
		hc.Timeout = 0 // a watch lasts as long as its context
		nodes[i] = &watchNode{kv: &kvclient.Client{HTTP: hc}, apex: srv.resource(), base: srv.vaultBase(), token: tokens[i%fleetIdentities],
			names: names, etags: make([]string, fleetObjects), retries: &retries}
	}
	// The nodes mount, 32 at a time (a fleet's nodes start over time).
	sem := make(chan struct{}, 32)
	var mounted sync.WaitGroup
	mountErrs := make(chan error, fleetNodes)
	for _, n := range nodes {
		mounted.Add(1)
		sem <- struct{}{}
		go func() {
			defer mounted.Done()
			defer func() { <-sem }()
			if err := n.mount(ctx); err != nil {
				mountErrs <- err
			}
		}()
	}
	mounted.Wait()
	close(mountErrs)
	for err := range mountErrs {
		b.Fatalf("a node's mount: %v", err)
	}
	refreshed := make(chan refresh, fleetNodes*4)
	var ready, done sync.WaitGroup
	errs := make(chan error, fleetNodes)
	ready.Add(fleetNodes)
	opened := time.Now()
	for _, n := range nodes {
		done.Add(1)
		go func() {
			defer done.Done()
			var once sync.Once
			if err := n.run(ctx, func() { once.Do(ready.Done) }, refreshed); err != nil {
				errs <- err
				once.Do(ready.Done)
			}
		}()
	}
	b.Cleanup(func() { cancel(); done.Wait() })
	ready.Wait()
	select {
	case err := <-errs:
		b.Fatalf("a node's watch failed: %v", err)
	default:
	}
	b.Logf("%d watches of %d objects ready in %s", fleetNodes, fleetObjects, time.Since(opened).Round(time.Millisecond))
	m := srv.scrape(b)
	if got := sample(m, "coffer_vault_watch_streams"); got != fleetNodes {
		b.Fatalf("the server holds %v watch streams, want %d", got, fleetNodes)
	}
	if got := sample(m, "coffer_vault_watch_objects"); got != fleetNodes*fleetObjects {
		b.Fatalf("the server watches %v objects, want %d", got, fleetNodes*fleetObjects)
	}

	// Idle: nothing changes for a while.
	reqs, cpu0, t0 := srv.vaultRequests(b), cpu(b, srv.pid), time.Now()
	time.Sleep(idleWindow()) // a measurement window, not a wait for an event
	idleCPU := float64(cpu(b, srv.pid)-cpu0) / float64(time.Since(t0))
	idleReqs := srv.vaultRequests(b) - reqs
	rssWatching := rss(b, srv.pid)
	m = srv.scrape(b)

	var each, last []time.Duration
	write := 0
	for b.Loop() {
		write++
		obj := write % fleetObjects
		start := time.Now()
		r, err := sc.SetSecret(context.Background(), names[obj], setParams("v"+strconv.Itoa(write)), nil)
		if err != nil {
			b.Fatal(err)
		}
		version := r.ID.Version()
		seen, deadline := 0, time.After(2*time.Minute)
		for seen < fleetNodes {
			select {
			case rf := <-refreshed:
				if rf.object == obj && rf.version == version {
					seen++
					each = append(each, rf.at.Sub(start))
					if seen == fleetNodes {
						last = append(last, rf.at.Sub(start))
					}
				}
			case err := <-errs:
				b.Fatalf("a node's watch failed: %v", err)
			case <-deadline:
				b.Fatalf("write %d: %d of %d nodes refreshed within 2 minutes", write, seen, fleetNodes)
			}
		}
	}
	b.StopTimer()
	slices.Sort(each)
	slices.Sort(last)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(rssBefore, "server-MiB-before")
	b.ReportMetric(rssWatching, "server-MiB-watching")
	b.ReportMetric((rssWatching-rssBefore)*1024/fleetNodes, "KiB/stream")
	b.ReportMetric(100*idleCPU, "idle-CPU-%")
	b.ReportMetric(idleReqs, "idle-vault-req")
	b.ReportMetric(float64(retries.Load()), "refresh-retries")
	b.ReportMetric(liveHeap(m), "server-live-heap-MiB")
	b.ReportMetric((liveHeap(m)-liveBefore)*1024/fleetNodes, "live-KiB/stream")
	b.ReportMetric(sample(m, "go_memstats_stack_inuse_bytes")/(1<<20), "server-stack-MiB")
	b.ReportMetric(sample(m, "go_goroutines"), "server-goroutines")
	b.ReportMetric(ms(pct(each, 50)), "refresh-p50-ms")
	b.ReportMetric(ms(pct(each, 99)), "refresh-p99-ms")
	b.ReportMetric(ms(pct(last, 50)), "all-nodes-p50-ms")
	b.ReportMetric(ms(last[len(last)-1]), "all-nodes-max-ms")
	record(b, fleetRun{
		Name: fmt.Sprintf("%d nodes × %d objects, one watch stream per node", fleetNodes, fleetObjects), Nodes: fleetNodes, ObjectsPerNode: fleetObjects,
		ServerRSSMiB: ptr(rssWatching), IdleCPUPercent: ptr(100 * idleCPU),
		RefreshP50Ms: ptr(ms(pct(last, 50))), RefreshP99Ms: ptr(ms(pct(last, 99))),
		Notes: fmt.Sprintf("%d writes, each timed until all %d nodes had read the new version (p99 of %d writes is their slowest); per node, p50 %.0f ms and p99 %.0f ms; "+
			"%.0f vault requests in %s idle, with every stream re-authorized; server RSS %.0f MiB before the watches opened; %d CPUs",
			len(last), fleetNodes, len(last), ms(pct(each, 50)), ms(pct(each, 99)), idleReqs, idleWindow(), rssBefore, runtime.NumCPU()),
	})
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}
