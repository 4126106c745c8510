//go:build !node

package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/testing/poll"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// openAudit opens a log at path that flushes often, as a server would on
// its tick.
func openAudit(t *testing.T, path string) *audit.Log {
	t.Helper()
	l, err := audit.Open(path, audit.Options{Registerer: prometheus.NewRegistry(), FlushEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func record(l *audit.Log, n int) {
	for range n {
		l.Record(audit.Entry{Operation: "getSecret", Vault: "demo", Status: 200})
	}
}

// rotate renames path to path.N as logrotate's create mode does, leaving
// an empty file at path.
func rotate(t *testing.T, path string, n int) string {
	t.Helper()
	old := path + "." + string(rune('0'+n))
	if err := os.Rename(path, old); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return old
}

func TestAuditVerifyChecksRotatedFilesInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openAudit(t, path)
	var olds []string
	for i := range 2 {
		record(l, 10)
		poll.Until(t, "lines written", func() bool { return testutil.ToFloat64(l.Metrics().Lines) >= float64(10*(i+1)) })
		olds = append(olds, rotate(t, path, 2-i))
		poll.Until(t, "the rotated line", func() bool {
			data, _ := os.ReadFile(path)
			return bytes.Contains(data, []byte(`"event":"rotated"`))
		})
	}
	record(l, 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	oldest, middle := olds[0], olds[1] // audit.log.2, then audit.log.1
	if code, out := runMain("audit", "verify", "-f", oldest, "-f", middle, "-f", path); code != 0 || !strings.Contains(out, "3 files") || !strings.Contains(out, "one chain") {
		t.Fatalf("verify of the whole rotated log: %d %s", code, out)
	}
	for _, bad := range [][]string{{oldest, path}, {middle, oldest}, {path, middle}} {
		code, out := runMain("audit", "verify", "-f", bad[0], "-f", bad[1])
		if code == 0 || !strings.Contains(out, "does not continue") {
			t.Fatalf("verify %v: %d %s; want a missing or misordered file reported", bad, code, out)
		}
	}
}

func TestAuditTailFollowsARotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openAudit(t, path)
	defer l.Close()
	record(l, 5)
	poll.Until(t, "the first lines", func() bool { return testutil.ToFloat64(l.Metrics().Lines) == 5 })
	ctx, cancel := context.WithCancel(context.Background())
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- tailLog(ctx, &out, path, 100, true) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tail: %v", err)
		}
	}()
	count := func() int { return strings.Count(out.String(), `"operation":"getSecret"`) }
	poll.Until(t, "the first lines tailed", func() bool { return count() == 5 })
	rotate(t, path, 1)
	record(l, 5) // these land in either file
	poll.Until(t, "the rotated line tailed", func() bool { return strings.Contains(out.String(), `"event":"rotated"`) })
	record(l, 5)
	poll.Until(t, "every line tailed", func() bool { return count() == 15 })
}

func TestAuditVerifyRotatedFindsTheServersOwnRotations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, audit.Options{Registerer: prometheus.NewRegistry(), FlushEvery: 2 * time.Millisecond, MaxBytes: 2 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; ; i++ {
		record(l, 10)
		poll.Until(t, "lines written", func() bool { return testutil.ToFloat64(l.Metrics().Lines) >= float64(10*i) })
		if names, _ := audit.Rotated(path); len(names) >= 3 {
			break
		}
		if i > 500 {
			t.Fatal("the log did not rotate itself")
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := audit.Rotated(path)
	code, out := runMain("audit", "verify", "--rotated", "-f", path)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d files", len(names)+1)) || !strings.Contains(out, "one chain") {
		t.Fatalf("verify --rotated: %d %s", code, out)
	}
	os.Remove(names[1]) // one from the middle
	if code, out := runMain("audit", "verify", "--rotated", "-f", path); code == 0 || !strings.Contains(out, "does not continue") {
		t.Fatalf("verify --rotated with a file gone: %d %s", code, out)
	}
}
