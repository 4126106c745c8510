package localcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The node's network: its own namespace, which a Sandbox creates, so that the
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

// The Kubernetes Services' addresses: the apiserver allocates them, and
// nothing routes to them (there is no kube-proxy).
const (
	ServiceSubnet = "10.0.0.0/24"
	ServiceIP     = "10.0.0.1"
)

// What the supervisor tells the process it runs inside the namespace.
const (
	envNetns     = "COFFER_NODE_NETNS"
	envRoot      = "COFFER_NODE_ROOT"
	envHostMntNS = "COFFER_NODE_HOST_MNTNS"
)

// overlays are the machine's directories that the node's programs write to
// at fixed paths, whatever their configuration says: containerd's shim
// sockets (/run/containerd/s), the kubelet's device-plugin socket,
// libcni's result cache and the kubelet's /var/log/containers links. The
// inner process has a mount namespace of its own, where a directory of the
// sandbox is bound over each, so none of it reaches the machine.
var overlays = []string{"/run/containerd", "/var/lib/kubelet", "/var/lib/cni", "/var/log/containers"}

// ErrNotRoot means the sandbox was asked for by another user than root.
var ErrNotRoot = errors.New("the node runs containers in a network namespace of its own, which needs root: run it with sudo")

// Sandbox is the node's network namespace and directory, made by a
// supervising process that then runs a process inside it (Run), where
// Start works, and cleans up after it (Close). Everything the node runs
// is found again by the namespace, the directory or descent from them.
type Sandbox struct {
	// Name is the network namespace's name, as `ip netns` shows it.
	Name string
	// Root is the sandbox's directory: the cluster's directories, and
	// every temporary file of the inner process.
	Root string

	hostLinks   []string
	hostFiles   map[string][]string
	hostCgroups map[string]bool
	made        []string
	added       bool
}

// NewSandbox makes the sandbox's directory (named prefix and a random
// suffix, in the system's temporary directory) and records the machine's
// state that Close compares with. The namespace is made by Run.
func NewSandbox(prefix string) (*Sandbox, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	for _, bin := range []string{"ip", "nsenter", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed (iproute2, util-linux): run scripts/deps.sh", bin)
		}
	}
	root, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{Name: filepath.Base(root), Root: root, hostLinks: interfaceNames()}
	made, err := mountPoints(overlays)
	s.made = made
	if err != nil {
		removeEmpty(made)
		os.RemoveAll(root)
		return nil, err
	}
	s.hostFiles = listings(overlays)
	s.hostCgroups = cgroupParents()
	return s, nil
}

// Inside reports whether this process runs inside a sandbox (Run started
// it).
func Inside() bool { return os.Getenv(envNetns) != "" }

// Enter prepares the inner process: it binds the sandbox's directories
// over the machine's fixed paths (overlays), in its own mount namespace,
// and resolves names as the node's pods do. Call it first, once.
func Enter() error {
	if err := bindOverlays(Root()); err != nil {
		return err
	}
	net.DefaultResolver = resolver()
	return nil
}

// Root is the sandbox's directory (inside the sandbox).
func Root() string { return os.Getenv(envRoot) }

// Namespace is the node's network namespace, as `ip netns` names it
// (inside the sandbox).
func Namespace() string { return os.Getenv(envNetns) }

// Run creates the namespace and runs this executable again with args,
// inside it, until it exits; a signal from sigs is passed on to it. It
// returns the exit code.
func (s *Sandbox) Run(args []string, sigs <-chan os.Signal) int {
	if err := addNamespace(s.Name); err != nil {
		fmt.Fprintln(os.Stderr, "creating the node's network namespace:", err)
		return 1
	}
	s.added = true
	return runInside(s.Name, s.Root, args, sigs)
}

// Close kills whatever still runs in the node's or a pod's namespace, or
// names the sandbox's directory, or descends from them; removes the
// cgroups of containers never deleted; deletes the namespace and the
// directory; and checks that the machine's directories and interfaces are
// as they were. It returns what it had to remove or found changed: a
// clean run leaves it nothing.
func (s *Sandbox) Close() []string {
	defer removeEmpty(s.made)
	left := sweep(s.Name, s.Root)
	left = append(left, removeCgroups(s.Root, s.hostCgroups)...)
	if s.added {
		if out, err := exec.Command("ip", "netns", "del", s.Name).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			left = append(left, fmt.Sprintf("ip netns del %s: %v: %s", s.Name, err, out))
		}
	}
	if err := os.RemoveAll(s.Root); err != nil {
		left = append(left, fmt.Sprintf("removing %s: %v", s.Root, err))
	}
	if after := interfaceNames(); !slices.Equal(s.hostLinks, after) {
		left = append(left, fmt.Sprintf("the machine's network interfaces changed: %v before, %v after", s.hostLinks, after))
	}
	for dir, before := range s.hostFiles {
		if after := listing(dir); !slices.Equal(before, after) {
			left = append(left, fmt.Sprintf("%s changed: %v before, %v after", dir, before, after))
		}
	}
	return left
}

// Processes lists what runs in the sandbox now: in the node's namespace
// or a pod's, or naming the directory, or descending from those.
func (s *Sandbox) Processes() []string {
	return describe(clusterProcesses(s.Root, clusterNamespaces(s.Name, s.Root)))
}

// DialContext connects to addr from inside the node's namespace, for the
// supervisor's forwarders: only the namespace reaches the node's
// addresses. The socket is made by a thread that enters the namespace and
// leaves it again; the socket stays in it.
func (s *Sandbox) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is dropped rather than reused if it cannot go back.
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
		}()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{nil, err}
			restored = true
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + s.Name)
		if err != nil {
			ch <- result{nil, err}
			restored = true
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("entering the node's namespace: %w", err)}
			restored = true
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		restored = unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
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

// runInside runs this executable again, with args, in the namespace and
// in a mount namespace of its own, whose mounts do not propagate back (so
// they all go when its last process does). nsenter switches the network
// namespace only: `ip netns exec` would also remount /sys, and the kubelet
// and runc need the machine's /sys/fs/cgroup.
func runInside(name, root string, args []string, sigs <-chan os.Signal) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Every temporary file of the run (t.TempDir, the apiserver's) goes
	// under root too, so nothing outlives the supervisor's sweep, not even
	// after a crash.
	tmp := filepath.Join(root, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mnt, _ := nsOf("/proc/self/ns/mnt")
	argv := append([]string{"--net=/run/netns/" + name, "--", "unshare", "--mount", "--propagation", "slave", "--", exe}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"="+name, envRoot+"="+root, "TMPDIR="+tmp, fmt.Sprintf("%s=%d", envHostMntNS, mnt.ino))
	// If the supervisor dies, so does the run; the processes it started
	// die with it (Pdeathsig), and what survives is found by namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting the process in the node's namespace:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &exit) && exit.ExitCode() > 0:
				return exit.ExitCode()
			default:
				fmt.Fprintln(os.Stderr, "the process in the node's namespace:", err)
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
		return errors.New("this process runs in the supervisor's mount namespace: refusing to bind over the machine's directories")
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
