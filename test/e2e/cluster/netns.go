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
	envNetns     = "COFFER_E2E_NETNS"
	envRoot      = "COFFER_E2E_ROOT"
	envHostMntNS = "COFFER_E2E_HOST_MNTNS"
)

// overlays are the machine's directories that the node's programs write to
// at fixed paths, whatever their configuration says: containerd's shim
// sockets (/run/containerd/s), the kubelet's device-plugin socket,
// libcni's result cache and the kubelet's /var/log/containers links. The
// inner run has a mount namespace of its own, where a directory of the run
// is bound over each, so none of it reaches the machine.
var overlays = []string{"/run/containerd", "/var/lib/kubelet", "/var/lib/cni", "/var/log/containers"}

// Main runs the package's tests on a node of their own. In the calling
// process (the supervisor) it creates a directory and a network namespace,
// runs prepare (which may write into the directory: it still has the Go
// module proxy, the namespace has no network at all), then runs the same
// test binary again inside the namespace, in a mount namespace of its own,
// where Start works. Once that ends, however it ends (a pass, a failure, a
// timeout's panic, a signal), the supervisor kills whatever is still
// running in the node's namespace or descends from it, removes the cgroups
// of containers that were never deleted, deletes the namespace and the
// directory, checks that the machine's directories and interfaces are as
// they were, and fails the run if it had to remove anything or found a
// change: the tests' own teardown must leave nothing behind.
func Main(m *testing.M, prepare func(root string) error) int {
	if os.Getenv(envNetns) != "" {
		if err := bindOverlays(Root()); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
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
	for _, bin := range []string{"ip", "nsenter", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fail("%s is not installed (iproute2, util-linux): run scripts/deps.sh", bin)
		}
	}
	// From here on a ^C (which reaches the whole process group, the image
	// builds and the inner run too) stops the run but not the cleanup.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	root, err := os.MkdirTemp("", "coffer-e2e-")
	if err != nil {
		return fail("%v", err)
	}
	name := filepath.Base(root)
	hostLinks := interfaceNames()
	made, err := mountPoints(overlays)
	defer removeEmpty(made)
	if err != nil {
		os.RemoveAll(root)
		return fail("%v", err)
	}
	hostFiles := listings(overlays)
	hostCgroups := cgroupParents()

	code := func() int {
		if err := prepare(root); err != nil {
			return fail("%v", err)
		}
		if err := addNamespace(name); err != nil {
			return fail("creating the node's network namespace: %v", err)
		}
		fmt.Fprintf(os.Stderr, "e2e: the node's network namespace is %s (node IP %s, pods %s)\n", name, NodeIP, PodSubnet)
		return runInside(name, root, sigs)
	}()

	// The tests stopped the cluster themselves, unless they crashed: then
	// this is the only cleanup there is.
	left := sweep(name, root)
	left = append(left, removeCgroups(root, hostCgroups)...)
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		left = append(left, fmt.Sprintf("ip netns del %s: %v: %s", name, err, out))
	}
	if err := os.RemoveAll(root); err != nil {
		left = append(left, fmt.Sprintf("removing %s: %v", root, err))
	}
	if after := interfaceNames(); !slices.Equal(hostLinks, after) {
		left = append(left, fmt.Sprintf("the machine's network interfaces changed: %v before, %v after", hostLinks, after))
	}
	for dir, before := range hostFiles {
		if after := listing(dir); !slices.Equal(before, after) {
			left = append(left, fmt.Sprintf("%s changed: %v before, %v after", dir, before, after))
		}
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
// namespace and in a mount namespace of its own, whose mounts do not
// propagate back (so they all go when its last process does). nsenter
// switches the network namespace only: `ip netns exec` would also remount
// /sys, and the kubelet and runc need the machine's /sys/fs/cgroup.
func runInside(name, root string, sigs <-chan os.Signal) int {
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
	mnt, _ := nsOf("/proc/self/ns/mnt")
	args := append([]string{"--net=/run/netns/" + name, "--", "unshare", "--mount", "--propagation", "slave", "--", exe}, os.Args[1:]...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"="+name, envRoot+"="+root, "TMPDIR="+tmp, fmt.Sprintf("%s=%d", envHostMntNS, mnt.ino))
	// If the supervisor dies, so does the run; the processes it started
	// die with it (Pdeathsig), and what survives is found by namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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

// bindOverlays binds {root}/host{path} over each overlay path, in the inner
// run's own mount namespace. It refuses to in the supervisor's: there the
// binds would hide the machine's own directories.
func bindOverlays(root string) error {
	mnt, _ := nsOf("/proc/self/ns/mnt")
	if fmt.Sprint(mnt.ino) == os.Getenv(envHostMntNS) {
		return errors.New("the tests run in the supervisor's mount namespace: refusing to bind over the machine's directories")
	}
	for _, p := range overlays {
		src := filepath.Join(root, "host", p)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(src, p, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding %s over %s: %v", src, p, err)
		}
	}
	return nil
}

// mountPoints makes the directories that are missing, so they can be
// mounted over; it returns those it made, parents first.
func mountPoints(dirs []string) ([]string, error) {
	var made []string
	for _, d := range dirs {
		var missing []string
		for p := d; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			missing = append([]string{p}, missing...)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return made, err
		}
		made = append(made, missing...)
	}
	return made, nil
}

// removeEmpty removes the directories mountPoints made, deepest first,
// when they are empty (they are, unless a bind failed).
func removeEmpty(dirs []string) {
	for _, d := range slices.Backward(dirs) {
		os.Remove(d)
	}
}

func listings(dirs []string) map[string][]string {
	out := map[string][]string{}
	for _, d := range dirs {
		out[d] = listing(d)
	}
	return out
}

// listing is a directory's names, recursively; the runs must not add any.
func listing(dir string) []string {
	var names []string
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil && p != dir {
			names = append(names, p)
		}
		return nil
	})
	return names
}

