// Package localcluster runs a real single-node Kubernetes cluster: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet
// built from the Go module proxy by scripts/kube-assets.sh, and
// containerd, runc and the CNI plugins from Debian. Every process is
// started by this package and stopped by pid, and every mount under its
// directory is unmounted, whatever way Start or the cluster's user fails.
//
// The node runs in a network namespace of its own (see Sandbox), with a
// bridge CNI for its pods and a resolver for its names, so that nothing
// listens on, or routes to, the machine's own network. The machine's other
// constraints (DESIGN §5) shape the rest: cgroup v1, no registry (images
// come from tarballs, imagePullPolicy Never), and runc may not lower
// oom_score_adj.
package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// NodeName is the node's name.
const NodeName = "e2e-node"

// PauseImage is the sandbox image the cluster's containerd uses; one of
// Options.Images must be it.
const PauseImage = "coffer.local/pause:e2e"

// ErrNotInSandbox means Start ran outside the node's network namespace.
var ErrNotInSandbox = errors.New("the cluster runs in the node's network namespace: start it from a process that Sandbox.Run started")

// Cluster is a running single-node cluster.
type Cluster struct {
	// Config authenticates as the cluster's administrator (a client
	// certificate in group system:masters).
	Config *rest.Config
	// Client and Clientset use Config; Client's scheme is Scheme (the
	// built-in types and apiextensions).
	Client    client.Client
	Clientset kubernetes.Interface
	Scheme    *runtime.Scheme
	// Issuer is the service-account token issuer, the apiserver's URL; its
	// discovery document and key set are readable without credentials.
	Issuer string
	// CAData is the PEM CA of the apiserver's serving certificate.
	CAData []byte
	// Kubeconfig is a kubeconfig file with the administrator's
	// credentials, in Dir.
	Kubeconfig string

	// Dir holds everything the cluster writes.
	Dir string
	// KubeletDir is the kubelet's root directory (its plugins,
	// plugins_registry and pods).
	KubeletDir string
	// PodLogs is the kubelet's pod logs directory.
	PodLogs string
	// Containerd is containerd's socket.
	Containerd string

	log    func(format string, args ...any)
	mu     sync.Mutex
	procs  []*proc
	dns    *dnsServer
	closed bool
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and its log is closed
}

// Options tune the cluster.
type Options struct {
	// Assets is the directory of the Kubernetes binaries (etcd,
	// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet).
	Assets string
	// Images are docker-archive tarballs to import into containerd; one
	// must be PauseImage.
	Images []string
	// Dir is where the cluster makes its directory (default: the
	// sandbox's root).
	Dir string
	// Zone is the DNS zone the node's resolver answers with the node's
	// address, for itself and every name under it (default Domain).
	Zone string
	// Log reports progress (default: none).
	Log func(format string, args ...any)
}

// Start starts the cluster. It runs in the node's namespace (under a
// Sandbox). On an error, whatever it started is stopped again.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if Namespace() == "" {
		return nil, ErrNotInSandbox
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(o.Assets, bin)); err != nil {
			return nil, fmt.Errorf("%s is missing from %s: build it with scripts/kube-assets.sh", bin, o.Assets)
		}
	}
	for _, bin := range []string{"containerd", "runc", "ctr", "iptables", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed: run scripts/deps.sh", bin)
		}
	}
	parent := o.Dir
	if parent == "" {
		parent = Root()
	}
	dir, err := os.MkdirTemp(parent, "cluster-")
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, KubeletDir: filepath.Join(dir, "kubelet"), PodLogs: filepath.Join(dir, "pods"),
		Containerd: filepath.Join(dir, "containerd.sock"), log: o.Log}
	if c.log == nil {
		c.log = func(string, ...any) {}
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
			c = nil
		}
	}()
	c.log("cluster directory %s", dir)

	zone := o.Zone
	if zone == "" {
		zone = Domain
	}
	if c.dns, err = startDNS(zone); err != nil {
		return c, fmt.Errorf("the node's resolver on %s:53: %w", NodeIP, err)
	}

	c.log("starting etcd and kube-apiserver")
	if err := c.startControlPlane(ctx, o.Assets); err != nil {
		return c, err
	}

	c.log("starting kube-controller-manager and kube-scheduler")
	caFile := filepath.Join(dir, "pki", "ca.crt")
	if err := c.run("kube-controller-manager", filepath.Join(o.Assets, "kube-controller-manager"), "--kubeconfig", c.Kubeconfig,
		"--authentication-kubeconfig", c.Kubeconfig, "--authorization-kubeconfig", c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--root-ca-file", caFile,
		"--controllers=*,-nodeipam,-service-lb-controller,-route,-cloud-node-lifecycle"); err != nil {
		return c, err
	}
	if err := c.run("kube-scheduler", filepath.Join(o.Assets, "kube-scheduler"), "--kubeconfig", c.Kubeconfig,
		"--authentication-kubeconfig", c.Kubeconfig, "--authorization-kubeconfig", c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"); err != nil {
		return c, err
	}

	c.log("starting containerd")
	if err := c.startContainerd(ctx); err != nil {
		return c, err
	}
	for _, img := range o.Images {
		if out, err := exec.CommandContext(ctx, "ctr", "--address", c.Containerd, "-n", "k8s.io", "images", "import", "--no-unpack=false", img).CombinedOutput(); err != nil {
			return c, fmt.Errorf("ctr images import %s: %v\n%s", img, err, out)
		}
	}

	c.log("starting the kubelet")
	if err := c.startKubelet(filepath.Join(o.Assets, "kubelet")); err != nil {
		return c, err
	}
	return c, c.waitNodeReady(ctx)
}

