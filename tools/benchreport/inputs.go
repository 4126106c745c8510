package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The files the benchmark targets write into the input directory. Each is
// optional: a missing one is reported as not measured.
const (
	getFile   = "get.json"        // coffer bench get --ceiling -o json (make bench-get)
	getRepeat = "get-%d.json"     // the same measurement repeated: get-2.json, get-3.json, ...
	fleetFile = "fleet.json"      // the fleet simulation's result (format: FleetResults)
	scaleFile = "scale.json"      // make bench-scale
	etcdFile  = "scale-etcd.json" // make bench-scale-etcd
)

// BenchResult is one run of coffer bench's load generator
// (internal/cli/bench.Result's JSON).
type BenchResult struct {
	Workers int     `json:"workers"`
	Ops     int     `json:"ops"`
	Errors  int     `json:"errors"`
	PerSec  float64 `json:"opsPerSecond"`
	P50Ns   int64   `json:"p50Ns"`
	P90Ns   int64   `json:"p90Ns"`
	P99Ns   int64   `json:"p99Ns"`
	MaxNs   int64   `json:"maxNs"`
}

// GetResults is the output of `coffer bench get --ceiling -o json`.
type GetResults struct {
	Server  BenchResult `json:"server"`
	Ceiling BenchResult `json:"ceiling"`
	Ratio   GetRatio    `json:"ratio"`
	// Rounds, when the run had several, are each round's figures; Server
	// and Ceiling are then their medians, and Ratio is of the medians.
	Rounds []GetRound `json:"rounds,omitempty"`
}

// GetRatio is the server's figures over the ceiling's.
type GetRatio struct {
	Throughput float64 `json:"throughput"`
	P99        float64 `json:"p99"`
}

// GetRound is one round of the server then the ceiling.
type GetRound struct {
	Server  BenchResult `json:"server"`
	Ceiling BenchResult `json:"ceiling"`
	Ratio   GetRatio    `json:"ratio"`
}

// FleetRun is one fleet simulation: nodes watching objects through one
// server. Figures a run did not measure are left out (null).
type FleetRun struct {
	// Name says what was simulated, such as "1000 nodes x 50 objects".
	Name           string `json:"name"`
	Nodes          int    `json:"nodes"`
	ObjectsPerNode int    `json:"objectsPerNode"`
	// ServerRSSMiB is the server's resident set with every watch held.
	ServerRSSMiB *float64 `json:"serverRssMiB"`
	// IdleCPUPercent is the server's CPU while nothing changes, in percent
	// of one core.
	IdleCPUPercent *float64 `json:"idleCpuPercent"`
	// RefreshP50Ms and RefreshP99Ms run from one write to every watching
	// node having refreshed its volumes.
	RefreshP50Ms *float64 `json:"refreshP50Ms"`
	RefreshP99Ms *float64 `json:"refreshP99Ms"`
	// RequestsPerInterval counts the vault requests, on the server, per
	// rotation interval for watched, unchanged objects.
	RequestsPerInterval *float64 `json:"requestsPerInterval"`
	Notes               string   `json:"notes"`
}

// FleetResults is fleet.json.
type FleetResults struct {
	MeasuredAt time.Time  `json:"measuredAt"`
	Runs       []FleetRun `json:"runs"`
}

