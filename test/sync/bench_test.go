package sync

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/testbin"
)

// BenchmarkSyncController1000 is the benchmark: 1,000 SecretSyncs
// across 50 namespaces, each with its own class and vault secret, against
// one vault, synced by the real `coffer sync-controller` binary (its own
// process, so that its memory is its own) through Coffer's provider with
// workload identity. It reports:
//   - first-sync-s: from the controller's start to all 1,000 Secrets;
//   - rss-MiB: the controller's resident memory after the first sync and
//     after a quiet refresh cycle (peak: VmHWM), split into anonymous
//     memory (rss-anon-MiB: the heap, stacks and runtime the controller
//     owns) and file pages (rss-file-MiB: the parts of the 90 MB coffer
//     binary it touched, shared and reclaimable);
//   - per refresh cycle with nothing changed (every SecretSync fetched
//     again once, poll interval 30 s): the vault's value transfers (200s)
//     and conditional answers (304s), and the held reads that watch for
//     push;
//   - push-p50-ms, push-p99-ms: from the vault's acknowledgement of a new
//     version to the Secret's update event on a watch, over 100 changes
//     made one after another.
//
// It runs once whatever -benchtime says (make bench-sync).
func BenchmarkSyncController1000(b *testing.B) {
	const namespaces, perNamespace, changes = 50, 20, 100
	poll := 30 * time.Second
	s := startStack(b)
	ctx := context.Background()
	bin := testbin.Coffer(b)

	b.Log("setup: namespaces, identities, vault secrets, classes and SecretSyncs")
	var nsNames []string
	for n := range namespaces {
		ns := fmt.Sprintf("ns-%02d", n)
		nsNames = append(nsNames, ns)
		s.namespace(b, ns)
		s.serviceAccount(b, ns, "app")
		mi := s.workloadIdentity(b, ns, "app", "get")
		for i := range perNamespace {
			name := fmt.Sprintf("s-%02d-%02d", n, i)
			s.setSecret(b, name, "value of "+name)
			s.coffersClass(b, ns, name, mi.ClientID, name)
			s.secretSync(b, ns, name, name, "app", nil, name)
		}
	}
	total := namespaces * perNamespace

	b.Log("first sync")
	start := time.Now()
	pid, metrics := startBinary(b, bin, "sync-controller", "--kubeconfig", s.kube.KubeconfigFile(b),
		"--provider-volume", s.provider.Dir, "--token-request-audience", "api://AzureADTokenExchange",
		"--namespaces", strings.Join(nsNames, ","), "--leader-election-namespace", controllerNS,
		"--rotation-poll-interval", poll.String(), "--metrics-addr", "127.0.0.1:0")
	eventually(b, 10*time.Minute, "all Secrets", func() bool { return s.syncedSecrets(b) == total }, nil)
	firstSync := time.Since(start)
	first := rss(b, pid)
	b.Logf("first sync of %d SecretSyncs: %v; controller RSS %.1f MiB (anonymous %.1f, file %.1f; metrics on %s)",
		total, firstSync.Round(time.Millisecond), first.now, first.anon, first.file, metrics)

	b.Log("a quiet refresh cycle")
	vault := func(api, code string) float64 {
		return sumMetric(b, s.env.Server.Metrics, "coffer_http_requests_total", "api", api, "code", code)
	}
	unchanged := func() float64 { return scrape(b, metrics, `coffer_sync_syncs_total{result="unchanged"}`) }
	before200, before304, beforeHeld, beforeUnchanged := vault("vault", "200"), vault("vault", "304"), vault("vault-held", "304"), unchanged()
	eventually(b, 3*poll, "a refresh of every SecretSync", func() bool { return unchanged()-beforeUnchanged >= float64(total) }, func() string {
		body, _ := httpGet("http://" + metrics + "/metrics")
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "coffer_sync_") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	})
	transfers, conditional, held := vault("vault", "200")-before200, vault("vault", "304")-before304, vault("vault-held", "304")-beforeHeld
	cycle := rss(b, pid)
	b.Logf("per refresh cycle: %v value transfers, %v conditional reads answered 304, %v held reads ended unchanged; RSS %.1f MiB (anonymous %.1f, file %.1f), peak %.1f MiB",
		transfers, conditional, held, cycle.now, cycle.anon, cycle.file, cycle.peak)
	mib := func(series string) float64 { return scrape(b, metrics, series) / (1 << 20) }
	b.Logf("Go heap: %.1f MiB in use (%.1f MiB allocated), %.1f MiB of stacks, %v goroutines, %.1f MiB from the OS",
		mib("go_memstats_heap_inuse_bytes"), mib("go_memstats_heap_alloc_bytes"), mib("go_memstats_stack_inuse_bytes"),
		scrape(b, metrics, "go_goroutines"), mib("go_memstats_sys_bytes"))

	b.Logf("push: %d changes, one after another", changes)
	w, err := s.kube.Clientset.CoreV1().Secrets("").Watch(ctx, metav1.ListOptions{LabelSelector: syncv1.SecretLabel})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	var lat []time.Duration
	for i := range changes {
		n, k := i%namespaces, (i*7)%perNamespace
		ns, name := fmt.Sprintf("ns-%02d", n), fmt.Sprintf("s-%02d-%02d", n, k)
		value := fmt.Sprintf("change %d of %s", i, name)
		s.setSecret(b, name, value)
		t0 := time.Now()
		deadline := time.After(20 * time.Second)
	wait:
		for {
			select {
			case ev := <-w.ResultChan():
				sec, ok := ev.Object.(*corev1.Secret)
				if ok && ev.Type == watch.Modified && sec.Namespace == ns && sec.Name == name && string(sec.Data[name]) == value {
					lat = append(lat, time.Since(t0))
					break wait
				}
			case <-deadline:
				b.Fatalf("change %d did not reach Secret %s/%s", i, ns, name)
			}
		}
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	b.Logf("push latency: p50 %v, p99 %v, max %v", p(0.5), p(0.99), lat[len(lat)-1])

	b.ReportMetric(firstSync.Seconds(), "first-sync-s")
	b.ReportMetric(cycle.now, "rss-MiB")
	b.ReportMetric(cycle.peak, "rss-peak-MiB")
	b.ReportMetric(cycle.anon, "rss-anon-MiB")
	b.ReportMetric(cycle.file, "rss-file-MiB")
	b.ReportMetric(transfers, "transfers/cycle")
	b.ReportMetric(conditional, "304s/cycle")
	b.ReportMetric(held, "held-reads/cycle")
	b.ReportMetric(float64(p(0.5).Microseconds())/1000, "push-p50-ms")
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "push-p99-ms")
	b.ReportMetric(0, "ns/op")
	syscall.Kill(pid, syscall.SIGTERM)
}

