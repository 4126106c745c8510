package server

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the GC target the server runs with unless GOGC is set.
// The server's live heap is small (tens of MiB), so collecting at 5x instead
// of 2x costs little memory and takes most GC work off the request path:
// measured with test/bench, it moved secret GETs from about 21k to 25k req/s
// and p99 from 5.5 ms to 4.8 ms on a 2-core machine.
const DefaultGCPercent = 400

// TuneGC applies DefaultGCPercent unless the operator set GOGC. GOMEMLIMIT,
// if set, still bounds the heap.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
