package csi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/fake"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/push"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testbin"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// processRSS is a process's resident set, in MiB.
func processRSS(b testing.TB, pid int) float64 { return procStatus(b, pid, "VmRSS:") }

// processAnon is the anonymous part of a process's resident set, in MiB:
// its own memory, without the pages of its binary and other files, which
// a bigger binary makes larger without any memory being the process's own.
func processAnon(b testing.TB, pid int) float64 { return procStatus(b, pid, "RssAnon:") }

// procStatus is the value of one kB field of /proc/<pid>/status, in MiB.
func procStatus(b testing.TB, pid int, field string) float64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kib, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kib / 1024
		}
	}
	b.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// heapGoal is a process's heap goal, in MiB, from its /metrics at addr:
// the heap size at which its next collection starts, which is what its
// resident memory follows (the live heap times 1 + GOGC/100).
func heapGoal(b testing.TB, addr string) float64 {
	return metricValue(b, addr, "go_memstats_next_gc_bytes") / (1 << 20)
}

// metricValue is the value of an unlabelled metric in the /metrics at addr.
func metricValue(b testing.TB, addr, name string) float64 {
	b.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return f
		}
	}
	b.Fatalf("no %s in /metrics", name)
	return 0
}

// BenchmarkDriverMemory measures the resident memory of the real `coffer
// csi-driver` process, of the node build the node image ships (see
// testbin.CofferNode), driven as a kubelet drives it (NodePublishVolume
// over its socket, with the pod's service-account token in the volume
// context), against a real kube-apiserver, with the upstream fake provider
// serving 10 files per volume, as in issue 16's measurement of the
// upstream driver: at idle, at 110 volumes (a node's pod limit), and at
// 1,000 (KiB/volume is the slope between the two). Each figure is read once the volumes' status objects are written,
// so the driver's background work is done.
func BenchmarkDriverMemory(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the driver mounts tmpfs and must run as root")
	}
	dir, err := os.MkdirTemp("", "mem") // short: unix socket paths are limited
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	providers := filepath.Join(dir, "providers")
	if err := os.MkdirAll(providers, 0o755); err != nil {
		b.Fatal(err)
	}
	mock, err := fake.NewMocKCSIProviderServer(filepath.Join(providers, "fake.sock"))
	if err != nil {
		b.Fatal(err)
	}
	objects := map[string]string{}
	var files []*v1alpha1.File
	for i := range 10 {
		objects[fmt.Sprintf("secret/s%d", i)] = "v1"
		files = append(files, &v1alpha1.File{Path: fmt.Sprintf("s%d", i), Mode: 0o440, Contents: []byte(strings.Repeat("x", 64))})
	}
	mock.SetObjects(objects)
	mock.SetFiles(files)
	if err := mock.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(mock.Stop)

	kube := kubetest.Start(b, kubetest.Options{CRDDirectoryPaths: []string{repoFile(b, "deploy/crds")}})
	if err := secretsstorev1.AddToScheme(kube.Scheme); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fake-class"},
		Spec: secretsstorev1.SecretProviderClassSpec{Provider: "fake", Parameters: map[string]string{"anything": "ignored"}}}
	if err := kube.Client.Create(ctx, spc); err != nil {
		b.Fatal(err)
	}
	// One service-account token, as the kubelet puts in every volume's
	// context (each request carries its own copy, as on the wire).
	if err := kube.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "default"}}); err != nil {
		b.Fatal(err)
	}
	exp := int64(3600)
	tr, err := kube.Clientset.CoreV1().ServiceAccounts("default").CreateToken(ctx, "default", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{federation.DefaultAudience}, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	tokens := mustJSON(map[string]map[string]string{federation.DefaultAudience: {"token": tr.Status.Token, "expirationTimestamp": tr.Status.ExpirationTimestamp.Format(time.RFC3339)}})

	endpoint := filepath.Join(dir, "csi.sock")
	root := filepath.Join(dir, "pods")
	cmd := exec.Command(testbin.CofferNode(b), "csi-driver", "--nodeid", "node-1", "--endpoint", "unix://"+endpoint,
		"--provider-volume", providers, "--metrics-addr", "127.0.0.1:0", "--kubeconfig", kube.KubeconfigFile(b),
		"--enable-secret-rotation", "--rotation-poll-interval", "2m")
	var out agenttest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		unmountAll(b, root)
	})
	metrics := out.LoggedAddr(b, "metrics and health listening")
	cc, err := grpc.NewClient("unix:"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	node := csi.NewNodeClient(cc)
	eventually(b, "the CSI socket answers", func() bool {
		_, err := csi.NewIdentityClient(cc).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		return err == nil
	})
	statuses := func() int {
		var list secretsstorev1.SecretProviderClassPodStatusList
		if err := kube.Client.List(ctx, &list); err != nil {
			b.Fatal(err)
		}
		return len(list.Items)
	}
	// measure waits until the driver has written every volume's status,
	// then reads its RSS a few times over a few seconds and keeps the
	// lowest: what it holds, not the garbage of the last burst.
	var goals, anons []float64
	measure := func(volumes int) float64 {
		// The driver's Kubernetes client keeps client-go's default rate
		// (5 requests per second), so 1,000 status objects take minutes.
		deadline := time.Now().Add(10 * time.Minute)
		for statuses() < volumes {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d status objects written", statuses(), volumes)
			}
			time.Sleep(100 * time.Millisecond)
		}
		low, anon := processRSS(b, cmd.Process.Pid), processAnon(b, cmd.Process.Pid)
		for range 10 {
			time.Sleep(500 * time.Millisecond) // sampling, not waiting for an event
			low, anon = min(low, processRSS(b, cmd.Process.Pid)), min(anon, processAnon(b, cmd.Process.Pid))
		}
		goals, anons = append(goals, heapGoal(b, metrics)), append(anons, anon)
		return low
	}
	publish := func(i int) {
		uid := string(uuid.NewUUID())
		pod := fmt.Sprintf("pod-%d", i)
		req := &csi.NodePublishVolumeRequest{
			VolumeId: "csi-" + uid, TargetPath: filepath.Join(root, uid, "volumes", "kubernetes.io~csi", "secrets", "mount"), Readonly: true,
			VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}},
			VolumeContext: map[string]string{
				"secretProviderClass":         "fake-class",
				"csi.storage.k8s.io/pod.name": pod, "csi.storage.k8s.io/pod.namespace": "default",
				"csi.storage.k8s.io/pod.uid": uid, "csi.storage.k8s.io/serviceAccount.name": "default",
				"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/serviceAccount.tokens": tokens,
			},
		}
		if _, err := node.NodePublishVolume(ctx, req); err != nil {
			b.Fatalf("NodePublishVolume %d: %v", i, err)
		}
	}
	for b.Loop() {
		idle := measure(0)
		for i := range 110 {
			publish(i)
		}
		at110 := measure(110)
		for i := 110; i < 1000; i++ {
			publish(i)
		}
		at1000 := measure(1000)
		b.ReportMetric(idle, "idle-MiB")
		b.ReportMetric(at110, "110-volumes-MiB")
		b.ReportMetric(at1000, "1000-volumes-MiB")
		b.ReportMetric((at1000-at110)*1024/890, "KiB/volume")
		b.ReportMetric(goals[0], "idle-heap-goal-MiB")
		b.ReportMetric(goals[2], "1000-heap-goal-MiB")
		b.ReportMetric(anons[0], "idle-anon-MiB")
		b.ReportMetric(anons[1], "110-anon-MiB")
		b.ReportMetric(anons[2], "1000-anon-MiB")
		b.ReportMetric(metricValue(b, metrics, "go_gc_gogc_percent"), "gogc")
	}
}

