package scale

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

var (
	sizesFlag  = flag.String("scale.sizes", "1000,10000,100000,1000000", "comma-separated numbers of secret versions to measure, in increasing order")
	outFlag    = flag.String("scale.out", "", "file to write the results to as JSON (the input of make bench-report)")
	dirFlag    = flag.String("scale.dir", "", "directory for the store (default: a temporary one); it is filled from empty")
	getForFlag = flag.Duration("scale.get", 3*time.Second, "how long GETs are measured at each size")
	engineFlag = flag.String("scale.engine", "bolt", "storage engine: bolt, or etcd (one member, started by the benchmark)")
	repeatFlag = flag.Int("scale.repeat", 5, "fresh server processes measured at each size; each figure is their median")
)

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Results is the file make bench-scale writes (see docs/performance.md).
type Results struct {
	Engine      string    `json:"engine"`
	MeasuredAt  time.Time `json:"measuredAt"`
	CPUs        int       `json:"cpus"`
	Vaults      int       `json:"vaults"`
	BigVersions int       `json:"bigObjectVersions"`
	HotObjects  int       `json:"hotObjects"`
	// Notes say what a run could not measure, and why.
	Notes  []string `json:"notes,omitempty"`
	Points []Point  `json:"points"`
}

func parseSizes(s string) ([]int, error) {
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64) // 1e6 as well as 1000000
		if err != nil || v < 1 || v != float64(int(v)) {
			return nil, fmt.Errorf("size %q is not a positive whole number", f)
		}
		if len(sizes) > 0 && int(v) <= sizes[len(sizes)-1] {
			return nil, fmt.Errorf("sizes must increase: %q", s)
		}
		sizes = append(sizes, int(v))
	}
	return sizes, nil
}

