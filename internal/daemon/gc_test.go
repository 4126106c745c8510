package daemon

import (
	"testing"
	"time"
)

// TestWatchFreeHeap scripts what each read of the heap returns, in order:
// the first read is at the start, then one per tick, and one more after
// each release.
func TestWatchFreeHeap(t *testing.T) {
	type heap struct{ free, cycles uint64 }
	script := []heap{
		{0, 3},        // start
		{8 << 20, 5},  // collections ran since the start: a burst
		{8 << 20, 9},  // still collecting
		{8 << 20, 9},  // quiet, with freed heap: release
		{0, 10},       // after the release (it collected)
		{1 << 20, 10}, // quiet, little freed heap
		{4 << 20, 11}, // freed heap, but a collection ran
		{4 << 20, 11}, // quiet again: release
		{0, 12},
	}
	ticks := 6
	var reads, releases int
	var releasedAt []int
	read := func() (uint64, uint64) {
		h := script[reads]
		reads++
		return h.free, h.cycles
	}
	release := func() { releases++; releasedAt = append(releasedAt, reads) }
	tick := make(chan time.Time)
	done := make(chan struct{})
	go func() { watchFreeHeap(tick, read, release); close(done) }()
	for range ticks {
		tick <- time.Time{}
	}
	close(tick)
	<-done
	if reads != len(script) {
		t.Fatalf("%d reads, want %d", reads, len(script))
	}
	if releases != 2 || releasedAt[0] != 4 || releasedAt[1] != 8 {
		t.Fatalf("released after reads %v, want after the 4th and the 8th", releasedAt)
	}
}
