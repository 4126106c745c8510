package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The node's network: its own namespace, which Main creates, so that the
// kubelet has a real (non-loopback) node IP, pods get addresses from a
// bridge CNI, and the node agent can own 169.254.169.254, all without a
// single address, route or iptables rule on the machine's own network.
const (
	// NodeIP is the node's address inside its namespace (on lo). The
	// kubelet serves on it, the apiserver reaches it for logs and exec,
	// and pods reach host-network pods through it.
	NodeIP = "10.243.0.2"
	// PodSubnet is where the bridge CNI gives pods their addresses;
	// PodGateway is the bridge's own.
	PodSubnet  = "10.244.0.0/24"
	PodGateway = "10.244.0.1"
	// Domain is the DNS zone the cluster's resolver answers: every name in
	// it is NodeIP. Nothing else resolves in the namespace.
	Domain = "e2e.test"
)

const (
	envNetns = "COFFER_E2E_NETNS"
	envRoot  = "COFFER_E2E_ROOT"
)

// Main runs the package's tests on a node of their own. In the calling
// process (the supervisor) it creates a directory and a network namespace,
// runs prepare (which may write into the directory: it still has the Go
// module proxy, the namespace has no network at all), then runs the same
// test binary again inside the namespace, where Start works. Once that
// ends, however it ends (a pass, a failure, a timeout's panic, a signal),
// the supervisor kills whatever is still running in the namespace or in a
// pod's namespace, unmounts what is mounted under the directory, deletes
// the namespace and the directory, and fails the run if it had to remove
// anything: the tests' own teardown must leave nothing behind.
func Main(m *testing.M, prepare func(root string) error) int {
	if os.Getenv(envNetns) != "" {
		net.DefaultResolver = resolver()
		return m.Run()
	}
	return supervise(prepare)
}

// Root is the directory that Main made for this run (inside the namespace).
func Root() string { return os.Getenv(envRoot) }

// Namespace is the node's network namespace, as `ip netns` names it.
func Namespace() string { return os.Getenv(envNetns) }

func supervise(prepare func(root string) error) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		return 1
	}
	if os.Geteuid() != 0 {
		return fail("the cluster runs containers in a network namespace of its own: run the tests as root")
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fail("%s is not installed (iproute2, util-linux): run scripts/deps.sh", bin)
		}
	}
	root, err := os.MkdirTemp("", "coffer-e2e-")
	if err != nil {
		return fail("%v", err)
	}
	name := filepath.Base(root)
	hostLinks := interfaceNames()

	code := func() int {
		if err := prepare(root); err != nil {
			return fail("%v", err)
		}
		if err := addNamespace(name); err != nil {
			return fail("creating the node's network namespace: %v", err)
		}
		fmt.Fprintf(os.Stderr, "e2e: the node's network namespace is %s (node IP %s, pods %s)\n", name, NodeIP, PodSubnet)
		return runInside(name, root)
	}()

	// The tests stopped the cluster themselves, unless they crashed: then
	// this is the only cleanup there is.
	left := sweep(name, root)
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		left = append(left, fmt.Sprintf("ip netns del %s: %v: %s", name, err, out))
	}
	if err := os.RemoveAll(root); err != nil {
		left = append(left, fmt.Sprintf("removing %s: %v", root, err))
	}
	if after := interfaceNames(); !slices.Equal(hostLinks, after) {
		left = append(left, fmt.Sprintf("the machine's network interfaces changed: %v before, %v after", hostLinks, after))
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: the tests left these behind (the supervisor removed them):\n  %s\n", strings.Join(left, "\n  "))
		return 1
	}
	return code
}

// addNamespace creates the node's namespace: lo up, with NodeIP on it.
func addNamespace(name string) error {
	for _, args := range [][]string{
		{"netns", "add", name},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "addr", "add", NodeIP + "/32", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// runInside runs this test binary again, with the same flags, in the
// namespace. nsenter switches the network namespace only: `ip netns exec`
// would also remount /sys, and the kubelet and runc need the machine's
// /sys/fs/cgroup.
func runInside(name, root string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// Every temporary file of the run (envtest's etcd data and
	// certificates, t.TempDir) goes under root too, so nothing outlives
	// the supervisor's sweep, not even after a crash.
	tmp := filepath.Join(root, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + name, "--", exe}, os.Args[1:]...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"="+name, envRoot+"="+root, "TMPDIR="+tmp)
	// If the supervisor dies, so does the run; the processes it started
	// die with it (Pdeathsig), and what survives is found by namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A ^C reaches both processes; the supervisor stays to clean up.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting the tests in the namespace:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "e2e: %v: stopping the tests, then cleaning up\n", s)
			cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &exit) && exit.ExitCode() > 0:
				return exit.ExitCode()
			default:
				fmt.Fprintln(os.Stderr, "e2e: the tests in the namespace:", err)
				return 1
			}
		}
	}
}

// sweep kills what still runs in the node's or a pod's namespace, or names
// root on its command line, and unmounts everything under root. It returns
// what it found.
func sweep(name, root string) []string {
	var left []string
	namespaces := clusterNamespaces(name, root)
	for pid, cmdline := range clusterProcesses(root, namespaces) {
		left = append(left, fmt.Sprintf("process %d: %s", pid, cmdline))
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(clusterProcesses(root, namespaces)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, m := range Mounts(root) {
		left = append(left, "mount "+m)
	}
	if err := unmountAll(root); err != nil {
		left = append(left, err.Error())
	}
	return left
}

// nsID identifies a namespace by its nsfs device and inode, as stat(2) of
// /proc/{pid}/ns/net or of a bind mount of it reports them.
type nsID struct{ dev, ino uint64 }

func nsOf(path string) (nsID, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// clusterNamespaces are the node's network namespace and the pods' (which
// containerd mounts under its state directory, inside root).
func clusterNamespaces(name, root string) map[nsID]bool {
	out := map[nsID]bool{}
	if id, ok := nsOf("/run/netns/" + name); ok {
		out[id] = true
	}
	for _, m := range mountsOfType(root, "nsfs") {
		if id, ok := nsOf(m); ok {
			out[id] = true
		}
	}
	return out
}

// clusterProcesses are the live processes, other than this one, that run
// in one of namespaces or name root on their command line (containerd's
// shims, which keep running in the machine's namespace after containerd).
func clusterProcesses(root string, namespaces map[nsID]bool) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if st, _ := os.ReadFile(filepath.Join(dir, "stat")); strings.Contains(string(st), ") Z ") {
			continue // a zombie holds nothing
		}
		b, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		id, ok := nsOf(filepath.Join(dir, "ns", "net"))
		if (ok && namespaces[id]) || (root != "" && strings.Contains(cmdline, root)) {
			out[pid] = cmdline
		}
	}
	return out
}

func interfaceNames() []string {
	ifs, _ := net.Interfaces()
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}
