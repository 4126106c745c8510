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
