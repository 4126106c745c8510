package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/provider"
	"github.com/cofferhq/coffer/internal/node/push"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
)

// The shape of the upstream figure (20,000 GETs every 2 minutes for
// 10,000 pods × 2 secrets): 250 nodes × 40 pods × 2 objects.
const (
	rotNodes       = 250
	rotPods        = 40
	rotObjects     = 2
	rotSecrets     = 200 // pod p of node n mounts secrets 2(40n+p) and 2(40n+p)+1, mod 200
	rotIdentities  = 20
	rotNodeIDs     = 4 // a node's pods run as 4 identities (namespaces)
	rotParallelism = 32
)

// rotNode is one node: Coffer's real provider daemon on its own socket,
// built by its own constructor, with a push listener connected as Coffer's
// driver connects one. A node here has no driver: the rotation interval's
// remounts are the provider's Mount calls that the driver would send.
type rotNode struct {
	conn    *grpc.ClientConn
	prov    *provider.Daemon
	volumes []*v1alpha1.MountRequest
}

// BenchmarkFleetRotation mounts 10,000 volumes on 250 providers, then
// runs rotation intervals (one op: every volume remounted once, as the
// driver's rotation does) and reports the vault requests the server
// counted per interval while nothing changed. Without the watch, each
// interval is one conditional read per object: 20,000.
func BenchmarkFleetRotation(b *testing.B) {
	for _, mode := range []struct {
		name  string
		flags []string
	}{{"watch", nil}, {"held-reads", []string{"--no-vault-watch"}}} {
		// 250 nodes share 20 identities here, where a fleet has thousands:
		// the per-client token rate limit would throttle what is one
		// client's burst only in this simulation.
		mode.flags = append(mode.flags, "--token-rate-limit", "-1")
		b.Run(mode.name, func(b *testing.B) { benchRotation(b, mode.flags) })
	}
}

func benchRotation(b *testing.B, flags []string) {
	watching := !slices.Contains(flags, "--no-vault-watch")
	srv := startServer(b, flags...)
	sc, err := srv.admin.Secrets("demo")
	if err != nil {
		b.Fatal(err)
	}
	for i := range rotSecrets {
		srv.setSecret(b, sc, "rot-"+strconv.Itoa(i), "v0")
	}
	sps := make([]mgmthttp.SPOut, rotIdentities)
	for i := range sps {
		sps[i] = srv.identity(b, "rot-"+strconv.Itoa(i))
	}
	suffix := srv.env.VaultURL[len("https://demo."):]
	suffix = suffix[:len(suffix)-1]

	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	nodes := make([]*rotNode, rotNodes)
	for n := range nodes {
		nodes[n] = startNode(b, ctx, srv, suffix, n, sps)
	}

	// The first mounts read every object.
	before := srv.vaultRequests(b)
	interval(b, nodes)
	first := srv.vaultRequests(b) - before
	b.Logf("the first mounts of %d volumes sent %.0f vault requests", rotNodes*rotPods, first)
	watched := func() float64 {
		total := 0.0
		for _, n := range nodes {
			mfs, err := n.prov.Registry.Gather()
			if err != nil {
				b.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() == "coffer_provider_watched_reads_total" {
					for _, m := range mf.GetMetric() {
						total += m.GetCounter().GetValue()
					}
				}
			}
		}
		return total
	}
	if watching {
		// Every stream open and Ready: an interval answered wholly from
		// the watches (counted by the providers, not the server).
		waitFor(b, "every node's watches", 2*time.Minute, func() bool {
			return sample(srv.scrape(b), "coffer_vault_watch_streams") == rotNodes*rotNodeIDs
		})
		waitFor(b, "an interval answered from the watches", 2*time.Minute, func() bool {
			w := watched()
			interval(b, nodes)
			return watched()-w == rotNodes*rotPods*rotObjects
		})
	}
	reqs, start := srv.vaultRequests(b), time.Now()
	for b.Loop() {
		interval(b, nodes)
	}
	b.StopTimer()
	perInterval := (srv.vaultRequests(b) - reqs) / float64(b.N)
	b.ReportMetric(perInterval, "vault-req/interval")
	b.ReportMetric(float64(rotNodes*rotPods)*float64(b.N)/time.Since(start).Seconds(), "mounts/s")
	serverMiB := rss(b, srv.pid)
	b.ReportMetric(serverMiB, "server-MiB")
	how := "the vault watch"
	if !watching {
		how = "held reads, no vault watch (--no-vault-watch)"
	}
	record(b, fleetRun{
		Name:  fmt.Sprintf("%d nodes × %d pods × %d objects, rotation: %s", rotNodes, rotPods, rotObjects, how),
		Nodes: rotNodes, ObjectsPerNode: rotPods * rotObjects, ServerRSSMiB: ptr(serverMiB), RequestsPerInterval: ptr(perInterval),
		Notes: fmt.Sprintf("real providers; %d rotation intervals of %d remounts each, nothing changed (the upstream stack sends %d GETs per interval for this shape); the first mounts sent %.0f vault requests",
			b.N, rotNodes*rotPods, rotNodes*rotPods*rotObjects, first),
	})
}

