package daemon

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestLeanGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	t.Setenv("GOGC", "") // restored at the end; unset for the first case
	os.Unsetenv("GOGC")
	LeanGC()
	if got := debug.SetGCPercent(100); got != NodeGCPercent {
		t.Fatalf("without GOGC: the target is %d, want %d", got, NodeGCPercent)
	}

	// GOGC is read by the runtime at start; LeanGC leaves whatever it set.
	t.Setenv("GOGC", "100")
	LeanGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("with GOGC=100: the target is %d, want 100", got)
	}
}
