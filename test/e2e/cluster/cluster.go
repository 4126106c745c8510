// Package cluster runs a real single-node Kubernetes cluster for the e2e
// tests: etcd and kube-apiserver (through internal/kubetest),
// kube-controller-manager, kube-scheduler and a kubelet built from the Go
// module proxy by scripts/kube-assets.sh, and containerd and runc from
// Debian. Every process is started by this package and stopped by pid,
// every mount under its directory is unmounted, even when a test fails.
//
// The machine's constraints (DESIGN §5) shape it: cgroup v1, no registry
// (images come from tarballs, imagePullPolicy Never), runc may not lower
// oom_score_adj, and the kubelet will not take a loopback node IP, so it
// gets the host's address as its node IP but serves only on loopback:
// `kubectl logs` cannot reach it, and tests read containers' logs from the
// pod logs directory instead.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/mount-utils"

	"github.com/cofferhq/coffer/internal/kubetest"
)

// NodeName is the node's name.
const NodeName = "e2e-node"

// PauseImage is the sandbox image the harness builds.
const PauseImage = "coffer.local/pause:e2e"

// Cluster is a running single-node cluster.
type Cluster struct {
	Kube *kubetest.Env
	// Dir holds everything the cluster writes.
	Dir string
	// KubeletDir is the kubelet's root directory (its plugins,
	// plugins_registry and pods).
	KubeletDir string
	// PodLogs is the kubelet's pod logs directory.
	PodLogs string
	// Containerd is containerd's socket.
	Containerd string

	t     testing.TB
	mu    sync.Mutex
	procs []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

// Options tune the cluster.
type Options struct {
	// Images are docker-archive tarballs to import into containerd; one
	// must be PauseImage.
	Images []string
	// CRDs are installed into the apiserver.
	CRDs []string
}

// Start starts the cluster and stops it when the test ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the e2e cluster runs containers and must run as root")
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	for _, bin := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			t.Fatalf("%s is missing from KUBEBUILDER_ASSETS (%s): run scripts/kube-assets.sh", bin, assets)
		}
	}
	for _, bin := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed: run scripts/deps.sh", bin)
		}
	}
	dir, err := os.MkdirTemp("", "e2e-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir, KubeletDir: filepath.Join(dir, "kubelet"), PodLogs: filepath.Join(dir, "pods"),
		Containerd: filepath.Join(dir, "containerd.sock"), t: t}
	t.Cleanup(c.removeDir)
	t.Logf("e2e: cluster directory %s", dir)

	t.Log("e2e: starting etcd and kube-apiserver")
	// envtest turns the ServiceAccount admission plugin off; a real node's
	// pods need it for their service-account token volume.
	c.Kube = kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: o.CRDs, APIServerFlags: map[string][]string{
		"enable-admission-plugins": {"ServiceAccount"}, "disable-admission-plugins": {""},
	}})
	// Cleanups run last-in first-out: the node and controllers stop
	// before the apiserver they watch.
	t.Cleanup(c.stop)
	// In the cluster's directory, so every process's command line names it.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if b, err := os.ReadFile(c.Kube.KubeconfigFile(t)); err != nil || os.WriteFile(kubeconfig, b, 0o600) != nil {
		t.Fatalf("writing the kubeconfig: %v", err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, c.Kube.CAData, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Log("e2e: starting kube-controller-manager and kube-scheduler")
	c.run("kube-controller-manager", filepath.Join(assets, "kube-controller-manager"), "--kubeconfig", kubeconfig,
		"--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--root-ca-file", caFile,
		"--controllers=*,-nodeipam,-service-lb-controller,-route,-cloud-node-lifecycle")
	c.run("kube-scheduler", filepath.Join(assets, "kube-scheduler"), "--kubeconfig", kubeconfig,
		"--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0")

	t.Log("e2e: starting containerd")
	c.startContainerd()
	for _, img := range o.Images {
		if out, err := exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "images", "import", "--no-unpack=false", img).CombinedOutput(); err != nil {
			t.Fatalf("ctr images import %s: %v\n%s", img, err, out)
		}
	}

	t.Log("e2e: starting the kubelet")
	c.startKubelet(filepath.Join(assets, "kubelet"), kubeconfig)
	c.waitNode()
	return c
}