// ScalePoint is one size of make bench-scale (test/scale's Point).
type ScalePoint struct {
	Versions    int     `json:"versions"`
	Objects     int     `json:"objects"`
	Vaults      int     `json:"vaults"`
	StoreMiB    float64 `json:"storeMiB"`
	FillSeconds float64 `json:"fillSeconds"`
	StartMs     float64 `json:"startMs"`
	RSSReadyMiB float64 `json:"rssReadyMiB"`
	RSSPeakMiB  float64 `json:"rssPeakMiB"`
	RSSAnonMiB  float64 `json:"rssAnonMiB"`
	RSSFileMiB  float64 `json:"rssFileMiB"`
	// RSSStoreMiB is the part of RSSFileMiB that maps the bbolt file.
	RSSStoreMiB float64 `json:"rssStoreMappedMiB"`
	Workers     int     `json:"getWorkers"`
	GetPerSec   float64 `json:"getPerSecond"`
	GetP50Ms    float64 `json:"getP50Ms"`
	GetP99Ms    float64 `json:"getP99Ms"`
	HotPerSec   float64 `json:"hotGetPerSecond"`
	HotP50Ms    float64 `json:"hotGetP50Ms"`
	HotP99Ms    float64 `json:"hotGetP99Ms"`
	ListPageMs  float64 `json:"listPageMs"`
	BackupMs    float64 `json:"backupMs"`
	RestoreMs   float64 `json:"restoreMs"`
	// Runs is how many fresh server processes each figure is the median
	// of.
	Runs int `json:"runs"`
}

// ScaleResults is scale.json.
type ScaleResults struct {
	Engine      string       `json:"engine"`
	MeasuredAt  time.Time    `json:"measuredAt"`
	CPUs        int          `json:"cpus"`
	Vaults      int          `json:"vaults"`
	BigVersions int          `json:"bigObjectVersions"`
	HotObjects  int          `json:"hotObjects"`
	Notes       []string     `json:"notes"`
	Points      []ScalePoint `json:"points"`
}

// Inputs are whatever the benchmarks left; nil is not measured.
type Inputs struct {
	Get *GetResults
	// GetRepeats are further runs of the GET measurement, of the same
	// code and in the same way, in the order of their files: one run's
	// ratio varies by more than a tenth here, and the page shows them all
	// rather than the one that happened to be kept.
	GetRepeats []GetResults
	Fleet      *FleetResults
	Scale      *ScaleResults
	// ScaleEtcd is the cost curves on the etcd engine.
	ScaleEtcd *ScaleResults
}

// Load reads the input files in dir. A missing file is not an error; a
// file that does not parse is.
func Load(dir string) (Inputs, error) {
	var in Inputs
	if err := loadOptional(dir, getFile, &in.Get); err != nil {
		return in, err
	}
	for n := 2; in.Get != nil; n++ {
		var r *GetResults
		if err := loadOptional(dir, fmt.Sprintf(getRepeat, n), &r); err != nil {
			return in, err
		}
		if r == nil {
			break
		}
		in.GetRepeats = append(in.GetRepeats, *r)
	}
	// A repeat the loop did not reach (a gap in the numbers, or no
	// get.json) would silently leave the page; refuse it instead.
	found, err := filepath.Glob(filepath.Join(dir, "get-*.json"))
	if err != nil {
		return in, err
	}
	if len(found) != len(in.GetRepeats) {
		for i := range found {
			found[i] = filepath.Base(found[i])
		}
		return in, fmt.Errorf("%s: repeated GET runs are read as get-2.json, get-3.json, ... without gaps, beside get.json; found %s, and %d of them in sequence (rename them, or remove the stray ones)",
			dir, strings.Join(found, ", "), len(in.GetRepeats))
	}
	if err := loadOptional(dir, fleetFile, &in.Fleet); err != nil {
		return in, err
	}
	if err := loadOptional(dir, scaleFile, &in.Scale); err != nil {
		return in, err
	}
	if err := loadOptional(dir, etcdFile, &in.ScaleEtcd); err != nil {
		return in, err
	}
	if in.Scale != nil && len(in.Scale.Points) == 0 {
		in.Scale = nil
	}
	if in.ScaleEtcd != nil && len(in.ScaleEtcd.Points) == 0 {
		in.ScaleEtcd = nil
	}
	if in.Fleet != nil && len(in.Fleet.Runs) == 0 {
		in.Fleet = nil
	}
	return in, nil
}

// loadOptional decodes dir/name into a new *into, and leaves *into nil
// when the file does not exist.
func loadOptional[T any](dir, name string, into **T) error {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
	}
	*into = v
	return nil
}