// sweep kills what still runs in the node's or a pod's namespace, or names
// root on its command line, or descends from either, and unmounts
// everything under root (in the machine's mount namespace there should be
// nothing). It returns what it found.
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

// cgroupRoots are the machine's cgroup v1 hierarchies (not the symlinks
// that name a joint one twice, such as cpu -> cpu,cpuacct).
func cgroupRoots() []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return out
}

// containerd's CRI puts each container's cgroup at k8s.io/{id} here.
const cgroupParent = "k8s.io"

func cgroupParents() map[string]bool {
	out := map[string]bool{}
	for _, r := range cgroupRoots() {
		if _, err := os.Stat(filepath.Join(r, cgroupParent)); err == nil {
			out[r] = true
		}
	}
	return out
}

// removeCgroups removes the cgroups of the run's containers that were
// never deleted (a clean stop deletes each task, and with it its cgroup;
// a crash does not), and the parents the run made. The containers are
// known by their task directories under containerd's state.
func removeCgroups(root string, hadParent map[string]bool) []string {
	var left []string
	tasks, _ := filepath.Glob(filepath.Join(root, "cluster-*", "containerd-state", "io.containerd.runtime.v2.task", "k8s.io", "*"))
	for _, r := range cgroupRoots() {
		for _, task := range tasks {
			cg := filepath.Join(r, cgroupParent, filepath.Base(task))
			if _, err := os.Stat(cg); err == nil {
				left = append(left, "cgroup "+cg)
				if err := syscall.Rmdir(cg); err != nil {
					left = append(left, fmt.Sprintf("removing cgroup %s: %v", cg, err))
				}
			}
		}
		if !hadParent[r] {
			syscall.Rmdir(filepath.Join(r, cgroupParent)) // only if empty
		}
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

// clusterNamespaces are the node's network namespace and the pods' that
// this mount namespace can see (containerd mounts them under its state
// directory, inside root).
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

type procInfo struct {
	ppid    int
	cmdline string
	netns   nsID
}

// clusterProcesses are the live processes, other than this one, that run
// in one of namespaces, or name root on their command line (containerd's
// shims, which run in the machine's namespace), or descend from one of
// those (a container's processes, whatever namespace they are in).
func clusterProcesses(root string, namespaces map[nsID]bool) map[int]string {
	all := map[int]procInfo{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		st, _ := os.ReadFile(filepath.Join(dir, "stat"))
		// {pid} ({comm}) {state} {ppid} ...: comm may hold spaces.
		rest := string(st[strings.LastIndexByte(string(st), ')')+1:])
		var state string
		var ppid int
		if _, err := fmt.Sscan(rest, &state, &ppid); err != nil || state == "Z" {
			continue // gone, or a zombie, which holds nothing
		}
		b, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		id, _ := nsOf(filepath.Join(dir, "ns", "net"))
		all[pid] = procInfo{ppid, strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")), id}
	}
	out := map[int]string{}
	for pid, p := range all {
		if namespaces[p.netns] || (root != "" && strings.Contains(p.cmdline, root+"/")) {
			out[pid] = p.cmdline
		}
	}
	for grew := true; grew; {
		grew = false
		for pid, p := range all {
			if _, in := out[pid]; !in {
				if _, parentIn := out[p.ppid]; parentIn {
					out[pid] = p.cmdline
					grew = true
				}
			}
		}
	}
	return out
}

// interfaceNames are the machine's network interfaces that a run could
// create if something escaped the node's namespace (a CNI bridge or a
// pod's veth, the node agent's interface); other programs' are not the
// tests' business.
func interfaceNames() []string {
	ifs, _ := net.Interfaces()
	var names []string
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, "veth") || strings.HasPrefix(i.Name, "cni") || strings.HasPrefix(i.Name, "coffer") {
			names = append(names, i.Name)
		}
	}
	slices.Sort(names)
	return names
}