// run starts a process whose output goes to {dir}/{name}.log.
func (c *Cluster) run(name, bin string, args ...string) {
	c.t.Helper()
	f, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so a stop reaches its children (runc shims
	// are reparented, and reaped by name below).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: f, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
}

// Log returns the last lines of a process's log, for failure messages.
func (c *Cluster) Log(name string, lines int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func (c *Cluster) startContainerd() {
	t := c.t
	root, state := filepath.Join(c.Dir, "containerd-root"), filepath.Join(c.Dir, "containerd-state")
	cni := filepath.Join(c.Dir, "cni")
	if err := os.MkdirAll(cni, 0o755); err != nil {
		t.Fatal(err)
	}
	// containerd's own defaults, edited as DESIGN §5 says: this machine
	// lets runc raise but not lower oom_score_adj, the sandbox image is the
	// one built here, Debian installs the CNI plugins in /usr/lib/cni, and
	// every path is the cluster's own.
	def, err := exec.Command("containerd", "config", "default").Output()
	if err != nil {
		t.Fatalf("containerd config default: %v", err)
	}
	cfg := string(def)
	for _, r := range []struct{ key, from, to string }{
		{"root", `"/var/lib/containerd"`, fmt.Sprintf("%q", root)},
		{"state", `"/run/containerd"`, fmt.Sprintf("%q", state)},
		{"address", `"/run/containerd/containerd.sock"`, fmt.Sprintf("%q", c.Containerd)},
		{"restrict_oom_score_adj", "false", "true"},
		{"sandbox_image", `"registry.k8s.io/pause:3.6"`, fmt.Sprintf("%q", PauseImage)},
		{"bin_dir", `"/opt/cni/bin"`, `"/usr/lib/cni"`},
		{"conf_dir", `"/etc/cni/net.d"`, fmt.Sprintf("%q", cni)},
	} {
		old := r.key + " = " + r.from
		if !strings.Contains(cfg, old) {
			t.Fatalf("containerd's default config has no %s: its format changed", old)
		}
		cfg = strings.Replace(cfg, old, r.key+" = "+r.to, 1)
	}
	path := filepath.Join(c.Dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.run("containerd", "containerd", "--config", path)
	c.waitFor("containerd's socket", 30*time.Second, func() bool {
		return exec.Command("ctr", "--address", c.Containerd, "version").Run() == nil
	}, "containerd")
}

func (c *Cluster) startKubelet(bin, kubeconfig string) {
	t := c.t
	for _, d := range []string{c.KubeletDir, c.PodLogs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Volume mounts made by the CSI driver must reach the kubelet's view
	// (Bidirectional propagation needs a shared mount).
	if err := exec.Command("mount", "--bind", c.KubeletDir, c.KubeletDir).Run(); err != nil {
		t.Fatalf("bind-mounting the kubelet directory: %v", err)
	}
	if out, err := exec.Command("mount", "--make-rshared", c.KubeletDir).CombinedOutput(); err != nil {
		t.Fatalf("making the kubelet directory shared: %v: %s", err, out)
	}
	healthz := freePort(t)
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
syncFrequency: 10s
resolvConf: ""
`, freePort(t), healthz, c.Containerd, c.PodLogs)
	path := filepath.Join(c.Dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.run("kubelet", bin, "--config", path, "--kubeconfig", kubeconfig, "--root-dir", c.KubeletDir,
		"--hostname-override", NodeName, "--node-ip", nodeIP(t), "--v=2")
}

// waitNode waits until the node has registered.
func (c *Cluster) waitNode() {
	c.waitFor("the node to register", 2*time.Minute, func() bool {
		_, err := c.Kube.Clientset.CoreV1().Nodes().Get(context.Background(), NodeName, metav1.GetOptions{})
		return err == nil
	}, "kubelet")
}

func (c *Cluster) waitFor(what string, timeout time.Duration, cond func() bool, logOf string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("e2e: timed out waiting for %s; %s's log ends:\n%s", what, logOf, c.Log(logOf, 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitPod waits until the pod is Running (or has succeeded).
func (c *Cluster) WaitPod(ns, name string, timeout time.Duration) *corev1.Pod {
	c.t.Helper()
	var p *corev1.Pod
	deadline := time.Now().Add(timeout)
	for {
		var err error
		p, err = c.Kube.Clientset.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && (p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded) {
			return p
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("e2e: pod %s/%s did not run: %s\nthe kubelet's log ends:\n%s", ns, name, c.Describe(ns, name), c.Log("kubelet", 30))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// WaitPodsOf waits until n pods of ns matching the label selector run with
// every container ready.
func (c *Cluster) WaitPodsOf(ns, selector string, n int, timeout time.Duration) []corev1.Pod {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.Kube.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		ready := 0
		if err == nil {
			for _, p := range l.Items {
				if p.Status.Phase == corev1.PodRunning && allReady(p) {
					ready++
				}
			}
			if ready >= n {
				return l.Items
			}
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if err == nil {
				for _, p := range l.Items {
					fmt.Fprintf(&b, "\n%s: %s", p.Name, c.Describe(ns, p.Name))
					for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
						fmt.Fprintf(&b, "\n  %s log:\n%s", cs.Name, c.ContainerLog(&p, cs.Name))
					}
				}
			}
			c.t.Fatalf("e2e: %d of %d pods %s in %s ready:%s\nthe kubelet's log ends:\n%s", ready, n, selector, ns, b.String(), c.Log("kubelet", 20))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Logs returns every container log of ns's pods, for failure messages.
func (c *Cluster) Logs(ns string) string {
	l, err := c.Kube.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range l.Items {
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			fmt.Fprintf(&b, "--- %s/%s (restarts %d):\n%s\n", p.Name, cs.Name, cs.RestartCount, c.ContainerLog(&p, cs.Name))
		}
	}
	return b.String()
}

func allReady(p corev1.Pod) bool {
	if len(p.Status.ContainerStatuses) == 0 {
		return false
	}
	for _, cs := range p.Status.ContainerStatuses {
		if !cs.Ready {
			return false
		}
	}
	return true
}

// Describe summarizes a pod's status and events, for failure messages.
func (c *Cluster) Describe(ns, name string) string {
	ctx := context.Background()
	var b strings.Builder
	if p, err := c.Kube.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
		fmt.Fprintf(&b, "phase %s, node %q", p.Status.Phase, p.Spec.NodeName)
		for _, cond := range p.Status.Conditions {
			fmt.Fprintf(&b, "; %s=%s %s", cond.Type, cond.Status, cond.Message)
		}
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil {
				fmt.Fprintf(&b, "; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
			}
			if t := cs.State.Terminated; t != nil {
				fmt.Fprintf(&b, "; %s terminated: %s (%d) %s", cs.Name, t.Reason, t.ExitCode, t.Message)
			}
		}
	}
	if evs, err := c.Kube.Clientset.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name}); err == nil {
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "\n  event %s %s: %s", e.Type, e.Reason, e.Message)
		}
	}
	return b.String()
}

// ContainerLog returns what a container's latest run printed, from the
// kubelet's pod logs directory ({ns}_{pod}_{uid}/{container}/{n}.log, CRI
// format), without the CRI prefix of each line.
func (c *Cluster) ContainerLog(p *corev1.Pod, container string) string {
	return c.ContainerRunLog(p, container, -1)
}

// ContainerRunLog is ContainerLog for run n of the container (0 is the
// first; -1 the newest).
func (c *Cluster) ContainerRunLog(p *corev1.Pod, container string, n int) string {
	// {restart count}.log
	dir := filepath.Join(c.PodLogs, p.Namespace+"_"+p.Name+"_"+string(p.UID), container)
	name := fmt.Sprintf("%d.log", n)
	if n < 0 {
		name = ""
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			var i int
			if _, err := fmt.Sscanf(e.Name(), "%d.log", &i); err == nil && i > n {
				name, n = e.Name(), i
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if name == "" || err != nil {
		return ""
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		// {timestamp} {stream} {P|F} {text}
		if f := strings.SplitN(sc.Text(), " ", 4); len(f) == 4 {
			out = append(out, f[3])
		}
	}
	return strings.Join(out, "\n")
}

// stop tears everything down: the kubelet first (so it starts nothing
// more), then the containers, containerd, and the control plane; then
// every mount under the directory; then the directory.
func (c *Cluster) stop() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	byName := map[string]*proc{}
	for _, p := range procs {
		byName[p.name] = p
	}
	if p := byName["kubelet"]; p != nil {
		kill(p)
	}
	if _, ok := byName["containerd"]; ok {
		// Stop the pods' containers while containerd still answers.
		ctr := func(args ...string) []string {
			out, _ := exec.Command("ctr", append([]string{"--address", c.Containerd, "-n", "k8s.io"}, args...)...).Output()
			var ids []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if f := strings.Fields(l); len(f) > 0 && f[0] != "TASK" && f[0] != "CONTAINER" {
					ids = append(ids, f[0])
				}
			}
			return ids
		}
		for _, id := range ctr("tasks", "ls") {
			exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
		}
		time.Sleep(500 * time.Millisecond)
		for _, id := range ctr("tasks", "ls") {
			exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "tasks", "delete", "-f", id).Run()
		}
		kill(byName["containerd"])
	}
	// The shims outlive containerd by design: find them by their socket
	// address, which names this cluster's directory.
	killShims(c.Dir)
	for _, p := range procs {
		kill(p)
	}
	unmountUnder(c.t, c.Dir)
}

// removeDir removes the cluster's directory, once nothing is mounted in it.
func (c *Cluster) removeDir() {
	unmountUnder(c.t, c.Dir)
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("e2e: removing %s: %v", c.Dir, err)
	}
}

func kill(p *proc) {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	p.log.Close()
}

// killShims kills containerd-shim processes whose command line names dir.
func killShims(dir string) {
	for pid, cmdline := range processes(dir) {
		if strings.Contains(cmdline, "containerd-shim") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Processes returns the command lines of live processes that name dir:
// every process the cluster starts does.
func Processes(dir string) []string {
	var out []string
	for pid, cmdline := range processes(dir) {
		out = append(out, fmt.Sprintf("%d: %s", pid, cmdline))
	}
	return out
}

func processes(dir string) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		s := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		if strings.Contains(s, dir) {
			if st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); strings.Contains(string(st), ") Z ") {
				continue // a zombie holds nothing
			}
			out[pid] = s
		}
	}
	return out
}

// Mounts returns the mount points under dir, deepest first.
func Mounts(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func unmountUnder(t testing.TB, dir string) {
	m := mount.New("")
	for range 3 { // shared mounts can reappear once
		ms := Mounts(dir)
		if len(ms) == 0 {
			return
		}
		for _, p := range ms {
			if err := m.Unmount(p); err != nil {
				syscall.Unmount(p, syscall.MNT_DETACH)
			}
		}
	}
	if left := Mounts(dir); len(left) > 0 {
		t.Errorf("e2e: mounts left behind: %v", left)
	}
}

func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// nodeIP is the host's first non-loopback IPv4 address: the kubelet
// refuses a loopback node IP. Nothing binds to it.
func nodeIP(t testing.TB) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Fatal("the host has no non-loopback IPv4 address for the kubelet's node IP")
	return ""
}