// BenchmarkProviderMemory measures the resident memory of the real `coffer
// provider` process, of the provider build (testbin.CofferProvider), at idle and with 110 volumes of 10 secrets each
// (1,100 objects over 100 secrets, read through one service principal),
// mounted as Coffer's driver mounts them, with a push listener connected,
// so that the provider also holds its vault watch.
func BenchmarkProviderMemory(b *testing.B) {
	env := testserver.Start(b, testserver.Options{TokenRateLimit: -1})
	sp := servicePrincipal(b, env, "mem", []string{"get"}, nil, nil)
	for i := range 100 {
		setSecret(b, env, fmt.Sprintf("m%d", i), strings.Repeat("x", 64))
	}
	dir, err := os.MkdirTemp("", "pmem")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "coffer.sock")
	cmd := exec.Command(testbin.CofferProvider(b), "provider", "--endpoint", "unix://"+sock, "--vault-dns-suffix", env.Endpoints.Apex(),
		"--ca-file", env.Admin.CAFile, "--metrics-addr", "127.0.0.1:0", "--node-agent-socket", "")
	var out agenttest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	metrics := out.LoggedAddr(b, "metrics and health listening")
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan struct{})
	var once sync.Once
	go func() {
		for ctx.Err() == nil {
			_ = push.Watch(ctx, conn, func() { once.Do(func() { close(listening) }) }, func(string) {})
			time.Sleep(100 * time.Millisecond)
		}
	}()
	select {
	case <-listening:
	case <-time.After(time.Minute):
		b.Fatal("the provider's push service did not answer")
	}
	low := func() (rss, anon float64) {
		rss, anon = processRSS(b, cmd.Process.Pid), processAnon(b, cmd.Process.Pid)
		for range 10 {
			time.Sleep(500 * time.Millisecond) // sampling, not waiting for an event
			rss, anon = min(rss, processRSS(b, cmd.Process.Pid)), min(anon, processAnon(b, cmd.Process.Pid))
		}
		return rss, anon
	}
	client := v1alpha1.NewCSIDriverProviderClient(conn)
	for b.Loop() {
		idle, idleAnon := low()
		idleGoal := heapGoal(b, metrics)
		for v := range 110 {
			var objs []string
			for o := range 10 {
				objs = append(objs, fmt.Sprintf("objectName: m%d\nobjectType: secret", (10*v+o)%100))
			}
			attrs := spAttributes(env, objects(objs...))
			attrs["csi.storage.k8s.io/pod.name"] = fmt.Sprintf("pod-%d", v)
			resp, err := client.Mount(ctx, &v1alpha1.MountRequest{Attributes: mustJSON(attrs), Secrets: mustJSON(spSecrets(sp)), Permission: "420",
				TargetPath: fmt.Sprintf("/var/lib/kubelet/pods/%d/volumes/kubernetes.io~csi/secrets/mount", v)})
			if err != nil || resp.GetError().GetCode() != "" {
				b.Fatalf("mount %d: %v %v", v, err, resp.GetError())
			}
		}
		at110, anon110 := low()
		b.ReportMetric(idle, "idle-MiB")
		b.ReportMetric(at110, "110-volumes-MiB")
		b.ReportMetric(idleAnon, "idle-anon-MiB")
		b.ReportMetric(anon110, "110-anon-MiB")
		b.ReportMetric(idleGoal, "idle-heap-goal-MiB")
		b.ReportMetric(heapGoal(b, metrics), "110-heap-goal-MiB")
		b.ReportMetric(metricValue(b, metrics, "go_gc_gogc_percent"), "gogc")
	}
}
