//go:build !node

package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/cli/bench"
	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server"
)

type benchOptions struct {
	vault            string
	workers          int
	duration, warmup time.Duration
	valueSize        int
	ceiling          bool
	rounds           int
}

func (a *app) benchCmd() *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a live server: secret reads or durable writes over HTTPS keep-alive",
		Long: `Measure a live server with the credentials of --env-file. Each worker has its
own keep-alive HTTPS/1.1 connection and runs requests back to back, reading
each response in its own goroutine; latencies of every request after the
warm-up are recorded.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.vault, "vault-name", "demo", "vault to use")
	pf.IntVar(&o.workers, "concurrency", 32, "concurrent clients")
	pf.DurationVar(&o.duration, "duration", 10*time.Second, "measured time")
	pf.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured warm-up time")
	pf.IntVar(&o.valueSize, "value-size", 64, "secret value size in bytes")
	get := &cobra.Command{
		Use: "get", Short: "GET one secret repeatedly", Args: cobra.NoArgs,
		Long: `GET one secret repeatedly. With --ceiling, the same generator then runs
against a bare TLS handler in a child process of its own (as the server is)
that answers every request with the bytes the vault answered, and the two
results are printed with their ratio: what the server achieves against what
this machine's TLS and HTTP stack allow. With --rounds N, the two alternate N
times and each figure is the median of its N rounds (the ratio is of the
medians); the rounds are listed too.`,
		RunE: func(c *cobra.Command, _ []string) error { return a.runBench(c.Context(), o, false) },
	}
	get.Flags().BoolVar(&o.ceiling, "ceiling", false, "also measure a bare handler serving the same bytes, and print the ratio")
	get.Flags().IntVar(&o.rounds, "rounds", 1, "with --ceiling, rounds of the server then the bare handler, alternating; the medians are reported")
	fixed := &cobra.Command{
		Use: "serve-fixed", Hidden: true, Args: cobra.NoArgs,
		Short: "Serve one fixed response over TLS (the ceiling of coffer bench get --ceiling)",
		RunE:  func(c *cobra.Command, _ []string) error { return a.serveFixed(c) },
	}
	fixed.Flags().String("cert", "", "TLS certificate file")
	fixed.Flags().String("key", "", "TLS key file")
	fixed.Flags().String("body", "", "file holding the response body")
	set := &cobra.Command{
		Use: "set", Short: "PUT new secret versions repeatedly (each acknowledged only after a durable commit)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runBench(c.Context(), o, true) },
	}
	cmd.AddCommand(get, set, fixed)
	return cmd
}

func (a *app) runBench(ctx context.Context, o benchOptions, write bool) error {
	server.TuneGC() // the load generator shares the CPUs: keep its GC out of the way too
	if o.workers < 1 || o.workers > 4096 {
		return usagef("--concurrency must be 1 to 4096")
	}
	if o.rounds < 1 || o.rounds > 100 {
		return usagef("--rounds must be 1 to 100")
	}
	if o.rounds > 1 && !o.ceiling {
		return usagef("--rounds alternates the server with the bare handler: give --ceiling too")
	}
	if o.valueSize < 1 || o.valueSize > 25*1024 {
		return usagef("--value-size must be 1 to 25600")
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	tok, err := cl.Token(ctx, "https://"+strings.TrimSuffix(strings.TrimPrefix(cl.Env.AuthorityHost, "https://"), "/"))
	if err != nil {
		return err
	}
	base := strings.TrimSuffix(cl.VaultURL(o.vault), "/")
	value := strings.Repeat("v", o.valueSize)
	body, _ := json.Marshal(map[string]string{"value": value})
	name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	path := func(n string) string { return "/secrets/" + n + "?api-version=7.6" }
	roots, err := httpclient.RootPool(cl.Env.CAFile)
	if err != nil {
		return err
	}
	conns := make([]*bench.Conn, o.workers)
	for i := range conns {
		if conns[i], err = bench.Dial(ctx, base, roots, httpclient.LoopbackLocalhost); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	check := func(status int, err error) error {
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("HTTP %d", status)
		}
		return err
	}
	if err := check(conns[0].Do("PUT", path(name), tok, body)); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	var seq atomic.Int64
	op := func(ctx context.Context, w int) error {
		if write {
			return check(conns[w].Do("PUT", path(fmt.Sprintf("%s-w%d", name, seq.Add(1)%int64(o.workers*8))), tok, body))
		}
		return check(conns[w].Do("GET", path(name), tok, nil))
	}
	kind := "GET secret"
	if write {
		kind = "PUT secret (durable)"
	}
	fmt.Fprintf(a.stderr, "bench: %s against %s, %d clients, %s warm-up, %s measured\n", kind, base, o.workers, o.warmup, o.duration)
	r := bench.Run(ctx, o.workers, o.warmup, o.duration, op)
	if o.ceiling && !write {
		answer, err := conns[0].Body("GET", path(name), tok)
		if err != nil {
			return fmt.Errorf("read the answer to copy: %w", err)
		}
		ceiling, stop, err := a.startCeiling(ctx, o, base, path(name), tok, answer)
		if err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
		defer stop()
		var servers, ceilings []bench.Result
		var rounds []benchRound
		for i := range o.rounds {
			if i > 0 {
				fmt.Fprintf(a.stderr, "bench: round %d of %d\n", i+1, o.rounds)
				r = bench.Run(ctx, o.workers, o.warmup, o.duration, op)
			}
			c := ceiling()
			servers, ceilings = append(servers, r), append(ceilings, c)
			rounds = append(rounds, benchRound{r, c, ratioOf(r, c)})
		}
		srv, ceil := bench.Median(servers), bench.Median(ceilings)
		ratio := ratioOf(srv, ceil)
		if a.output == "json" {
			out := struct {
				Server  bench.Result `json:"server"`
				Ceiling bench.Result `json:"ceiling"`
				Ratio   benchRatio   `json:"ratio"`
				Rounds  []benchRound `json:"rounds,omitempty"`
			}{srv, ceil, ratio, nil}
			if o.rounds > 1 {
				out.Rounds = rounds
			}
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}
		if o.rounds > 1 {
			for i, rd := range rounds {
				fmt.Fprintf(a.stdout, "round %d: %.2fx the throughput, %.2fx the p99\n", i+1, rd.Ratio.Throughput, rd.Ratio.P99)
			}
			fmt.Fprintf(a.stdout, "medians of %d rounds:\n", o.rounds)
		}
		fmt.Fprintf(a.stdout, "%s: %s\nbare handler, same bytes: %s\nratio: %.2fx the throughput, %.2fx the p99\n", kind, srv, ceil, ratio.Throughput, ratio.P99)
		return nil
	}
	if a.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Operation string `json:"operation"`
			bench.Result
			P50ms float64 `json:"p50Ms"`
			P99ms float64 `json:"p99Ms"`
		}{kind, r, ms(r.P50), ms(r.P99)})
	}
	fmt.Fprintf(a.stdout, "%s: %s\n", kind, r)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchRatio is the server's figures over the bare handler's.
type benchRatio struct {
	Throughput float64 `json:"throughput"`
	P99        float64 `json:"p99"`
}

func ratioOf(srv, ceil bench.Result) benchRatio {
	return benchRatio{srv.PerSec / ceil.PerSec, ms(srv.P99) / ms(ceil.P99)}
}

// benchRound is one round of the server then the bare handler.
type benchRound struct {
	Server  bench.Result `json:"server"`
	Ceiling bench.Result `json:"ceiling"`
	Ratio   benchRatio   `json:"ratio"`
}

// startCeiling starts a bare handler in a child process that answers
// every request with answer, and returns a function that measures the
// same generator against it, and one that stops it.
func (a *app) startCeiling(ctx context.Context, o benchOptions, base, path, tok string, answer []byte) (run func() bench.Result, stop func(), err error) {
	dir, err := os.MkdirTemp("", "coffer-ceiling")
	if err != nil {
		return nil, nil, err
	}
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	stops = append(stops, func() { os.RemoveAll(dir) })
	u, _ := url.Parse(base)
	host := u.Hostname()
	suffix := host[strings.IndexByte(host, '.')+1:]
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), suffix, time.Now())
	if err != nil {
		return nil, nil, err
	}
	bodyFile := filepath.Join(dir, "body")
	if err := os.WriteFile(bodyFile, answer, 0o600); err != nil {
		return nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	stops = append(stops, cancel)
	cmd := exec.CommandContext(cctx, self, "bench", "serve-fixed", "--cert", files.Cert, "--key", files.Key, "--body", bodyFile)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = a.stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stops = append(stops, func() {
		cancel() // stops the child, then its exit is collected
		cmd.Wait()
	})
	// The child says where it listens; nothing else is on its stdout.
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		return nil, nil, fmt.Errorf("the bare handler did not start: %q %v", line, err)
	}
	roots, err := httpclient.RootPool(files.CACert)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]*bench.Conn, o.workers)
	for i := range conns {
		if conns[i], err = bench.Dial(ctx, base, roots, func(string) string { return addr }); err != nil {
			return nil, nil, err
		}
		stops = append(stops, func() { conns[i].Close() })
	}
	fmt.Fprintf(a.stderr, "bench: the same generator against a bare handler at %s\n", addr)
	run = func() bench.Result {
		return bench.Run(ctx, o.workers, o.warmup, o.duration, func(_ context.Context, w int) error {
			status, err := conns[w].Do("GET", path, tok, nil)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("HTTP %d", status)
			}
			return err
		})
	}
	return run, stop, nil
}

// serveFixed is the ceiling's child: a TLS handler that does nothing but
// answer its fixed bytes, run with the server's GC setting.
func (a *app) serveFixed(c *cobra.Command) error {
	server.TuneGC()
	cert, _ := c.Flags().GetString("cert")
	key, _ := c.Flags().GetString("key")
	bodyFile, _ := c.Flags().GetString("body")
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return err
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Write(body)
		})}
	go func() {
		<-c.Context().Done()
		hs.Close()
	}()
	fmt.Fprintln(a.stdout, "listening "+ln.Addr().String())
	if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
