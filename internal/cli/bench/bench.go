// Package bench is a closed-loop load generator: N workers run an operation
// back to back for a fixed time, and every latency is recorded.
package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Result summarises a run.
type Result struct {
	Workers  int           `json:"workers"`
	Ops      int           `json:"ops"`
	Errors   int           `json:"errors"`
	Elapsed  time.Duration `json:"elapsedNs"`
	PerSec   float64       `json:"opsPerSecond"`
	P50      time.Duration `json:"p50Ns"`
	P90      time.Duration `json:"p90Ns"`
	P99      time.Duration `json:"p99Ns"`
	Max      time.Duration `json:"maxNs"`
	FirstErr string        `json:"firstError,omitempty"`
}

func (r Result) String() string {
	s := fmt.Sprintf("%d workers, %d ops in %.2fs: %.0f ops/s, p50 %s, p90 %s, p99 %s, max %s, %d errors",
		r.Workers, r.Ops, r.Elapsed.Seconds(), r.PerSec, round(r.P50), round(r.P90), round(r.P99), round(r.Max), r.Errors)
	if r.FirstErr != "" {
		s += " (first: " + r.FirstErr + ")"
	}
	return s
}

func round(d time.Duration) time.Duration {
	switch {
	case d > 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d > 100*time.Microsecond:
		return d.Round(time.Microsecond)
	}
	return d
}

// Run runs op on workers goroutines for d after a warm-up period whose
// operations are not counted. op gets the worker's index.
func Run(ctx context.Context, workers int, warmup, d time.Duration, op func(ctx context.Context, worker int) error) Result {
	type local struct {
		lat   []time.Duration
		errs  int
		first error
	}
	locals := make([]local, workers)
	var wg sync.WaitGroup
	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := &locals[w]
			l.lat = make([]time.Duration, 0, 1<<14)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := op(ctx, w)
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue
				}
				if err != nil {
					l.errs++
					if l.first == nil {
						l.first = err
					}
					continue
				}
				l.lat = append(l.lat, t1.Sub(t0))
			}
		}()
	}
	wg.Wait()
	r := Result{Workers: workers, Elapsed: d}
	var all []time.Duration
	for _, l := range locals {
		all = append(all, l.lat...)
		r.Errors += l.errs
		if l.first != nil && r.FirstErr == "" {
			r.FirstErr = l.first.Error()
		}
	}
	slices.Sort(all)
	r.Ops = len(all)
	r.PerSec = float64(r.Ops) / d.Seconds()
	if n := len(all); n > 0 {
		r.P50, r.P90, r.P99, r.Max = all[n*50/100], all[n*90/100], all[n*99/100], all[n-1]
	}
	return r
}

// Median is the field-by-field median of rs (the lower middle for an even
// count): each figure of several rounds, steadier than any one round on a
// shared machine. FirstErr is the first round's that has one.
func Median(rs []Result) Result {
	if len(rs) == 0 {
		return Result{}
	}
	mid := func(f func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[(len(v)-1)/2]
	}
	dur := func(f func(Result) time.Duration) time.Duration {
		return time.Duration(mid(func(r Result) float64 { return float64(f(r)) }))
	}
	out := Result{
		Workers: rs[0].Workers,
		Ops:     int(mid(func(r Result) float64 { return float64(r.Ops) })),
		Errors:  int(mid(func(r Result) float64 { return float64(r.Errors) })),
		Elapsed: dur(func(r Result) time.Duration { return r.Elapsed }),
		PerSec:  mid(func(r Result) float64 { return r.PerSec }),
		P50:     dur(func(r Result) time.Duration { return r.P50 }),
		P90:     dur(func(r Result) time.Duration { return r.P90 }),
		P99:     dur(func(r Result) time.Duration { return r.P99 }),
		Max:     dur(func(r Result) time.Duration { return r.Max }),
	}
	for _, r := range rs {
		if r.FirstErr != "" {
			out.FirstErr = r.FirstErr
			break
		}
	}
	return out
}
