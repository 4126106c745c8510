package ha

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/testbin"
)

// replicaProc is one `coffer server` process.
type replicaProc struct {
	cmd    *exec.Cmd
	log    *procLog
	addr   string
	exited chan struct{}
}

// procLog collects a process's output.
type procLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	return len(p), nil
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// processes builds the coffer binary once and starts replicas of it.
type processes struct {
	t       *testing.T
	bin     string
	args    []string
	replica []*replicaProc
}

func (p *processes) start(i int) {
	p.t.Helper()
	log := &procLog{}
	cmd := exec.Command(p.bin, append(p.args, "--data-dir", filepath.Join(p.t.TempDir(), fmt.Sprint(i)))...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = io.MultiWriter(log, pw), io.MultiWriter(log, pw)
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	r := &replicaProc{cmd: cmd, log: log, exited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "coffer server listening" {
				select {
				case addr <- line.Addr:
				default:
				}
			}
		}
	}()
	go func() { cmd.Wait(); pw.Close(); close(r.exited) }()
	select {
	case r.addr = <-addr:
	case <-r.exited:
		p.t.Fatalf("replica %d exited:\n%s", i, log.String())
	case <-time.After(60 * time.Second):
		p.t.Fatalf("replica %d did not start:\n%s", i, log.String())
	}
	for len(p.replica) <= i {
		p.replica = append(p.replica, nil)
	}
	p.replica[i] = r
}

func (p *processes) kill(i int) {
	r := p.replica[i]
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
}

func (p *processes) stopAll() {
	for _, r := range p.replica {
		if r != nil {
			r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.exited
		}
	}
}

// dialer reaches replica i, whatever host a URL names.
func (p *processes) httpTo(i int, roots *x509.CertPool, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, p.replica[i].addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, TLSHandshakeTimeout: 2 * time.Second,
		MaxIdleConnsPerHost: 64,
	}}
}

// registerIn and registerOut are one operation on a secret, as porcupine
// sees it: a register per secret, where PUT writes a unique value and GET
// returns the latest.
type registerIn struct {
	key   string
	put   bool
	value string
}

type registerOut struct {
	value   string
	unknown bool // a PUT whose outcome is not known: it may or may not have happened
}

var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(registerIn).key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, in, out any) (bool, any) {
		i, o := in.(registerIn), out.(registerOut)
		if i.put {
			return true, i.value // an unknown PUT, placed at the end, may still never have been seen
		}
		return o.value == state.(string), state
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(registerIn), out.(registerOut)
		if i.put {
			return fmt.Sprintf("put(%s, %s) unknown=%v", i.key, i.value, o.unknown)
		}
		return fmt.Sprintf("get(%s) -> %s", i.key, o.value)
	},
}