// BenchmarkScale fills one store to each size in turn and measures a fresh
// server on it: start-up, memory, GET latency, a list page, and backup and
// restore of one object of 500 versions. Run it with -benchtime 1x (make
// bench-scale): each size is one measurement, of many requests.
func BenchmarkScale(b *testing.B) {
	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		b.Fatal(err)
	}
	dir := *dirFlag
	if dir == "" {
		dir = b.TempDir()
	} else if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	res := Results{Engine: *engineFlag, MeasuredAt: time.Now().UTC(), CPUs: runtime.NumCPU(), Vaults: Vaults, BigVersions: BigVersions, HotObjects: HotObjects}
	var etc *Etcd
	switch *engineFlag {
	case server.StorageBolt:
	case server.StorageEtcd:
		// One member on this machine, beside the server, as the etcd
		// benchmarks of test/bench run it.
		etc = &Etcd{Endpoints: etcdtest.Start(b, 1).Endpoints(), Prefix: "/coffer-scale/"}
		res.Notes = append(res.Notes, fmt.Sprintf("On etcd, the object of %d versions is more than one transaction may hold (128 operations "+
			"and 1.5 MiB by default), so its restore and purge are each written in several transactions within those limits.", BigVersions))
	default:
		b.Fatalf("-scale.engine %q: use bolt or etcd", *engineFlag)
	}
	st, err := NewStore(b.Context(), dir, Vaults, etc)
	if err != nil {
		b.Fatal(err)
	}
	set := Settings{Workers: 16, Warmup: time.Second, GetFor: *getForFlag, Rounds: 9}
	for _, n := range sizes {
		var last Point
		var failed error
		b.Run(fmt.Sprintf("versions=%d", n), func(b *testing.B) {
			for range b.N {
				t0 := time.Now()
				if err := st.Fill(b.Context(), n); err != nil {
					failed = fmt.Errorf("filling to %d versions: %w", n, err)
					b.Fatal(failed)
				}
				fill := time.Since(t0).Seconds()
				var runs []Point
				for range max(*repeatFlag, 1) {
					pt, err := Measure(b.Context(), st, set)
					if err != nil {
						failed = fmt.Errorf("measuring at %d versions: %w", n, err)
						b.Fatal(failed)
					}
					runs = append(runs, pt)
				}
				pt := medianPoint(runs)
				pt.FillSecond = fill
				b.ReportMetric(pt.StartMs, "start-ms")
				b.ReportMetric(pt.RSSReadyMiB, "rss-ready-MiB")
				b.ReportMetric(pt.RSSPeakMiB, "rss-peak-MiB")
				b.ReportMetric(pt.AnonMiB, "rss-anon-MiB")
				b.ReportMetric(pt.StoreMappedMiB, "rss-store-MiB")
				b.ReportMetric(pt.GetPerSec, "get/s")
				b.ReportMetric(pt.GetP50Ms, "get-p50-ms")
				b.ReportMetric(pt.GetP99Ms, "get-p99-ms")
				b.ReportMetric(pt.HotP50Ms, "hot-get-p50-ms")
				b.ReportMetric(pt.HotP99Ms, "hot-get-p99-ms")
				b.ReportMetric(pt.ListPageMs, "list-ms")
				b.ReportMetric(pt.BackupMs, "backup-ms")
				b.ReportMetric(pt.RestoreMs, "restore-ms")
				b.Logf("%d versions in %d objects (store %.0f MiB, filled in %.1fs): %+v", pt.Versions, pt.Objects, pt.StoreMiB, fill, pt)
				last = pt
			}
		})
		if last.Versions == 0 {
			// The size failed and said why; the results say where the
			// curves stop, so that the page does not read as complete.
			if failed != nil && *outFlag != "" {
				res.Notes = append(res.Notes, fmt.Sprintf("The run stopped at %d versions: %v.", n, failed))
				if err := writeResults(*outFlag, res); err != nil {
					b.Error(err)
				}
			}
			return
		}
		res.Points = append(res.Points, last)
		// Written after every size, so that a run cut short keeps what it
		// measured.
		if *outFlag != "" {
			if err := writeResults(*outFlag, res); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// medianPoint takes each figure's median over runs of one size, so that
// one run slowed by a neighbour on the machine does not make the curve.
func medianPoint(runs []Point) Point {
	pt := runs[0]
	for _, f := range []func(*Point) *float64{
		func(p *Point) *float64 { return &p.StartMs }, func(p *Point) *float64 { return &p.RSSReadyMiB },
		func(p *Point) *float64 { return &p.RSSPeakMiB }, func(p *Point) *float64 { return &p.AnonMiB },
		func(p *Point) *float64 { return &p.FileMiB }, func(p *Point) *float64 { return &p.StoreMappedMiB },
		func(p *Point) *float64 { return &p.GetPerSec }, func(p *Point) *float64 { return &p.GetP50Ms },
		func(p *Point) *float64 { return &p.GetP99Ms }, func(p *Point) *float64 { return &p.ListPageMs },
		func(p *Point) *float64 { return &p.HotPerSec }, func(p *Point) *float64 { return &p.HotP50Ms },
		func(p *Point) *float64 { return &p.HotP99Ms },
		func(p *Point) *float64 { return &p.BackupMs }, func(p *Point) *float64 { return &p.RestoreMs },
	} {
		vs := make([]float64, len(runs))
		for i := range runs {
			vs[i] = *f(&runs[i])
		}
		slices.Sort(vs)
		*f(&pt) = vs[len(vs)/2]
	}
	pt.Runs = len(runs)
	return pt
}

func writeResults(path string, res Results) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// TestScaleSmall runs the whole measurement at the smallest size, briefly,
// over 100 vaults rather than 1,000 (whose creation, one durable commit
// each, is most of a small run): the fill, a real server process on the
// store, and every request the benchmark makes. It checks that each works,
// not how fast.
func TestScaleSmall(t *testing.T) {
	t.Run("bolt", func(t *testing.T) { scaleSmall(t, nil) })
	// On etcd the backup's restore and the copy's purge, of 500
	// versions, are more than one transaction holds.
	t.Run("etcd", func(t *testing.T) {
		scaleSmall(t, &Etcd{Endpoints: etcdtest.Start(t, 1).Endpoints(), Prefix: "/coffer-scale/"})
	})
}

func scaleSmall(t *testing.T, etc *Etcd) {
	st, err := NewStore(t.Context(), t.TempDir(), 100, etc)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Fill(t.Context(), 1000); err != nil {
		t.Fatal(err)
	}
	if st.Versions != 1000 || len(st.Objects) != 100 {
		t.Fatalf("filled %d versions in %d objects, want 1000 in 100", st.Versions, len(st.Objects))
	}
	pt, err := Measure(t.Context(), st, Settings{Workers: 2, Warmup: 100 * time.Millisecond, GetFor: 300 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if pt.GetPerSec <= 0 || pt.HotPerSec <= 0 || pt.StartMs <= 0 || pt.RSSReadyMiB <= 0 || pt.BackupMs <= 0 || pt.RestoreMs <= 0 {
		t.Fatalf("a measurement is missing: %+v", pt)
	}
}

func TestMedianPoint(t *testing.T) {
	runs := []Point{{Versions: 5, StartMs: 30, GetP99Ms: 1}, {Versions: 5, StartMs: 10, GetP99Ms: 9}, {Versions: 5, StartMs: 20, GetP99Ms: 5}}
	if got := medianPoint(runs); got.Versions != 5 || got.StartMs != 20 || got.GetP99Ms != 5 || got.Runs != 3 {
		t.Fatalf("medianPoint = %+v, want versions 5, startMs 20, getP99Ms 5, runs 3", got)
	}
}

func TestParseSizes(t *testing.T) {
	for in, want := range map[string]string{
		"1000,10000": "[1000 10000]", "1e3, 1e6": "[1000 1000000]", "10,5": "error", "x": "error", "0": "error", "1.5": "error",
	} {
		got, err := parseSizes(in)
		s := fmt.Sprint(got)
		if err != nil {
			s = "error"
		}
		if s != want {
			t.Errorf("parseSizes(%q) = %s, want %s", in, s, want)
		}
	}
}
