package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func write(t *testing.T, path string, n int) {
	t.Helper()
	l, err := Open(path, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Record(Entry{Operation: "Microsoft.KeyVault/vaults/secrets/getSecret/action", Vault: "demo", Object: "secrets/s" + string(rune('a'+i%26)), Status: 200, Decision: "allow"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func verifyFile(t *testing.T, path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Verify(f)
}

func TestChainAcrossReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	write(t, path, 50)
	write(t, path, 30) // the chain continues in a new process
	n, err := verifyFile(t, path)
	if err != nil || n != 80 {
		t.Fatalf("Verify = %d, %v; want 80 lines, no error", n, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit log mode %v", fi.Mode().Perm())
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	write(t, path, 10)
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(orig), "\n")

	edited := append([]string(nil), lines...)
	edited[4] = strings.Replace(edited[4], `"status":200`, `"status":403`, 1)
	os.WriteFile(path, []byte(strings.Join(edited, "")), 0o600)
	var te *TamperError
	if _, err := verifyFile(t, path); !errors.As(err, &te) || te.Line != 5 || !strings.Contains(te.Reason, "edited") {
		t.Fatalf("edited line: %v", err)
	}

	removed := append(append([]string(nil), lines[:3]...), lines[4:]...)
	os.WriteFile(path, []byte(strings.Join(removed, "")), 0o600)
	if _, err := verifyFile(t, path); !errors.As(err, &te) || te.Line != 4 || !strings.Contains(te.Reason, "removed") {
		t.Fatalf("removed line: %v", err)
	}

	swapped := append([]string(nil), lines...)
	swapped[2], swapped[3] = swapped[3], swapped[2]
	os.WriteFile(path, []byte(strings.Join(swapped, "")), 0o600)
	if _, err := verifyFile(t, path); err == nil {
		t.Fatal("reordered lines verified")
	}
}

func TestTornTailIsCutAndRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	write(t, path, 5)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	f.WriteString(`{"time":"2026-01-01T00:00:00Z","operation":"half a li`)
	f.Close()
	write(t, path, 2)
	n, err := verifyFile(t, path)
	if err != nil || n != 8 {
		t.Fatalf("Verify after a torn tail = %d, %v; want 8 (5 + recovery + 2)", n, err)
	}
	data, _ := os.ReadFile(path)
	if !bytes.Contains(data, []byte(`"event":"recovered"`)) || bytes.Contains(data, []byte("half a li")) {
		t.Fatal("the torn tail was not cut and recorded")
	}
}

// flakySink fails, or blocks, until told otherwise.
type flakySink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	failing bool
	block   chan struct{}
}

func (s *flakySink) Write(p []byte) (int, error) {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing {
		return 0, errors.New("disk full")
	}
	return s.buf.Write(p)
}
func (s *flakySink) Sync() error { return nil }
func (s *flakySink) set(failing bool) {
	s.mu.Lock()
	s.failing = failing
	s.mu.Unlock()
}

func TestFailingSinkNeverBlocksAndLeavesAVisibleGap(t *testing.T) {
	// The sink first hangs, so the writer is stuck in its first flush (at
	// the latest at 64 KiB) and lines must be dropped, however fast it
	// would otherwise drain; then it fails.
	sink := &flakySink{failing: true, block: make(chan struct{})}
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	l := New(sink, "", Options{Buffer: 100, FlushEvery: time.Millisecond, Now: clock})
	// Far more lines than the buffer and one flush hold: Record must
	// return every time.
	for range 5000 {
		l.Record(Entry{Operation: "x", Status: 200})
	}
	if testutil.ToFloat64(l.Metrics().Dropped) == 0 {
		t.Fatal("no lines counted as dropped while the buffer overflowed")
	}
	close(sink.block)
	waitFor(t, func() bool { return testutil.ToFloat64(l.Metrics().Failing) == 1 })
	sink.set(false)
	// The writer retries on its own, once its clock is past the retry
	// delay (moved on at every look, so no retry scheduled meanwhile is
	// missed); once it has, the buffer has room again (a line recorded
	// before that could still be dropped, as designed).
	waitFor(t, func() bool {
		mu.Lock()
		now = now.Add(time.Hour)
		mu.Unlock()
		return testutil.ToFloat64(l.Metrics().Failing) == 0
	})
	l.Record(Entry{Operation: "after", Status: 200})
	l.Close()
	sink.mu.Lock()
	out := sink.buf.String()
	sink.mu.Unlock()
	if !strings.Contains(out, `"event":"gap"`) || !strings.Contains(out, `"operation":"after"`) {
		t.Fatalf("after recovery the log lacks the gap or the new line:\n%.500s", out)
	}
	if _, err := Verify(strings.NewReader(out)); err != nil {
		t.Fatalf("the chain does not verify after a failure: %v", err)
	}
}

func TestHungSinkNeverBlocksRecord(t *testing.T) {
	sink := &flakySink{block: make(chan struct{})}
	l := New(sink, "", Options{Buffer: 10, FlushEvery: time.Millisecond})
	done := make(chan struct{})
	go func() {
		for range 10_000 {
			l.Record(Entry{Operation: "x"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Record blocked behind a hung sink")
	}
	close(sink.block)
	l.Close()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRecordAfterCloseIsDropped: a request that outlives the server's
// shutdown records after the log closed; that must count a dropped line,
// not panic on the closed channel, and may race with Close itself.
func TestRecordAfterCloseIsDropped(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, err := Open(filepath.Join(t.TempDir(), "audit.log"), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				l.Record(Entry{Operation: "racing", Status: 200})
			}
		}()
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	before := testutil.ToFloat64(l.Metrics().Dropped)
	l.Record(Entry{Operation: "late", Status: 200})
	if got := testutil.ToFloat64(l.Metrics().Dropped); got != before+1 {
		t.Fatalf("dropped after a late Record = %v, want %v", got, before+1)
	}
}