// TestFailoverUnderLoad runs 3 real etcd members and 3 real `coffer
// server` processes under 32 clients writing and reading secrets across
// all replicas, kills -9 the etcd leader and then a Coffer replica, starts
// both again, and checks that the history is linearizable (porcupine) and
// that every acknowledged write reads back from every replica.
func TestFailoverUnderLoad(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	bin := testbin.Coffer(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "root.key")
	if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
		t.Fatal(err)
	}
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), endpoint.DefaultSuffix, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	storage := []string{"--storage", "etcd", "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--etcd-prefix", "/failover/", "--root-key-file", keyFile}
	envFile := filepath.Join(dir, "admin.env")
	init := exec.Command(bin, append([]string{"operator", "init", "--dns-suffix", endpoint.DefaultSuffix, "--public-port", "443",
		"--out", envFile, "--ca-file", files.CACert}, storage...)...)
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("operator init: %v\n%s", err, out)
	}
	procs := &processes{t: t, bin: bin, args: append([]string{"server", "--listen", "127.0.0.1:0", "--dns-suffix", endpoint.DefaultSuffix,
		"--public-port", "443", "--tls-cert-file", files.Cert, "--tls-key-file", files.Key, "--metrics-addr", "",
		"--token-rate-limit", "-1"}, storage...)}
	t.Cleanup(procs.stopAll)
	for i := range 3 {
		procs.start(i)
	}
	env, err := devenv.Read(envFile)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(files.CACert)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	admin, err := client.NewWithHTTP(env, procs.httpTo(0, roots, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := admin.Manage(ctx, "POST", "vaults", mgmthttp.CreateVaultIn{Name: "demo", ResourceGroup: "ha"}, nil); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Token(ctx, "https://"+endpoint.DefaultSuffix)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := endpoint.New(endpoint.DefaultSuffix, 443)
	base := ep.VaultURL("demo")

	// The load: 32 clients, each on a replica of its own, moving to the
	// next after a transport error.
	const clients, keys = 32, 8
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		acked   []ack // acknowledged PUTs, with the version the server gave
		lats    []sample
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replica := c % 3
			hcs := []*http.Client{procs.httpTo(0, roots, 3*time.Second), procs.httpTo(1, roots, 3*time.Second), procs.httpTo(2, roots, 3*time.Second)}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("k%d", (c+n)%keys)
				op := porcupine.Operation{ClientId: c, Call: now()}
				t0 := time.Now()
				if n%2 == 0 {
					value := fmt.Sprintf("c%d-%d", c, seq.Add(1))
					op.Input = registerIn{key: key, put: true, value: value}
					version, status, err := putSecret(hcs[replica], tok, base, key, value)
					switch {
					case err == nil && status == 200:
						op.Return, op.Output = now(), registerOut{}
						mu.Lock()
						acked = append(acked, ack{key: key, value: value, version: version})
						lats = append(lats, sample{at: time.Since(start), d: time.Since(t0), write: true})
						mu.Unlock()
					default:
						// Failed or timed out: it may have happened. Its
						// return is the end of time, so porcupine may
						// place it anywhere after its call, or never.
						op.Return, op.Output = 1<<62, registerOut{unknown: true}
					}
					if err != nil {
						replica = (replica + 1) % 3
					}
				} else {
					op.Input = registerIn{key: key}
					value, status, err := getSecretValue(hcs[replica], tok, base, key)
					if err != nil || (status != 200 && status != 404) {
						if err != nil {
							replica = (replica + 1) % 3
						}
						continue // a failed read did nothing
					}
					op.Return, op.Output = now(), registerOut{value: value}
					mu.Lock()
					lats = append(lats, sample{at: time.Since(start), d: time.Since(t0)})
					mu.Unlock()
				}
				mu.Lock()
				history = append(history, op)
				mu.Unlock()
			}
		}()
	}

	type event struct {
		name string
		at   time.Duration
	}
	var events []event
	mark := func(name string) { events = append(events, event{name, time.Since(start)}) }
	phase := func(d time.Duration) { time.Sleep(d) } // the load runs meanwhile; nothing is asserted on time
	phase(4 * time.Second)
	leader := etcd.Leader(ctx)
	if leader < 0 {
		t.Fatal("no etcd leader")
	}
	mark(fmt.Sprintf("kill -9 etcd leader m%d", leader))
	etcd.Kill(leader)
	phase(4 * time.Second)
	mark("kill -9 coffer replica 1")
	procs.kill(1)
	phase(4 * time.Second)
	mark(fmt.Sprintf("restart etcd m%d", leader))
	etcd.Restart(leader)
	mark("restart coffer replica 1")
	procs.start(1)
	phase(4 * time.Second)
	close(stop)
	wg.Wait()
	mark("end")

	// What the figures were, for the record: gaps and latency by phase.
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(lats, func(i, j int) bool { return lats[i].at < lats[j].at })
	for i, e := range events[:len(events)-1] {
		t.Logf("%s at %v: longest gap without an acknowledged write after it: %v", e.name, e.at.Round(time.Millisecond), longestGap(lats, e.at, events[i+1].at).Round(time.Millisecond))
	}
	t.Logf("p99 latency before the kills %v, during %v, after the restarts %v",
		p99(lats, 0, events[0].at), p99(lats, events[0].at, events[2].at), p99(lats, events[3].at+time.Second, events[len(events)-1].at))
	writes, reads := 0, 0
	for _, op := range history {
		if op.Input.(registerIn).put {
			writes++
		} else {
			reads++
		}
	}
	t.Logf("%d operations: %d writes (%d acknowledged), %d reads", len(history), writes, len(acked), reads)
	if len(acked) < 100 {
		t.Fatalf("only %d writes were acknowledged: the load did not run", len(acked))
	}

	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 2*time.Minute)
	if res != porcupine.Ok {
		out := filepath.Join(os.TempDir(), "coffer-failover-history.html")
		if f, err := os.Create(out); err == nil {
			porcupine.Visualize(registerModel, info, f)
			f.Close()
		}
		t.Fatalf("the history is %s, not linearizable (visualization in %s)", res, out)
	}

	// Every acknowledged write reads back, by its version, from every
	// replica (the restarted one included). A replica may still answer
	// 503 (or drop the connection) for a while as it reconnects to the
	// restarted member: that is unavailability, not loss, so such an
	// answer is asked again until a deadline; any other answer is final.
	unavailable := 0
	for i := range 3 {
		hc := procs.httpTo(i, roots, 10*time.Second)
		for _, a := range acked {
			deadline := time.Now().Add(time.Minute)
			for {
				v, status, err := getSecretValue(hc, tok, base, a.key+"/"+a.version)
				if err == nil && status == 200 && v == a.value {
					break
				}
				if (err != nil || status == http.StatusServiceUnavailable) && time.Now().Before(deadline) {
					unavailable++
					time.Sleep(50 * time.Millisecond)
					continue
				}
				t.Fatalf("replica %d: acknowledged write %s=%s (version %s) reads back as %d %q %v", i, a.key, a.value, a.version, status, v, err)
			}
		}
	}
	t.Logf("every acknowledged write read back from every replica (%d answers were 503 or a dropped connection, asked again)", unavailable)
}

type ack struct{ key, value, version string }

type sample struct {
	at, d time.Duration
	write bool
}

// longestGap is the longest time between acknowledged writes from from to
// to.
func longestGap(s []sample, from, to time.Duration) time.Duration {
	last, gap := from, time.Duration(0)
	for _, x := range s {
		if !x.write || x.at < from || x.at > to {
			continue
		}
		gap = max(gap, x.at-last)
		last = x.at
	}
	return max(gap, to-last)
}

func p99(s []sample, from, to time.Duration) time.Duration {
	var ds []time.Duration
	for _, x := range s {
		if x.at >= from && x.at < to {
			ds = append(ds, x.d)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)*99/100].Round(100 * time.Microsecond)
}

func putSecret(hc *http.Client, tok, base, key, value string) (version string, status int, err error) {
	body, _ := json.Marshal(map[string]string{"value": value})
	req, _ := http.NewRequest("PUT", base+"/secrets/"+key+"?api-version=7.6", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var out struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&out)
	return out.ID[strings.LastIndexByte(out.ID, '/')+1:], resp.StatusCode, nil
}

func getSecretValue(hc *http.Client, tok, base, path string) (string, int, error) {
	req, _ := http.NewRequest("GET", base+"/secrets/"+path+"?api-version=7.6", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var out struct{ Value string }
	json.NewDecoder(resp.Body).Decode(&out)
	return out.Value, resp.StatusCode, nil
}
