// Package fleet simulates a fleet of nodes against one vault server, run
// as its own process (`coffer dev`, built from this tree) so that its
// memory and CPU are its own. The benchmarks run with `make bench-fleet`,
// never as timed unit tests.
package fleet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/testing/testbin"
)

// serverProc is a `coffer dev` process.
type serverProc struct {
	pid     int
	metrics string // host:port of /metrics
	env     devenv.Env
	admin   *client.Client
}

// serverGOGC is the server's GC target.
const serverGOGC = server.DefaultGCPercent

// liveHeap is the server's live heap at its last collection, in MiB: the
// heap goal the collection set is the live heap times 1 + GOGC/100.
func liveHeap(metrics string) float64 {
	return sample(metrics, "go_memstats_next_gc_bytes") / (1 + serverGOGC/100.0) / (1 << 20)
}

var metricsLine = regexp.MustCompile(`msg="metrics and health listening" addr=(\S+)`)

// startServer runs `coffer dev` on a free port and waits until it serves;
// it learns the metrics address from the log and the credentials from
// dev.env. The process is killed when the benchmark ends.
func startServer(b testing.TB, extra ...string) *serverProc {
	b.Helper()
	dir := b.TempDir()
	args := append([]string{"dev", "--data-dir", dir, "--port", "0", "--metrics-addr", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(testbin.Coffer(b), args...)
	// The server's own default, set here so that the live heap can be
	// told from the heap goal (see liveHeap).
	cmd.Env = append(os.Environ(), "GOGC="+strconv.Itoa(serverGOGC))
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			if m := metricsLine.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
	}()
	var addr string
	select {
	case addr = <-found:
	case <-time.After(time.Minute):
		b.Fatal("coffer dev did not log its metrics address within a minute")
	}
	// dev.env is written after the listeners are up: wait for it.
	var env devenv.Env
	deadline := time.Now().Add(time.Minute)
	for {
		env, err = devenv.Read(devenv.Path(dir))
		if err == nil && env.ClientSecret != "" {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("dev.env: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	admin, err := client.New(env)
	if err != nil {
		b.Fatal(err)
	}
	return &serverProc{pid: cmd.Process.Pid, metrics: addr, env: env, admin: admin}
}

// resource is the audience of vault tokens (the authority's URL).
func (s *serverProc) resource() string { return strings.TrimSuffix(s.env.AuthorityHost, "/") }

// vaultBase is vault demo's base URL.
func (s *serverProc) vaultBase() string { return strings.TrimSuffix(s.env.VaultURL, "/") }

// identity creates a service principal that may get demo's secrets.
func (s *serverProc) identity(b testing.TB, name string) mgmthttp.SPOut {
	b.Helper()
	ctx := context.Background()
	var sp mgmthttp.SPOut
	if err := s.admin.Manage(ctx, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &sp); err != nil {
		b.Fatal(err)
	}
	get := []string{"get"}
	if err := s.admin.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &get}, nil); err != nil {
		b.Fatal(err)
	}
	return sp
}

// token gets a vault token for sp.
func (s *serverProc) token(b testing.TB, sp mgmthttp.SPOut) string {
	b.Helper()
	env := s.env
	env.ClientID, env.ClientSecret = sp.AppID, sp.Password
	c, err := client.New(env)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := c.Token(context.Background(), s.resource())
	if err != nil {
		b.Fatal(err)
	}
	return tok
}

// setSecret writes value to a secret of vault demo.
func (s *serverProc) setSecret(b testing.TB, sc *azsecrets.Client, name, value string) {
	b.Helper()
	if _, err := sc.SetSecret(context.Background(), name, setParams(value), nil); err != nil {
		b.Fatal(err)
	}
}

func setParams(value string) azsecrets.SetSecretParameters {
	return azsecrets.SetSecretParameters{Value: to.Ptr(value)}
}

// scrape reads the server's /metrics: the sum of each counter or gauge
// whose name and labels match, by name{label="value"} prefix.
func (s *serverProc) scrape(b testing.TB) string {
	b.Helper()
	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return string(body)
}

// sample sums the samples of metric name whose labels include every one
// of labels (such as `api="vault"`).
func sample(text, name string, labels ...string) float64 {
	total := 0.0
lines:
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		for _, l := range labels {
			if !strings.Contains(line[:sp], l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// vaultRequests is what the server counted of vault API requests (reads
// and writes; held reads and watches are counted apart).
func (s *serverProc) vaultRequests(b testing.TB) float64 {
	return sample(s.scrape(b), "coffer_http_requests_total", `api="vault"`)
}

// rss is a process's resident set, in MiB.
func rss(b testing.TB, pid int) float64 {
	b.Helper()
	return statusKiB(b, pid, "VmRSS:") / 1024
}

func statusKiB(b testing.TB, pid int, field string) float64 {
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
			return kib
		}
	}
	b.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// cpu is a process's user and system CPU time so far.
func cpu(b testing.TB, pid int) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: utime and stime are the 14th and 15th fields.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		b.Fatal(err)
	}
	// The kernel counts in USER_HZ, 100 on Linux.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(b testing.TB, what string, within time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
