package integration

import (
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

// coffer bench get --ceiling --rounds N through the real binary: the
// server and the bare handler (a child process of the bench) alternate N
// times, every round is listed, and the reported figures are the medians
// of the rounds, with the ratio of those medians. Throughput here is only
// checked to be positive: the figures themselves belong to make bench-get.
func TestBenchGetRounds(t *testing.T) {
	dir := t.TempDir()
	startDev(t, dir)
	ef := devenv.Path(dir)

	if r := cli(t, ef, "", "bench", "get", "--rounds", "2"); r.code != 2 || !strings.Contains(r.err, "give --ceiling too") {
		t.Fatalf("--rounds without --ceiling: exit %d: %s", r.code, r.err)
	}
	if r := cli(t, ef, "", "bench", "get", "--ceiling", "--rounds", "0"); r.code != 2 || !strings.Contains(r.err, "--rounds must be 1 to 100") {
		t.Fatalf("--rounds 0: exit %d: %s", r.code, r.err)
	}

	out := mustCLI(t, ef, "-o", "json", "bench", "get", "--ceiling", "--rounds", "3", "--concurrency", "4", "--warmup", "100ms", "--duration", "300ms")
	type result struct {
		Ops          int64   `json:"ops"`
		Errors       int64   `json:"errors"`
		OpsPerSecond float64 `json:"opsPerSecond"`
		P99          int64   `json:"p99Ns"`
	}
	type ratio struct {
		Throughput float64 `json:"throughput"`
		P99        float64 `json:"p99"`
	}
	var rep struct {
		Server, Ceiling result
		Ratio           ratio
		Rounds          []struct {
			Server, Ceiling result
			Ratio           ratio
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench output is not JSON: %v\n%s", err, out)
	}
	if len(rep.Rounds) != 3 {
		t.Fatalf("%d rounds listed, want 3:\n%s", len(rep.Rounds), out)
	}
	var srv, ceil []float64
	for i, rd := range rep.Rounds {
		if rd.Server.Ops == 0 || rd.Ceiling.Ops == 0 || rd.Server.Errors != 0 || rd.Ceiling.Errors != 0 {
			t.Fatalf("round %d: %+v", i+1, rd)
		}
		if !near(rd.Ratio.Throughput, rd.Server.OpsPerSecond/rd.Ceiling.OpsPerSecond) {
			t.Errorf("round %d's ratio %v is not its own figures' %v", i+1, rd.Ratio.Throughput, rd.Server.OpsPerSecond/rd.Ceiling.OpsPerSecond)
		}
		srv, ceil = append(srv, rd.Server.OpsPerSecond), append(ceil, rd.Ceiling.OpsPerSecond)
	}
	slices.Sort(srv)
	slices.Sort(ceil)
	if rep.Server.OpsPerSecond != srv[1] || rep.Ceiling.OpsPerSecond != ceil[1] {
		t.Errorf("reported %v and %v, but the medians of the rounds are %v and %v", rep.Server.OpsPerSecond, rep.Ceiling.OpsPerSecond, srv[1], ceil[1])
	}
	if !near(rep.Ratio.Throughput, srv[1]/ceil[1]) {
		t.Errorf("ratio %v, want the ratio of the medians %v", rep.Ratio.Throughput, srv[1]/ceil[1])
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
