// Package exhaust floods the real coffer binary, run as a separate
// process, with what a hostile or broken client can send in bulk (issue
// 15, part 3): thousands of idle TLS connections, slowloris headers,
// 20,000 held reads, and oversized tokens. Each test measures the
// server's memory from outside (its RSS in /proc, its Go heap from
// /metrics), logs the figures, and asserts only bounds that cannot flake
// on a loaded machine: every normal request is answered within a generous
// deadline, the caps answer as documented, and memory stays under a bound
// far above the measured figure. Servers bind to 127.0.0.1 only.
//
// The binary is built without the race detector, unlike test/integration's:
// these are memory figures, and the race detector multiplies a goroutine's
// memory several times. The test process itself still runs under -race.
package exhaust

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
)

var binary string

// fdLimit is the file-descriptor limit the tests raise themselves (and so
// the server they start) to: 10,000 connections need 10,000 descriptors at
// each end, over the 20,000 hard limit some machines start processes with
// once the test's own files and the held-read connections are counted.
const fdLimit = 65536

func TestMain(m *testing.M) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < fdLimit {
		// Raising the hard limit needs CAP_SYS_RESOURCE; without it, raise
		// the soft one as far as the hard one allows.
		want := unix.Rlimit{Cur: fdLimit, Max: max(lim.Max, fdLimit)}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
			want = unix.Rlimit{Cur: lim.Max, Max: lim.Max}
			unix.Setrlimit(unix.RLIMIT_NOFILE, &want)
		}
	}
	dir, err := os.MkdirTemp("", "coffer-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "coffer")
	build := exec.Command("go", "build", "-o", binary, "../../cmd/coffer")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build coffer:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fds returns the process's soft file-descriptor limit.
func fds() uint64 {
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// devServer is a running `coffer dev` process.
type devServer struct {
	cmd     *exec.Cmd
	Env     devenv.Env
	Stderr  *syncbuf.Buffer
	done    chan struct{}
	metrics string // host:port of /metrics
}

// startDev starts `coffer dev` on a free port, with /metrics on another,
// and waits until it serves. The process is killed when the test ends.
func startDev(t *testing.T) *devServer {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(binary, "dev", "--data-dir", dir, "--port", "0", "--metrics-addr", "127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &devServer{cmd: cmd, Stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = d.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "Press Ctrl-C to stop.") {
				close(ready)
				signalled = true
			}
		}
	}()
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	})
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("coffer dev exited early:\n%s", d.Stderr)
	case <-time.After(2 * time.Minute):
		t.Fatalf("coffer dev did not start:\n%s", d.Stderr)
	}
	if d.Env, err = devenv.Read(devenv.Path(dir)); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`msg="metrics and health listening" addr=(\S+)`)
	for deadline := time.Now().Add(30 * time.Second); d.metrics == ""; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(d.Stderr.String()); m != nil {
			d.metrics = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no metrics address in the log:\n%s", d.Stderr)
		}
	}
	return d
}

// metric returns the value of an unlabelled metric of the server's
// /metrics, or -1 if it cannot be read.
func (d *devServer) metric(name string) float64 {
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// rss returns the server's resident memory, from /proc.
func (d *devServer) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// memory is one reading of the server's memory.
type memory struct{ rss, heap, goroutines float64 }

func (d *devServer) memory(t *testing.T) memory {
	t.Helper()
	return memory{rss: float64(d.rss(t)), heap: d.metric("go_memstats_heap_inuse_bytes"), goroutines: d.metric("go_goroutines")}
}

func (m memory) String() string {
	return fmt.Sprintf("RSS %.1f MiB, heap in use %.1f MiB, %.0f goroutines", m.rss/(1<<20), m.heap/(1<<20), m.goroutines)
}

// vaultClient returns the dev server's HTTP client (HTTP/2 over TLS, as
// the SDKs use) and an administrator's vault token.
func vaultClient(t *testing.T, env devenv.Env) (*http.Client, string) {
	t.Helper()
	c, err := client.New(env)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), strings.TrimSuffix(env.AuthorityHost, "/"))
	if err != nil {
		t.Fatal(err)
	}
	return c.HTTP, tok
}

// percentile returns the p-th percentile (0-100) of ds, sorted in place.
func percentile(ds []time.Duration, p int) time.Duration {
	slices.Sort(ds)
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

// envInt reads a size from the environment (make exhaust sets the issue's
// full sizes), or returns def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// ratio is a's p99 over b's.
func ratio(a, b []time.Duration) float64 {
	return float64(percentile(a, 99)) / float64(percentile(b, 99))
}
