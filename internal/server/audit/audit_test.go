package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/testing/poll"
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
	c, err := Verify(f)
	return c.Lines, err
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
	poll.Until(t, "the sink to be reported failing", func() bool { return testutil.ToFloat64(l.Metrics().Failing) == 1 })
	sink.set(false)
	// The writer retries on its own, once its clock is past the retry
	// delay (moved on at every look, so no retry scheduled meanwhile is
	// missed); once it has, the buffer has room again (a line recorded
	// before that could still be dropped, as designed).
	poll.Until(t, "the writer to retry and recover", func() bool {
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

// chainOf verifies the file at path, which must be intact.
func chainOf(t *testing.T, path string) (Chain, []Entry) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(path), err)
	}
	var es []Entry
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	return c, es
}

// requests counts the lines a request made (not the log's own).
func requests(es []Entry) int {
	n := 0
	for _, e := range es {
		if e.Event == "" {
			n++
		}
	}
	return n
}

func TestRotationByRenameContinuesTheChain(t *testing.T) {
	for _, create := range []bool{true, false} {
		// logrotate's create mode puts an empty file at the path; a plain
		// mv leaves none.
		t.Run(map[bool]string{true: "create", false: "mv"}[create], func(t *testing.T) {
			dir := t.TempDir()
			path, old := filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.log.1")
			reg := prometheus.NewRegistry()
			l, err := Open(path, Options{Registerer: reg, FlushEvery: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			rec := func(n int) {
				for range n {
					l.Record(Entry{Operation: "getSecret", Vault: "demo", Status: 200})
				}
			}
			rec(100)
			poll.Until(t, "the first lines", func() bool { return testutil.ToFloat64(l.Metrics().Lines) == 100 })
			if err := os.Rename(path, old); err != nil {
				t.Fatal(err)
			}
			if create {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			rec(50) // these may land in either file: none may be lost
			poll.Until(t, "the rotated line at the path", func() bool {
				data, _ := os.ReadFile(path)
				return bytes.Contains(data, []byte(`"event":"rotated"`))
			})
			rec(50)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			before, bes := chainOf(t, old)
			after, aes := chainOf(t, path)
			if before.First != "" || !after.Continues(before) || after.First == "" {
				t.Fatalf("the new file does not continue the old one: %+v then %+v", before, after)
			}
			if aes[0].Event != "rotated" {
				t.Fatalf("the new file starts with %+v, not the rotated line", aes[0])
			}
			if got := requests(bes) + requests(aes); got != 200 {
				t.Fatalf("%d request lines over both files; want 200", got)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
				t.Fatalf("new audit log mode %v", fi.Mode().Perm())
			}
			m := l.Metrics()
			if fi, _ := os.Stat(path); testutil.ToFloat64(m.FileBytes) != float64(fi.Size()) ||
				testutil.ToFloat64(m.Rotations.WithLabelValues("rename")) != 1 || testutil.ToFloat64(m.Rotations.WithLabelValues("size")) != 0 {
				t.Fatalf("metrics: file %v bytes (the file has %d), rotations %v by rename and %v by size; want its size, 1 and 0",
					testutil.ToFloat64(m.FileBytes), fi.Size(), testutil.ToFloat64(m.Rotations.WithLabelValues("rename")), testutil.ToFloat64(m.Rotations.WithLabelValues("size")))
			}
			// A third process run reopens the new file and goes on.
			write(t, path, 3)
			if again, _ := chainOf(t, path); again.First != after.First || again.Lines != after.Lines+3 {
				t.Fatalf("after a reopen: %+v, before it %+v", again, after)
			}
		})
	}
}

func TestCopytruncateLeavesNoHole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{Registerer: prometheus.NewRegistry(), FlushEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		l.Record(Entry{Operation: "getSecret", Status: 200})
	}
	poll.Until(t, "the first lines", func() bool { return testutil.ToFloat64(l.Metrics().Lines) == 100 })
	if err := os.Truncate(path, 0); err != nil { // what copytruncate does after its copy
		t.Fatal(err)
	}
	for range 20 {
		l.Record(Entry{Operation: "getSecret", Status: 200})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if bytes.IndexByte(data, 0) >= 0 {
		t.Fatal("the file has a hole of NUL bytes where the cut lines were")
	}
	c, es := chainOf(t, path)
	if c.First == "" || requests(es) != 20 {
		t.Fatalf("after the cut: %+v, %d request lines; want the chain continued and 20 lines", c, requests(es))
	}
	if !bytes.Contains(data, []byte(`"event":"truncated"`)) {
		t.Fatal("no truncated line records the cut")
	}
}

func TestVerifyChainsFilesInOrder(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "audit.log"), filepath.Join(t.TempDir(), "audit.log")
	write(t, a, 5)
	write(t, b, 5)
	first, _ := chainOf(t, a)
	second, _ := chainOf(t, b)
	if second.Continues(first) {
		t.Fatal("two unrelated files pass as one chain")
	}
	if !second.Continues(Chain{}) || !(Chain{}).Continues(first) {
		t.Fatal("an empty file breaks a chain")
	}
}

// A file rotated while the server was down, or just before it stopped
// (between the rename and the new file's first line), is continued by
// the next start: by the newest of the server's own rotations, else by
// logrotate's path.1.
func TestOpenContinuesTheFileRotatedLast(t *testing.T) {
	for _, name := range []string{"audit.log.1", RotatedName("audit.log", time.Date(2026, 12, 7, 1, 2, 3, 4, time.UTC))} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.log")
			write(t, path, 5)
			if err := os.Rename(path, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			if name == "audit.log.1" {
				os.WriteFile(path, nil, 0o600) // logrotate's create
			}
			write(t, path, 5)
			before, _ := chainOf(t, filepath.Join(dir, name))
			after, es := chainOf(t, path)
			if !after.Continues(before) || after.First == "" {
				t.Fatalf("the new file does not continue %s: %+v then %+v", name, before, after)
			}
			if es[0].Event != "rotated" || !strings.Contains(es[0].Detail, name) {
				t.Fatalf("first line %+v; want a rotated line naming %s", es[0], name)
			}
		})
	}
}

func TestRotatesItselfAndKeepsMaxFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	// A clock that moves a millisecond a reading, so that each rotation
	// has a name of its own.
	var mu sync.Mutex
	clock := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Millisecond)
		return clock
	}
	l, err := Open(path, Options{Registerer: prometheus.NewRegistry(), FlushEvery: 2 * time.Millisecond, Now: now, MaxBytes: 4 << 10, MaxFiles: 3})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for {
		for range 20 {
			l.Record(Entry{Operation: "getSecret", Vault: "demo", Status: 200})
		}
		total += 20
		poll.Until(t, "the lines recorded", func() bool { return testutil.ToFloat64(l.Metrics().Lines) >= float64(total) })
		if names, _ := Rotated(path); len(names) == 3 && total >= 400 {
			break
		}
		if total > 5000 {
			t.Fatal("the log did not rotate itself")
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := Rotated(path)
	if len(names) != 3 {
		t.Fatalf("%d rotated files kept; want MaxFiles, 3: %v", len(names), names)
	}
	if by := testutil.ToFloat64(l.Metrics().Rotations.WithLabelValues("size")); by < 3 {
		t.Fatalf("%v rotations by size counted; want at least the 3 files kept", by)
	}
	files := append(names, path)
	var before Chain
	for i, n := range files {
		c, es := chainOf(t, n)
		if i > 0 && !c.Continues(before) {
			t.Fatalf("%s does not continue %s", filepath.Base(n), filepath.Base(files[i-1]))
		}
		if i < len(files)-1 {
			if fi, _ := os.Stat(n); fi.Size() > 4<<10+flushBytes || fi.Size() < 4<<10 {
				t.Fatalf("%s holds %d bytes; want MaxBytes, 4 KiB, up to one batch more", filepath.Base(n), fi.Size())
			}
		}
		if es[0].Event != "rotated" && i > 0 {
			t.Fatalf("%s starts with %+v", filepath.Base(n), es[0])
		}
		before = c
	}
}

// With a clock that stands still (as tests inject) or steps back, each
// rotation still gets a name of its own, and the names sort in the order
// of the rotations: none replaces another, and pruning would remove the
// oldest.
func TestRotationNamesSortWhateverTheClock(t *testing.T) {
	for name, step := range map[string]time.Duration{"stopped": 0, "backwards": -time.Hour} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			var mu sync.Mutex
			clock := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
			now := func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				clock = clock.Add(step)
				return clock
			}
			l, err := Open(path, Options{Registerer: prometheus.NewRegistry(), FlushEvery: 2 * time.Millisecond, Now: now, MaxBytes: 2 << 10})
			if err != nil {
				t.Fatal(err)
			}
			total := 0
			for names, _ := Rotated(path); len(names) < 4; names, _ = Rotated(path) {
				for range 10 {
					l.Record(Entry{Operation: "getSecret", Vault: "demo", Status: 200})
				}
				total += 10
				poll.Until(t, "the lines recorded", func() bool { return testutil.ToFloat64(l.Metrics().Lines) >= float64(total) })
				if total > 5000 {
					t.Fatal("the log did not rotate itself")
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			names, _ := Rotated(path)
			got := 0
			var before Chain
			for i, n := range append(names, path) {
				c, es := chainOf(t, n)
				if i > 0 && !c.Continues(before) {
					t.Fatalf("%s does not continue the file named before it", filepath.Base(n))
				}
				before = c
				got += requests(es)
			}
			if got != total {
				t.Fatalf("%d request lines over %d files; want %d", got, len(names)+1, total)
			}
		})
	}
}
