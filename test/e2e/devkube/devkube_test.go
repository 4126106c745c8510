// Package devkube runs `sudo coffer dev --kubernetes` as a newcomer does:
// the command line, the commands it prints, one example, and Ctrl-C. The
// command is its own supervisor (it makes the sandbox the e2e's TestMain
// makes for the other e2e tests), so this package runs it on the machine
// and checks what it leaves there.
package devkube

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

func TestDevKubernetes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("coffer dev --kubernetes needs root, as the e2e does: run make e2e as root")
	}
	repo := testpath.Repo(t, ".")
	// Readable by nobody too (t.TempDir is not).
	binDir, err := os.MkdirTemp("", "devkube-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "coffer")
	build := exec.Command("go", "build", "-o", bin, "./cmd/coffer")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/coffer: %v\n%s", err, out)
	}
	// Not root: it says so, before it builds or changes anything.
	var notRoot bytes.Buffer
	nobody := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "dev", "--kubernetes", "--data-dir", filepath.Join(binDir, "data"))
	nobody.Dir, nobody.Stdout, nobody.Stderr = repo, &notRoot, &notRoot
	if err := nobody.Run(); err == nil || !strings.Contains(notRoot.String(), "needs root: run it with sudo") || strings.Contains(notRoot.String(), "•") {
		t.Errorf("coffer dev --kubernetes as nobody: %v:\n%s", err, notRoot.String())
	}

	var manifest []byte
	data := t.TempDir()
	vethsBefore := veths(t)
	_, err = os.Stat("/etc/netns")
	etcNetnsBefore := err == nil

	var out syncbuf.Buffer
	cmd := exec.Command(bin, "dev", "--kubernetes", "--data-dir", data)
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		// Ctrl-C.
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-exited:
			return err
		case <-time.After(3 * time.Minute):
			cmd.Process.Kill()
			<-exited
			t.Errorf("coffer dev --kubernetes did not stop within 3 minutes of SIGINT; it printed:\n%s", out.String())
			return nil
		}
	}
	t.Cleanup(func() { stop() })

	wait := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			select {
			case err := <-exited:
				stopped = true
				t.Fatalf("coffer dev --kubernetes exited (%v) before %s; it printed:\n%s", err, what, out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; coffer dev --kubernetes printed:\n%s", what, out.String())
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	wait("the cluster with Coffer", 15*time.Minute, func() bool { return strings.Contains(out.String(), "Ctrl-C stops the cluster") })
	t.Logf("coffer dev --kubernetes was ready after %s; it printed:\n%s", time.Since(start).Round(time.Second), out.String())

	banner := out.String()
	find := func(re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(banner)
		if m == nil {
			t.Fatalf("coffer dev --kubernetes did not print %s", re)
		}
		return m[1]
	}
	netns := find(`network namespace (coffer-dev-\d+)\n`)
	sandbox := find(`cluster directory (/\S+)/cluster-\d+`)
	tenant := find(`export TENANT_ID=(\S+) `)
	principal := find(`NODE_PRINCIPAL_ID=(\S+)\n`)
	kubeconfig := find(`kubeconfig +(\S+)\n`)
	kubectl := find(`kubectl +(\S+)\n`)
	envFile := find(`admin +(\S+) \(the CA`)

	// The commands it printed: `sudo ip netns exec {netns} ...`.
	run := func(stdin string, args ...string) (string, error) {
		c := exec.Command("ip", append([]string{"netns", "exec", netns}, args...)...)
		c.Stdin = strings.NewReader(stdin)
		b, err := c.CombinedOutput()
		return string(b), err
	}
	must := func(stdin string, args ...string) {
		t.Helper()
		if out, err := run(stdin, args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	coffer := func(args ...string) { t.Helper(); must("", append([]string{bin, "--env-file", envFile}, args...)...) }
	coffer("vault", "create", "--name", "demo")
	coffer("secret", "set", "--vault-name", "demo", "-n", "secret1", "--value", "value of secret1")
	coffer("secret", "set", "--vault-name", "demo", "-n", "secret2", "--value", "value of secret2")
	coffer("vault", "set-policy", "-n", "demo", "--object-id", principal, "--secret-permissions", "get")
	manifest, err = os.ReadFile(filepath.Join(repo, "examples", "seed-000", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	must(strings.ReplaceAll(string(manifest), "${TENANT_ID}", tenant), kubectl, "--kubeconfig", kubeconfig, "apply", "-f", "-")
	var got string
	wait("seed 000's pod to see its secret", 3*time.Minute, func() bool {
		got, _ = run("", kubectl, "--kubeconfig", kubeconfig, "exec", "busybox-secrets-store-inline-system-msi", "--", "cat", "/mnt/secrets-store/SECRET_1")
		return got == "value of secret1"
	})

	// What the checks below look for is there while the cluster runs.
	if pids, _ := exec.Command("ip", "netns", "pids", netns).Output(); len(bytes.Fields(pids)) < 5 {
		t.Fatalf("only %d processes in %s while the cluster runs", len(bytes.Fields(pids)), netns)
	}
	if len(mountsUnder(t, sandbox)) == 0 {
		t.Fatalf("no mount under %s while the cluster runs", sandbox)
	}

	start = time.Now()
	if err := stop(); err != nil {
		t.Fatalf("coffer dev --kubernetes failed on SIGINT: %v; it printed:\n%s", err, out.String())
	}
	t.Logf("coffer dev --kubernetes stopped %s after SIGINT", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(out.String(), "nothing is left of the cluster") {
		t.Errorf("coffer dev --kubernetes did not confirm its teardown:\n%s", out.String())
	}
	if list, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(list), netns) {
		t.Errorf("the network namespace %s is left", netns)
	}
	if m := mountsUnder(t, sandbox); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if p := processesNaming(t, sandbox); len(p) > 0 {
		t.Errorf("processes left: %v", p)
	}
	for _, path := range []string{sandbox, filepath.Join("/etc/netns", netns), kubeconfig, envFile} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s is left", path)
		}
	}
	if _, err := os.Stat("/etc/netns"); err == nil && !etcNetnsBefore {
		t.Errorf("/etc/netns is left")
	}
	if after := veths(t); strings.Join(after, ",") != strings.Join(vethsBefore, ",") {
		t.Errorf("the machine's veths were %v, are %v", vethsBefore, after)
	}
}

func veths(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// mountsUnder lists the mounts under dir in any mount namespace: those of
// every process (a leftover one lives in a process's own namespace).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	infos, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	seen := map[string]bool{}
	var out []string
	for _, mi := range infos {
		b, err := os.ReadFile(mi)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") && !seen[f[4]] {
				seen[f[4]] = true
				out = append(out, f[4])
			}
		}
	}
	return out
}

// processesNaming lists the processes whose command line names dir.
func processesNaming(t *testing.T, dir string) []string {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if s := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(s, dir) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+s)
		}
	}
	return out
}
