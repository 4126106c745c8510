package fleet

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fleetRun is one row of fleet.json, the input of make bench-report (the
// format is tools/benchreport's FleetRun, which cannot be imported: it is
// a separate module). A figure a run does not measure stays nil.
type fleetRun struct {
	Name                string   `json:"name"`
	Nodes               int      `json:"nodes"`
	ObjectsPerNode      int      `json:"objectsPerNode"`
	ServerRSSMiB        *float64 `json:"serverRssMiB"`
	IdleCPUPercent      *float64 `json:"idleCpuPercent"`
	RefreshP50Ms        *float64 `json:"refreshP50Ms"`
	RefreshP99Ms        *float64 `json:"refreshP99Ms"`
	RequestsPerInterval *float64 `json:"requestsPerInterval"`
	Notes               string   `json:"notes"`
}

type fleetFile struct {
	MeasuredAt time.Time  `json:"measuredAt"`
	Runs       []fleetRun `json:"runs"`
}

// fleetOut is where the runs are recorded: make bench-fleet sets it to
// docs/performance/data/fleet.json. Unset, nothing is written, so that a benchmark
// run by hand leaves no file behind.
const fleetOutEnv = "COFFER_FLEET_OUT"

var recordMu sync.Mutex

// record replaces the run of the same name in the fleet file, keeping the
// others: the two benchmarks of make bench-fleet run as separate go test
// invocations and each adds its own rows.
func record(b testing.TB, run fleetRun) {
	b.Helper()
	path := os.Getenv(fleetOutEnv)
	if path == "" {
		return
	}
	recordMu.Lock()
	defer recordMu.Unlock()
	var f fleetFile
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		b.Fatalf("%s: %v", fleetOutEnv, err)
	default:
		if err := json.Unmarshal(data, &f); err != nil {
			b.Fatalf("%s: %s is not a fleet file (%v); remove it and run again", fleetOutEnv, path, err)
		}
	}
	kept := f.Runs[:0]
	for _, r := range f.Runs {
		if r.Name != run.Name {
			kept = append(kept, r)
		}
	}
	f.Runs = append(kept, run)
	f.MeasuredAt = time.Now().UTC().Truncate(time.Second)
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	b.Logf("recorded %q in %s", run.Name, path)
}

func ptr(v float64) *float64 { return &v }

// TestRecordKeepsOtherRuns checks that a benchmark's row replaces its own
// earlier row and keeps the other benchmark's, as make bench-fleet's two
// go test runs need.
func TestRecordKeepsOtherRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench", "fleet.json")
	t.Setenv(fleetOutEnv, path)
	record(t, fleetRun{Name: "watch", Nodes: 1000, RefreshP99Ms: ptr(640)})
	record(t, fleetRun{Name: "rotation", Nodes: 250, RequestsPerInterval: ptr(0)})
	record(t, fleetRun{Name: "watch", Nodes: 1000, RefreshP99Ms: ptr(320)})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f fleetFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Runs) != 2 || f.Runs[0].Name != "rotation" || f.Runs[1].Name != "watch" || *f.Runs[1].RefreshP99Ms != 320 || f.Runs[0].IdleCPUPercent != nil {
		t.Errorf("fleet.json holds %s, want the rotation row and the second watch row", data)
	}
	if f.MeasuredAt.IsZero() {
		t.Error("fleet.json has no measuredAt")
	}
}