// syncedSecrets counts the Secrets the controller wrote.
func (s *stack) syncedSecrets(t testing.TB) int {
	list, err := s.kube.Clientset.CoreV1().Secrets("").List(context.Background(), metav1.ListOptions{LabelSelector: syncv1.SecretLabel})
	if err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// startBinary runs bin with args, killed by pid when the test ends, and
// returns its pid and the address its metrics listener logged.
func startBinary(t testing.TB, bin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out agenttest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), out.String())
		}
	})
	return cmd.Process.Pid, out.LoggedAddr(t, "metrics and health listening")
}

// memory is a process's resident memory, in MiB.
type memory struct {
	now, peak  float64 // VmRSS, VmHWM
	anon, file float64 // RssAnon, RssFile: of now, the private and the file-backed pages
}

// rss reads a process's resident memory from /proc.
func rss(t testing.TB, pid int) memory {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			m.now = kb / 1024
		case "VmHWM:":
			m.peak = kb / 1024
		case "RssAnon:":
			m.anon = kb / 1024
		case "RssFile:":
			m.file = kb / 1024
		}
	}
	return m
}

// scrape reads one series from a Prometheus text endpoint (0 if absent).
func scrape(t testing.TB, addr, series string) float64 {
	t.Helper()
	resp, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(resp, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}
