// Package cluster runs a real single-node Kubernetes cluster for the e2e
// tests: etcd and kube-apiserver (through internal/kubetest),
// kube-controller-manager, kube-scheduler and a kubelet built from the Go
// module proxy by scripts/kube-assets.sh, and containerd, runc and the CNI
// plugins from Debian. Every process is started by this package and
// stopped by pid, every mount under its directory is unmounted, even when
// a test fails.
//
// The node runs in a network namespace of its own (see Main), with a
// bridge CNI for its pods and a resolver for its names, so that nothing
// listens on, or routes to, the machine's own network. The machine's other
// constraints (DESIGN §5) shape the rest: cgroup v1, no registry (images
// come from tarballs, imagePullPolicy Never), and runc may not lower
// oom_score_adj.
package cluster

import (
	"bytes"
	"context"
	"fmt"
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
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
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
	dns   *dnsServer
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and its log is closed
}

// Options tune the cluster.
type Options struct {
	// Images are docker-archive tarballs to import into containerd; one
	// must be PauseImage.
	Images []string
	// CRDs are installed into the apiserver.
	CRDs []string
}

// Start starts the cluster and stops it when the test ends. It must run
// under Main, in the node's namespace.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if Namespace() == "" {
		t.Fatal("cluster.Start runs in the node's network namespace: call cluster.Main from TestMain")
	}
	assets, err := kubetest.AssetsDir()
	if err != nil {
		t.Fatalf("locating the Kubernetes binaries: %v; run scripts/kube-assets.sh or set KUBEBUILDER_ASSETS", err)
	}
	for _, bin := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			t.Fatalf("%s is missing from %s: run scripts/kube-assets.sh", bin, assets)
		}
	}
	for _, bin := range []string{"containerd", "runc", "ctr", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed: run scripts/deps.sh", bin)
		}
	}
	dir, err := os.MkdirTemp(Root(), "cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir, KubeletDir: filepath.Join(dir, "kubelet"), PodLogs: filepath.Join(dir, "pods"),
		Containerd: filepath.Join(dir, "containerd.sock"), t: t}
	t.Cleanup(c.removeDir)
	t.Logf("e2e: cluster directory %s", dir)

	if c.dns, err = startDNS(); err != nil {
		t.Fatalf("e2e: the node's resolver on %s:53: %v", NodeIP, err)
	}
	t.Cleanup(c.dns.Close)

	t.Log("e2e: starting etcd and kube-apiserver")
	// On the node's address, not loopback: pods reach it there (a server
	// pod's init container, the issuer's discovery), as on a real node.
	c.Kube = kubetest.Start(t, kubetest.Options{Address: NodeIP, CRDDirectoryPaths: o.CRDs, APIServerFlags: map[string][]string{
		// envtest turns the ServiceAccount admission plugin off; a real
		// node's pods need it for their service-account token volume.
		"enable-admission-plugins": {"ServiceAccount"}, "disable-admission-plugins": {""},
		// The node's hostname resolves nowhere: reach the kubelet (logs,
		// exec) at its address.
		"kubelet-preferred-address-types": {"InternalIP"},
		// No kube-proxy implements ClusterIPs: the apiserver calls
		// webhooks behind Services at their endpoints instead.
		"enable-aggregator-routing": {"true"},
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
	c.waitNodeReady()
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
	// are reparented, and found by their command line below).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
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
	// A bridge in the node's namespace, addresses from host-local (its
	// state in the cluster's directory), and no masquerade: there is no
	// outside to reach. The config is there before containerd starts, so
	// the node is Ready from its first status.
	conflist := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "e2e",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, PodSubnet, PodGateway, filepath.Join(c.Dir, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(cni, "10-e2e.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	// containerd's own defaults, edited as DESIGN §5 says: this machine
	// lets runc raise but not lower oom_score_adj, the sandbox image is the
	// one built here, Debian installs the CNI plugins in /usr/lib/cni, and
	// every path is the cluster's own, the pods' network namespaces too.
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
		{"netns_mounts_under_state_dir", "false", "true"},
		{"sandbox_image", `"registry.k8s.io/pause:3.6"`, fmt.Sprintf("%q", PauseImage)},
		{"bin_dir", `"/opt/cni/bin"`, `"/usr/lib/cni"`},
		{"conf_dir", `"/etc/cni/net.d"`, fmt.Sprintf("%q", cni)},
		// runc's state, and the opt plugin's directory.
		{"Root", `""`, fmt.Sprintf("%q", filepath.Join(c.Dir, "runc"))},
		{"path", `"/opt/containerd"`, fmt.Sprintf("%q", filepath.Join(c.Dir, "opt"))},
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
	// Pods resolve names through the node's resolver only.
	resolv := filepath.Join(c.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+NodeIP+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The kubelet serves on the node's address, so the apiserver reaches
	// it for logs and exec. It lets anonymous callers in (the apiserver
	// has no kubelet client certificate here): only the node's namespace
	// reaches that address, and pods are kept off the port below.
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
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
resolvConf: %s
`, NodeIP, c.Containerd, c.PodLogs, resolv)
	path := filepath.Join(c.Dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Pods reach the node's address (its resolver, Coffer's server), but
	// not the kubelet's port.
	if out, err := exec.Command("iptables", "-w", "-I", "INPUT", "-i", "cni0", "-p", "tcp", "--dport", "10250",
		"-j", "REJECT", "--reject-with", "tcp-reset").CombinedOutput(); err != nil {
		t.Fatalf("closing the kubelet's port to pods: %v: %s", err, out)
	}
	c.run("kubelet", bin, "--config", path, "--kubeconfig", kubeconfig, "--root-dir", c.KubeletDir,
		"--cert-dir", filepath.Join(c.Dir, "kubelet-pki"), "--hostname-override", NodeName, "--node-ip", NodeIP, "--v=2")
}

// waitNodeReady waits until the node has registered and is Ready: the
// CNI config is loaded, so pods can be scheduled onto it.
func (c *Cluster) waitNodeReady() {
	c.waitFor("the node to be Ready", 2*time.Minute, func() bool {
		n, err := c.Kube.Clientset.CoreV1().Nodes().Get(context.Background(), NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue
			}
		}
		return false
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

// WaitPod waits until the pod is Running with every container ready (or
// has succeeded).
func (c *Cluster) WaitPod(ns, name string, timeout time.Duration) *corev1.Pod {
	c.t.Helper()
	var p *corev1.Pod
	deadline := time.Now().Add(timeout)
	for {
		var err error
		p, err = c.Kube.Clientset.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && ((p.Status.Phase == corev1.PodRunning && allReady(*p)) || p.Status.Phase == corev1.PodSucceeded) {
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
		fmt.Fprintf(&b, "phase %s, node %q, IP %s", p.Status.Phase, p.Spec.NodeName, p.Status.PodIP)
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

// ContainerLog returns what a container's latest run printed, as `kubectl
// logs` shows it: through the apiserver, from the kubelet. It is empty
// until the container has started.
func (c *Cluster) ContainerLog(p *corev1.Pod, container string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := c.Kube.Clientset.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container}).Do(ctx).Raw()
	if err != nil {
		return ""
	}
	return strings.TrimRight(string(b), "\n")
}

// ContainerRunLog returns what run n of a container (0 is the first)
// printed, from the kubelet's pod logs directory
// ({ns}_{pod}_{uid}/{container}/{n}.log, CRI format) without each line's
// CRI prefix: the API keeps only the latest two runs.
func (c *Cluster) ContainerRunLog(p *corev1.Pod, container string, n int) string {
	b, err := os.ReadFile(filepath.Join(c.PodLogs, p.Namespace+"_"+p.Name+"_"+string(p.UID), container, fmt.Sprintf("%d.log", n)))
	if err != nil {
		return ""
	}
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		// {timestamp} {stream} {P|F} {text}
		if f := strings.SplitN(line, " ", 4); len(f) == 4 {
			out = append(out, f[3])
		}
	}
	return strings.Join(out, "\n")
}

// Exec runs a command in a container, as `kubectl exec` does (through the
// apiserver and the kubelet's streaming server), and returns what it wrote
// to stdout and stderr. err is set if the command failed or exited non-zero.
func (c *Cluster) Exec(ns, pod, container string, command ...string) (stdout, stderr string, err error) {
	req := c.Kube.Clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewWebSocketExecutor(c.Kube.Config, "GET", req.URL().String())
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	return out.String(), errOut.String(), err
}

// stop tears everything down: the kubelet first (so it starts nothing
// more), then the containers, containerd, and the control plane; then
// every mount under the directory; then the directory.
func (c *Cluster) stop() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	// Found before anything is unmounted: a pod's namespace is known by
	// its mount under containerd's state directory.
	namespaces := clusterNamespaces(Namespace(), c.Dir)
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
			if out, err := exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).CombinedOutput(); err != nil {
				c.t.Logf("e2e: ctr tasks kill %s: %v: %s", id, err, out)
			}
		}
		time.Sleep(500 * time.Millisecond)
		for _, id := range ctr("tasks", "ls") {
			if out, err := exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "tasks", "delete", "-f", id).CombinedOutput(); err != nil {
				c.t.Logf("e2e: ctr tasks delete %s: %v: %s", id, err, out)
			}
		}
		kill(byName["containerd"])
	}
	// The shims outlive containerd by design: found by their socket
	// address, which names this cluster's directory.
	for pid, cmdline := range clusterProcesses(c.Dir, nil) {
		if strings.Contains(cmdline, "containerd-shim") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, p := range procs {
		kill(p)
	}
	// Whatever a dead shim left running in a pod's namespace.
	for pid := range clusterProcesses("", podNamespaces(namespaces)) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := unmountAll(c.Dir); err != nil {
		c.t.Errorf("e2e: %v", err)
	}
}