// run starts a process whose output goes to {dir}/{name}.log.
func (c *Cluster) run(name, bin string, args ...string) error {
	f, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so a stop reaches its children (runc shims
	// are reparented, and found by their command line below).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
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

func (c *Cluster) startContainerd(ctx context.Context) error {
	root, state := filepath.Join(c.Dir, "containerd-root"), filepath.Join(c.Dir, "containerd-state")
	cni := filepath.Join(c.Dir, "cni")
	if err := os.MkdirAll(cni, 0o755); err != nil {
		return err
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
		return err
	}
	// containerd's own defaults, edited as DESIGN §5 says: this machine
	// lets runc raise but not lower oom_score_adj, the sandbox image is the
	// one built here, Debian installs the CNI plugins in /usr/lib/cni, and
	// every path is the cluster's own, the pods' network namespaces too.
	def, err := exec.CommandContext(ctx, "containerd", "config", "default").Output()
	if err != nil {
		return fmt.Errorf("containerd config default: %w", err)
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
			return fmt.Errorf("containerd's default config has no %s: its format changed", old)
		}
		cfg = strings.Replace(cfg, old, r.key+" = "+r.to, 1)
	}
	path := filepath.Join(c.Dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	if err := c.run("containerd", "containerd", "--config", path); err != nil {
		return err
	}
	return c.waitFor(ctx, "containerd's socket", 30*time.Second, func() bool {
		return exec.Command("ctr", "--address", c.Containerd, "version").Run() == nil
	}, "containerd")
}

func (c *Cluster) startKubelet(bin string) error {
	for _, d := range []string{c.KubeletDir, c.PodLogs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Volume mounts made by the CSI driver must reach the kubelet's view
	// (Bidirectional propagation needs a shared mount).
	if out, err := exec.Command("mount", "--bind", c.KubeletDir, c.KubeletDir).CombinedOutput(); err != nil {
		return fmt.Errorf("bind-mounting the kubelet directory: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "--make-rshared", c.KubeletDir).CombinedOutput(); err != nil {
		return fmt.Errorf("making the kubelet directory shared: %v: %s", err, out)
	}
	// Pods resolve names through the node's resolver only.
	resolv := filepath.Join(c.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+NodeIP+"\n"), 0o644); err != nil {
		return err
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
		return err
	}
	// Pods reach the node's address (its resolver, Coffer's server), but
	// not the kubelet's port.
	if out, err := exec.Command("iptables", "-w", "-I", "INPUT", "-i", "cni0", "-p", "tcp", "--dport", "10250",
		"-j", "REJECT", "--reject-with", "tcp-reset").CombinedOutput(); err != nil {
		return fmt.Errorf("closing the kubelet's port to pods: %v: %s", err, out)
	}
	return c.run("kubelet", bin, "--config", path, "--kubeconfig", c.Kubeconfig, "--root-dir", c.KubeletDir,
		"--cert-dir", filepath.Join(c.Dir, "kubelet-pki"), "--hostname-override", NodeName, "--node-ip", NodeIP, "--v=2")
}

// waitNodeReady waits until the node has registered and is Ready: the
// CNI config is loaded, so pods can be scheduled onto it.
func (c *Cluster) waitNodeReady(ctx context.Context) error {
	return c.waitFor(ctx, "the node to be Ready", 2*time.Minute, func() bool {
		n, err := c.Clientset.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
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

// TimeoutError is a wait that ran out, with what the cluster said
// meanwhile.
type TimeoutError struct {
	What   string
	Detail string
}

func (e *TimeoutError) Error() string { return "timed out waiting for " + e.What + e.Detail }

func (c *Cluster) waitFor(ctx context.Context, what string, timeout time.Duration, cond func() bool, logOf string) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return &TimeoutError{what, fmt.Sprintf("; %s's log ends:\n%s", logOf, c.Log(logOf, 40))}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// WaitPod waits until the pod is Running with every container ready (or
// has succeeded).
func (c *Cluster) WaitPod(ctx context.Context, ns, name string, timeout time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, err := c.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && ((p.Status.Phase == corev1.PodRunning && allReady(*p)) || p.Status.Phase == corev1.PodSucceeded) {
			return p, nil
		}
		if time.Now().After(deadline) {
			return nil, &TimeoutError{fmt.Sprintf("pod %s/%s to run", ns, name),
				fmt.Sprintf(": %s\nthe kubelet's log ends:\n%s", c.Describe(ns, name), c.Log("kubelet", 30))}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitPodsOf waits until n pods of ns matching the label selector run with
// every container ready, and returns the pods it found.
func (c *Cluster) WaitPodsOf(ctx context.Context, ns, selector string, n int, timeout time.Duration) ([]corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		ready := 0
		if err == nil {
			for _, p := range l.Items {
				if p.Status.Phase == corev1.PodRunning && allReady(p) {
					ready++
				}
			}
			if ready >= n {
				return l.Items, nil
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
			return nil, &TimeoutError{fmt.Sprintf("%d pods %s in %s to be ready (%d are)", n, selector, ns, ready),
				fmt.Sprintf(":%s\nthe kubelet's log ends:\n%s", b.String(), c.Log("kubelet", 20))}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Logs returns every container log of ns's pods, for failure messages.
func (c *Cluster) Logs(ns string) string {
	l, err := c.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
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
	if p, err := c.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
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
	if evs, err := c.Clientset.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name}); err == nil {
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
	b, err := c.Clientset.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: container}).Do(ctx).Raw()
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
	req := c.Clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewWebSocketExecutor(c.Config, "GET", req.URL().String())
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	return out.String(), errOut.String(), err
}

// Stop tears everything down: the kubelet first (so it starts nothing
// more), then the containers, containerd, the controllers, the apiserver
// and etcd; then every mount under the directory; then the directory. It
// may be called more than once; it reports what it could not remove.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
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
				c.log("ctr tasks kill %s: %v: %s", id, err, out)
			}
		}
		time.Sleep(500 * time.Millisecond)
		for _, id := range ctr("tasks", "ls") {
			if out, err := exec.Command("ctr", "--address", c.Containerd, "-n", "k8s.io", "tasks", "delete", "-f", id).CombinedOutput(); err != nil {
				c.log("ctr tasks delete %s: %v: %s", id, err, out)
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
	// The rest in the reverse order of their start: the apiserver
	// before etcd.
	for _, p := range slices.Backward(procs) {
		kill(p)
	}
	// Whatever a dead shim left running in a pod's namespace.
	for pid := range clusterProcesses("", podNamespaces(namespaces)) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	// A killed process takes a moment to go (its mounts and namespaces
	// are torn down on exit): wait for the shims and the pods' processes,
	// so that whoever checks after Stop finds none still dying.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		left := len(clusterProcesses("", podNamespaces(namespaces)))
		for _, cmdline := range clusterProcesses(c.Dir, nil) {
			if strings.Contains(cmdline, "containerd-shim") {
				left++
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c.dns != nil {
		c.dns.Close()
	}
	// The directory goes once nothing is mounted in it: never while
	// something is, or it would remove what the mount holds.
	if err := unmountAll(c.Dir); err != nil {
		return fmt.Errorf("%w; %s is kept", err, c.Dir)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		return fmt.Errorf("removing %s: %w", c.Dir, err)
	}
	return nil
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
