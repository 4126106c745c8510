package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden page from the fixture")

// TestRenderFixture renders testdata/full and compares the page with
// testdata/full.golden.md; -update rewrites it after a deliberate change.
func TestRenderFixture(t *testing.T) {
	in, err := Load("testdata/full")
	if err != nil {
		t.Fatal(err)
	}
	page, err := Render(in, "performance")
	if err != nil {
		t.Fatal(err)
	}
	golden := "testdata/full.golden.md"
	if *update {
		if err := os.WriteFile(golden, []byte(page.Markdown), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if page.Markdown != string(want) {
		t.Errorf("the page differs from %s (run go test -update after a deliberate change); got:\n%s", golden, page.Markdown)
	}
	// Every chart the page shows is written, and is an SVG document.
	refs := regexp.MustCompile(`\]\(performance/([^)]+)\)`).FindAllStringSubmatch(page.Markdown, -1)
	if len(refs) != 8 || len(page.Charts) != len(refs) {
		t.Fatalf("page shows %d charts and renders %d, want 8", len(refs), len(page.Charts))
	}
	for i, c := range page.Charts {
		if c.Name != refs[i][1] || !bytes.Contains(c.SVG, []byte("<svg")) {
			t.Errorf("chart %d: %s (%d bytes) for reference %s", i, c.Name, len(c.SVG), refs[i][1])
		}
	}
}

func TestRenderVerdicts(t *testing.T) {
	in, err := Load("testdata/full")
	if err != nil {
		t.Fatal(err)
	}
	page, err := Render(in, "performance")
	if err != nil {
		t.Fatal(err)
	}
	// The fixture's figures miss some goals and meet others; each verdict
	// is on the line of its figure.
	for _, want := range []string{
		"Run 1 (`get.json`): **0.49×** the limit's throughput (goal ≥ 0.8×: **not met**)",
		"**1.62×** its p99 (goal ≤ 1.5×: **not met**)",
		// A repeat that meets both goals does not hide the run that did not.
		"- run 2 (`get-2.json`): **0.85×** the throughput (met), **1.20×** the p99 (met)",
		"Over the 2 runs, the throughput goal is met in 1 and the p99 goal in 1: **not met**.",
		"| random GET p50 (ms) | 1.10 | 1.30 | ×1.18 | met |",
		"| hot GET p99 (ms) | 6.00 | 7.50 | ×1.25 | met |",
		"| random GET p99 (ms) | 9.00 | 30.00 | ×3.33 | **not met** |",
		"Start to ready at 1,000,000 versions: 6000 ms (goal under 5000 ms: **not met**)",
		"| 1000 nodes x 50 objects | 1000 | 50 | 180.5 | not measured | 120 | 640 | 0 |",
		// etcd measured no backup: a dash in the table, no growth row.
		"| 0.30 | — | — |",
		"Backup is not measured here.",
	} {
		if !strings.Contains(page.Markdown, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestRenderNothingMeasured(t *testing.T) {
	in, err := Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	page, err := Render(in, "performance")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(page.Markdown, "Not measured"); n != 4 || len(page.Charts) != 0 {
		t.Errorf("%d sections say not measured and %d charts were drawn, want 4 and 0:\n%s", n, len(page.Charts), page.Markdown)
	}
	// A fleet simulation not run says how to run it, and its section has
	// no table to mistake for figures.
	if !strings.Contains(page.Markdown, "## Fleet simulation\n\nNot measured: run `make bench-fleet`") || strings.Contains(page.Markdown, "| simulation |") {
		t.Errorf("the fleet section does not say it is not measured:\n%s", page.Markdown)
	}
}

func TestLoadRefusesABrokenFile(t *testing.T) {
	if _, err := Load("testdata/bad"); err == nil || !strings.Contains(err.Error(), "scale.json") {
		t.Fatalf("Load of a truncated file: %v, want an error naming it", err)
	}
}

func TestLoadRefusesRepeatsOutOfSequence(t *testing.T) {
	get, err := os.ReadFile("testdata/full/get.json")
	if err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][]string{
		"a gap":       {"get.json", "get-2.json", "get-4.json"},
		"no get.json": {"get-2.json"},
	} {
		dir := t.TempDir()
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), get, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "without gaps") {
			t.Errorf("%s: Load = %v, want an error about the repeats' numbering", name, err)
		}
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "docs", "performance.md")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "docs", "performance", "gone.svg")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("<svg/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	page := Page{Markdown: "# x\n", Charts: []Chart{{Name: "a.svg", SVG: []byte("<svg/>")}}}
	if err := Write(page, out, "performance"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a chart the page no longer shows is still there: %v", err)
	}
	for path, want := range map[string]string{out: "# x\n", filepath.Join(dir, "docs", "performance", "a.svg"): "<svg/>"} {
		if b, err := os.ReadFile(path); err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", path, b, err, want)
		}
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -12345: "-12,345", 7388.67: "7,389"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

// A ratio is shown with the decimals it takes to fall on its own side of
// the goal, and with two otherwise.
func TestRatioShownOnItsSideOfTheGoal(t *testing.T) {
	for _, c := range []struct {
		v          float64
		throughput bool
		want       string
	}{
		{0.8197, true, "0.82"},
		{0.7982, true, "0.798"},
		{0.7996, true, "0.7996"},
		{0.8, true, "0.80"},
		{0.66, true, "0.66"},
		{1.197, false, "1.20"},
		{1.5049, false, "1.505"},
		{1.4951, false, "1.50"},
	} {
		got := p99Ratio(c.v)
		if c.throughput {
			got = throughputRatio(c.v)
		}
		if got != c.want {
			t.Errorf("%v shown as %s, want %s", c.v, got, c.want)
		}
	}
}
