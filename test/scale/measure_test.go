package scale

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cofferhq/coffer/internal/cli/bench"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/endpoint"
)

// execEnv, set in a child's environment, makes the test binary run the
// coffer CLI with its arguments (see TestMain): the server measured is the
// real `coffer server`, in a process of its own, without a separate build.
const execEnv = "COFFER_SCALE_EXEC"

// Point is what one size costs. Times are in milliseconds, sizes in MiB.
type Point struct {
	// Versions are the filler secret versions; Objects the filler
	// objects. The big object's BigVersions come on top.
	Versions   int     `json:"versions"`
	Objects    int     `json:"objects"`
	Vaults     int     `json:"vaults"`
	StoreMiB   float64 `json:"storeMiB"`
	FillSecond float64 `json:"fillSeconds"`
	// StartMs is from the server's exec to its first ready answer.
	StartMs float64 `json:"startMs"`
	// RSSReadyMiB is the server's resident set once ready;
	// RSSPeakMiB its high-water mark after every measurement.
	RSSReadyMiB float64 `json:"rssReadyMiB"`
	RSSPeakMiB  float64 `json:"rssPeakMiB"`
	// AnonMiB and FileMiB split the resident set after the measurements:
	// anonymous memory (the Go heap and stacks) and file pages mapped in
	// (the binary's text and the bbolt file that reads touched, which the
	// kernel reclaims under pressure).
	AnonMiB float64 `json:"rssAnonMiB"`
	FileMiB float64 `json:"rssFileMiB"`
	// StoreMappedMiB is the part of FileMiB that is the bbolt file's
	// mapping.
	StoreMappedMiB float64 `json:"rssStoreMappedMiB"`
	// GET of the current version of a filler object picked at random
	// across every vault, by Workers clients.
	Workers   int     `json:"getWorkers"`
	GetPerSec float64 `json:"getPerSecond"`
	GetP50Ms  float64 `json:"getP50Ms"`
	GetP99Ms  float64 `json:"getP99Ms"`
	// HotGet* are GETs of the first HotObjects filler objects only: after
	// the warm-up every one is in the server's object cache, so they
	// measure a hit (one store lookup to validate it) as the store grows,
	// where the random GETs above miss more often the more objects there
	// are.
	HotPerSec float64 `json:"hotGetPerSecond"`
	HotP50Ms  float64 `json:"hotGetP50Ms"`
	HotP99Ms  float64 `json:"hotGetP99Ms"`
	// ListPageMs is the median of a 25-secret list page of one vault.
	ListPageMs float64 `json:"listPageMs"`
	// BackupMs and RestoreMs are medians for the big object.
	BackupMs  float64 `json:"backupMs"`
	RestoreMs float64 `json:"restoreMs"`
	// Runs is how many server processes the figures are the medians of.
	Runs int `json:"runs,omitempty"`
}

// HotObjects is how many objects the hot GETs go round.
const HotObjects = 1000

// Settings say how long each measurement runs.
type Settings struct {
	Workers        int
	Warmup, GetFor time.Duration
	Rounds         int // list pages, backups and restores
}

// serverProc is a running `coffer server` on a filled store.
type serverProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	port    string
	startMs float64
}

// startServer runs `coffer server` on s and waits until it answers ready.
// The process is stopped by stop, and killed if ctx ends first.
func startServer(ctx context.Context, s *Store) (*serverProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	files := s.files
	args := []string{"server", "--data-dir", s.Dir, "--root-key-file", filepath.Join(s.Dir, "root.key"),
		"--listen", "127.0.0.1:0", "--dns-suffix", endpoint.DefaultSuffix, "--tls-cert-file", files.Cert, "--tls-key-file", files.Key,
		"--metrics-addr", "", "--purge-interval", "1h"}
	if s.Etcd != nil {
		args = append(args, "--storage", server.StorageEtcd, "--etcd-endpoints", strings.Join(s.Etcd.Endpoints, ","), "--etcd-prefix", s.Etcd.Prefix)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), execEnv+"=1")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serverProc{cmd: cmd, done: make(chan struct{})}
	// The log says where the server listens; the rest is drained, so that
	// the server never blocks on a full pipe.
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg, Addr string
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "coffer server listening" {
				addrc <- line.Addr
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	var addr string
	select {
	case addr = <-addrc:
	case <-p.done:
		return nil, fmt.Errorf("coffer server exited before listening: %v", cmd.ProcessState)
	case <-time.After(2 * time.Minute):
		p.stop()
		return nil, errors.New("coffer server did not log its address within 2 minutes")
	}
	_, p.port, _ = net.SplitHostPort(addr)
	roots, err := httpclient.RootPool(files.CACert)
	if err != nil {
		p.stop()
		return nil, err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := hc.Get("https://" + endpoint.DefaultSuffix + ":" + p.port + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("coffer server not ready within 2 minutes: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	p.startMs = ms(time.Since(t0))
	return p, nil
}

// stop ends the server gracefully and waits for it.
func (p *serverProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// memory is the process's resident set, in MiB.
type memory struct{ rss, peak, anon, file, store float64 }

// rss reads the process's resident set from /proc.
func (p *serverProc) rss() (m memory, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return m, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kib, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kib / 1024
		case "VmHWM:":
			m.peak = kib / 1024
		case "RssAnon:":
			m.anon = kib / 1024
		case "RssFile:":
			m.file = kib / 1024
		}
	}
	m.store, err = p.mappedRSS(server.StoreFile)
	return m, err
}

// mappedRSS sums the resident set of the process's mappings of the file
// named name, from /proc/PID/smaps.
func (p *serverProc) mappedRSS(name string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	var kib float64
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-"): // a mapping's header
			in = len(f) >= 6 && filepath.Base(f[len(f)-1]) == name
		case in && len(f) >= 2 && f[0] == "Rss:":
			v, _ := strconv.ParseFloat(f[1], 64)
			kib += v
		}
	}
	return kib / 1024, nil
}

