package integration

import (
	"strings"
	"testing"
	"time"
)

// TestVersionFromLdflags checks that the version a build sets with
// -ldflags is the one the binary reports.
func TestVersionFromLdflags(t *testing.T) {
	out, code := run(t, 30*time.Second, nil, "--version")
	if code != 0 || !strings.Contains(out, testVersion) {
		t.Fatalf("coffer --version: %d %q, want %s", code, out, testVersion)
	}
}