// podNamespaces is namespaces without the node's own (this process runs
// there).
func podNamespaces(namespaces map[nsID]bool) map[nsID]bool {
	node, _ := nsOf("/proc/self/ns/net")
	out := map[nsID]bool{}
	for id := range namespaces {
		if id != node {
			out[id] = true
		}
	}
	return out
}

// removeDir removes the cluster's directory, once nothing is mounted in
// it: never while something is, or it would remove what the mount holds.
func (c *Cluster) removeDir() {
	if err := unmountAll(c.Dir); err != nil {
		c.t.Errorf("e2e: %v; %s is kept", err, c.Dir)
		return
	}
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
}

// Footprint is what a cluster's processes are known by, taken while it
// runs: the node's network namespace and the pods', the cluster's
// directory on a command line, and descent from either. A pod's namespace
// is found by its mount, which teardown removes, so a check made after
// teardown must use a footprint taken before.
type Footprint struct {
	dir        string
	namespaces map[nsID]bool
}

// Footprint takes the cluster's footprint now.
func (c *Cluster) Footprint() Footprint {
	return Footprint{c.Dir, clusterNamespaces(Namespace(), c.Dir)}
}

// Processes returns the live processes of the footprint, other than this
// one.
func (f Footprint) Processes() []string {
	return describe(clusterProcesses(f.dir, f.namespaces))
}

// PodProcesses returns the live processes in the pods' namespaces.
func (f Footprint) PodProcesses() []string {
	return describe(clusterProcesses("", podNamespaces(f.namespaces)))
}

func describe(procs map[int]string) []string {
	var out []string
	for pid, cmdline := range procs {
		out = append(out, fmt.Sprintf("%d: %s", pid, cmdline))
	}
	return out
}