// Measure starts a server on s, measures it and stops it.
func Measure(ctx context.Context, s *Store, set Settings) (Point, error) {
	pt := Point{Versions: s.Versions, Objects: len(s.Objects), Vaults: s.Vaults, StoreMiB: float64(s.StoreBytes()) / (1 << 20), Workers: set.Workers}
	p, err := startServer(ctx, s)
	if err != nil {
		return pt, err
	}
	defer p.stop()
	pt.StartMs = p.startMs
	m, err := p.rss()
	if err != nil {
		return pt, err
	}
	pt.RSSReadyMiB = m.rss
	apex := endpoint.DefaultSuffix + ":" + p.port
	env := s.Env
	env.AuthorityHost = "https://" + apex + "/"
	env.VaultURL = "https://" + VaultName(0) + "." + apex + "/"
	cl, err := client.New(env)
	if err != nil {
		return pt, err
	}
	tok, err := cl.Token(ctx, "https://"+apex)
	if err != nil {
		return pt, fmt.Errorf("token: %w", err)
	}
	roots, err := httpclient.RootPool(env.CAFile)
	if err != nil {
		return pt, err
	}
	conns := make([]*bench.Conn, set.Workers)
	for i := range conns {
		if conns[i], err = bench.Dial(ctx, env.VaultURL, roots, httpclient.LoopbackLocalhost); err != nil {
			return pt, err
		}
		defer conns[i].Close()
	}
	host := func(vault string) string { return vault + "." + apex }
	rngs := make([]*rand.Rand, set.Workers)
	for i := range rngs {
		rngs[i] = rand.New(rand.NewPCG(uint64(i), 42))
	}
	gets := func(objects []Ref) (bench.Result, error) {
		r := bench.Run(ctx, set.Workers, set.Warmup, set.GetFor, func(_ context.Context, w int) error {
			ref := objects[rngs[w].IntN(len(objects))]
			conns[w].SetHost(host(ref.Vault))
			return want(http.StatusOK)(conns[w].Do("GET", "/secrets/"+ref.Name+"?api-version=7.6", tok, nil))
		})
		if r.Ops == 0 || r.Errors > 0 {
			return r, fmt.Errorf("GET: %s", r)
		}
		return r, nil
	}
	r, err := gets(s.Objects)
	if err != nil {
		return pt, err
	}
	pt.GetPerSec, pt.GetP50Ms, pt.GetP99Ms = r.PerSec, ms(r.P50), ms(r.P99)
	if r, err = gets(s.Objects[:min(HotObjects, len(s.Objects))]); err != nil {
		return pt, err
	}
	pt.HotPerSec, pt.HotP50Ms, pt.HotP99Ms = r.PerSec, ms(r.P50), ms(r.P99)

	c := conns[0]
	var list, backup, restore []time.Duration
	for range set.Rounds {
		c.SetHost(host(s.BigVault))
		t0 := time.Now()
		body, err := c.Body("GET", "/secrets?maxresults=25&api-version=7.6", tok)
		if err != nil {
			return pt, fmt.Errorf("list: %w", err)
		}
		list = append(list, time.Since(t0))
		var page struct{ Value []json.RawMessage }
		if err := json.Unmarshal(body, &page); err != nil || len(page.Value) != 25 {
			return pt, fmt.Errorf("list: a page of %d secrets (%v), want a full page of 25", len(page.Value), err)
		}
	}
	for range set.Rounds {
		c.SetHost(host(s.BigVault))
		t0 := time.Now()
		body, err := c.Body("POST", "/secrets/"+s.BigName+"/backup?api-version=7.6", tok)
		if err != nil {
			return pt, fmt.Errorf("backup: %w", err)
		}
		backup = append(backup, time.Since(t0))
		// Restored into another vault of the tenant, then deleted and
		// purged there, so that every round restores into a free name.
		c.SetHost(host(VaultName(1)))
		t0 = time.Now()
		if err := want(http.StatusOK)(c.Do("POST", "/secrets/restore?api-version=7.6", tok, body)); err != nil {
			return pt, fmt.Errorf("restore: %w", err)
		}
		restore = append(restore, time.Since(t0))
		if err := want(http.StatusOK)(c.Do("DELETE", "/secrets/"+s.BigName+"?api-version=7.6", tok, nil)); err != nil {
			return pt, fmt.Errorf("delete the restored copy: %w", err)
		}
		if err := want(http.StatusNoContent)(c.Do("DELETE", "/deletedsecrets/"+s.BigName+"?api-version=7.6", tok, nil)); err != nil {
			return pt, fmt.Errorf("purge the restored copy: %w", err)
		}
	}
	pt.ListPageMs, pt.BackupMs, pt.RestoreMs = median(list), median(backup), median(restore)
	m, err = p.rss()
	pt.RSSPeakMiB, pt.AnonMiB, pt.FileMiB, pt.StoreMappedMiB = m.peak, m.anon, m.file, m.store
	return pt, err
}

func want(code int) func(int, error) error {
	return func(status int, err error) error {
		if err == nil && status != code {
			err = fmt.Errorf("HTTP %d, want %d", status, code)
		}
		return err
	}
}

func median(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return ms(s[len(s)/2])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