// startNode starts node n's provider and its push listener, and makes its
// volumes' mount requests.
func startNode(b *testing.B, ctx context.Context, srv *serverProc, suffix string, n int, sps []mgmthttp.SPOut) *rotNode {
	b.Helper()
	dir, err := os.MkdirTemp("", "fleet")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "coffer.sock")
	d, err := provider.NewDaemon(provider.Options{Endpoint: "unix://" + sock, VaultSuffix: suffix, CAFile: srv.env.CAFile, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	pctx, stop := context.WithCancel(ctx)
	go func() { done <- d.Run(pctx) }()
	b.Cleanup(func() { stop(); <-done })
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	listening := make(chan struct{})
	var once sync.Once
	go func() {
		for pctx.Err() == nil {
			_ = push.Watch(pctx, conn, func() { once.Do(func() { close(listening) }) }, func(string) {})
			time.Sleep(100 * time.Millisecond)
		}
	}()
	select {
	case <-listening:
	case <-time.After(time.Minute):
		b.Fatalf("node %d: the provider's push service did not answer", n)
	}
	node := &rotNode{conn: conn, prov: d}
	for p := range rotPods {
		sp := sps[(n*rotNodeIDs+p%rotNodeIDs)%len(sps)]
		first := (2 * (n*rotPods + p)) % rotSecrets
		objs := "array:\n"
		for o := range rotObjects {
			objs += fmt.Sprintf("  - |\n    objectName: rot-%d\n    objectType: secret\n", first+o)
		}
		attrs, _ := json.Marshal(map[string]string{"keyvaultName": "demo", "tenantId": srv.env.TenantID, "objects": objs,
			"csi.storage.k8s.io/pod.name": "pod-" + strconv.Itoa(p), "csi.storage.k8s.io/pod.namespace": "ns-" + strconv.Itoa(p%rotNodeIDs)})
		secrets, _ := json.Marshal(map[string]string{"clientid": sp.AppID, "clientsecret": sp.Password})
		node.volumes = append(node.volumes, &v1alpha1.MountRequest{Attributes: string(attrs), Secrets: string(secrets), Permission: "420",
			TargetPath: fmt.Sprintf("/var/lib/kubelet/pods/node-%d-pod-%d/volumes/kubernetes.io~csi/secrets/mount", n, p)})
	}
	return node
}

// interval remounts every volume of every node once, rotParallelism at a
// time, as the drivers' rotation would, and fails on any error.
func interval(b *testing.B, nodes []*rotNode) {
	b.Helper()
	type job struct {
		n   *rotNode
		req *v1alpha1.MountRequest
	}
	jobs := make(chan job)
	errs := make(chan error, rotParallelism)
	var wg sync.WaitGroup
	for range rotParallelism {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				resp, err := v1alpha1.NewCSIDriverProviderClient(j.n.conn).Mount(context.Background(), j.req)
				if err == nil && resp.GetError().GetCode() != "" {
					err = fmt.Errorf("mount %s: %s", j.req.TargetPath, resp.GetError().GetCode())
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for _, n := range nodes {
		for _, req := range n.volumes {
			jobs <- job{n, req}
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}
