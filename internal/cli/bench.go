package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/cli/bench"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server"
)

type benchOptions struct {
	vault            string
	workers          int
	duration, warmup time.Duration
	valueSize        int
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
		RunE: func(c *cobra.Command, _ []string) error { return a.runBench(c.Context(), o, false) },
	}
	set := &cobra.Command{
		Use: "set", Short: "PUT new secret versions repeatedly (each acknowledged only after a durable commit)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runBench(c.Context(), o, true) },
	}
	cmd.AddCommand(get, set)
	return cmd
}

func (a *app) runBench(ctx context.Context, o benchOptions, write bool) error {
	server.TuneGC() // the load generator shares the CPUs: keep its GC out of the way too
	if o.workers < 1 || o.workers > 4096 {
		return usagef("--concurrency must be 1 to 4096")
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
