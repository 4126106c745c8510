package bench

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRunCountsOpsAndErrors(t *testing.T) {
	// Every other call fails, and the windows are long enough for a busy
	// machine to make several calls in each.
	calls := make([]int, 4)
	r := Run(context.Background(), 4, 200*time.Millisecond, time.Second, func(_ context.Context, w int) error {
		calls[w]++
		time.Sleep(time.Millisecond)
		if calls[w]%2 == 0 {
			return errors.New("boom")
		}
		return nil
	})
	if r.Ops == 0 || r.Errors == 0 || r.FirstErr != "boom" {
		t.Fatalf("result %+v: want ops and errors counted", r)
	}
	if r.P50 < time.Millisecond || r.P99 < r.P50 || r.Max < r.P99 {
		t.Fatalf("percentiles out of order: %+v", r)
	}
	total := 0
	for _, c := range calls {
		total += c
	}
	if total <= r.Ops+r.Errors {
		t.Fatalf("warm-up calls were counted: %d calls, %d recorded", total, r.Ops+r.Errors)
	}
}

func TestMedian(t *testing.T) {
	rs := []Result{
		{Workers: 4, Ops: 30, PerSec: 300, P50: 3, P99: 9, Max: 20},
		{Workers: 4, Ops: 10, PerSec: 100, P50: 1, P99: 30, Max: 10, FirstErr: "boom"},
		{Workers: 4, Ops: 20, PerSec: 200, P50: 2, P99: 10, Max: 30},
	}
	m := Median(rs)
	if m.Ops != 20 || m.PerSec != 200 || m.P50 != 2 || m.P99 != 10 || m.Max != 20 || m.Workers != 4 || m.FirstErr != "boom" {
		t.Fatalf("Median = %+v", m)
	}
	if m := Median(rs[:2]); m.PerSec != 100 || m.P99 != 9 {
		t.Fatalf("Median of two = %+v, want the lower middle", m)
	}
	if m := Median(nil); m != (Result{}) {
		t.Fatalf("Median(nil) = %+v", m)
	}
}
