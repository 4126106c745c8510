package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An error no class foresaw becomes a 500 with the fixed message, and its
// text goes to the log only. No request reaches this path today, so it is
// driven from inside.
func TestUnforeseenErrors(t *testing.T) {
	detail := errors.New("open /var/lib/coffer/state.json: permission denied")
	for name, c := range map[string]struct {
		err    error
		status int
		msg    string
	}{
		"unforeseen":      {err: fmt.Errorf("reading state: %w", detail), status: 500, msg: msgInternal},
		"deadline":        {err: fmt.Errorf("%w (%v)", context.DeadlineExceeded, detail), status: 503, msg: msgTimeout},
		"a failure as is": {err: fmt.Errorf("wrapped: %w", fail(403, "unauthorized_client", "no")), status: 403, msg: "no"},
	} {
		t.Run(name, func(t *testing.T) {
			var log bytes.Buffer
			a := &Agent{cfg: Config{Log: slog.New(slog.NewJSONHandler(&log, nil))}, metrics: newMetrics()}
			rec := httptest.NewRecorder()
			a.finish(rec, "imds", Caller{Node: true, How: "test"}, Request{Resource: "https://vault.example"}, time.Now(), c.err)
			if rec.Code != c.status || !strings.Contains(rec.Body.String(), c.msg) || strings.Contains(rec.Body.String(), "state.json") {
				t.Fatalf("%d %s, want %d with %q and no internal text", rec.Code, rec.Body.String(), c.status, c.msg)
			}
			if c.status != 403 && !strings.Contains(log.String(), "state.json") {
				t.Errorf("the log lacks the detail:\n%s", log.String())
			}
		})
	}
}
