// Package poll waits in tests for a condition that another goroutine or
// process brings about, with a deadline a loaded 2-core machine meets,
// instead of a fixed sleep.
package poll

import (
	"testing"
	"time"
)

// Deadline is how long Until waits: long enough for a loaded CI machine,
// short enough that a condition never reached fails the test in reason.
const Deadline = 30 * time.Second

// Until calls cond every few milliseconds until it holds, and fails the
// test, naming what it waited for, if it does not within Deadline.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(Deadline); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", Deadline, what)
		}
	}
}
