package nodeagent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func from(ip string) *http.Request {
	r := httptest.NewRequest("GET", imdsTokenPath, nil)
	r.RemoteAddr = ip + ":40000"
	return r
}

// A source's budget: a burst, then the rate; a cap on requests in
// progress; other sources untouched; a refusal names the limit and when to
// retry.
func TestPodLimiter(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	l := newPodLimiter(2, 4, 3, func() time.Time { return now })
	var releases []func()
	for i := range 3 {
		release, f := l.admit(from("10.1.0.5"))
		if f != nil {
			t.Fatalf("request %d of the burst: %v", i, f)
		}
		releases = append(releases, release)
	}
	if _, f := l.admit(from("10.1.0.5")); f == nil || f.Status != 429 || !strings.Contains(f.Message, "3 token requests in progress") || !strings.Contains(f.Message, "10.1.0.5") {
		t.Fatalf("a fourth at once: %v", f)
	}
	if release, f := l.admit(from("10.1.0.6")); f != nil {
		t.Fatalf("another pod while the first is at its cap: %v", f)
	} else {
		release()
	}
	for _, r := range releases {
		r()
	}
	if release, f := l.admit(from("10.1.0.5")); f != nil { // the burst's fourth
		t.Fatal(f)
	} else {
		release()
	}
	_, f := l.admit(from("10.1.0.5"))
	if f == nil || f.Code != "too_many_requests" || !strings.Contains(f.Message, "more than 2 token requests a second (bursts of 4)") || f.RetryAfter != 500*time.Millisecond {
		t.Fatalf("past the burst: %+v", f)
	}
	now = now.Add(500 * time.Millisecond) // one more, at 2 a second
	if release, f := l.admit(from("10.1.0.5")); f != nil {
		t.Fatalf("after the Retry-After: %v", f)
	} else {
		release()
	}
	if _, f := l.admit(from("10.1.0.5")); f == nil {
		t.Fatal("a second one within the same half second")
	}
}

// The table of sources stays bounded: idle, refilled sources are
// forgotten, and past the bound the rest share one budget.
func TestPodLimiterBounded(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	l := newPodLimiter(1, 1, 1, func() time.Time { return now })
	for i := range maxLimitedSources + 10 {
		if release, f := l.admit(from(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))); f == nil {
			release()
		}
	}
	if len(l.sources) > maxLimitedSources+1 { // the shared one
		t.Fatalf("%d sources tracked, over %d and the shared one", len(l.sources), maxLimitedSources)
	}
	now = now.Add(time.Minute) // all idle and refilled
	l.admit(from("192.0.2.1"))
	if len(l.sources) != 1 {
		t.Fatalf("%d sources after a sweep, want 1", len(l.sources))
	}
	if newPodLimiter(-1, 0, 0, time.Now) != nil {
		t.Fatal("a negative rate does not turn the limiter off")
	}
}
