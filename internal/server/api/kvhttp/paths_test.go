package kvhttp

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestCollapseSlashes(t *testing.T) {
	for in, want := range map[string]string{
		"/secrets/n":          "/secrets/n",
		"//secrets/n":         "/secrets/n",
		"/secrets//n":         "/secrets/n",
		"///secrets///n//":    "/secrets/n/",
		"//secrets/n/":        "/secrets/n/",
		"//secrets/a%2Fb":     "/secrets/a%2Fb",
		"/secrets/a%2F%2Fb":   "/secrets/a%2F%2Fb",
		"//keys/k//sign":      "/keys/k/sign",
		"/deletedsecrets//n/": "/deletedsecrets/n/",
	} {
		var got string
		h := collapseSlashes(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r.URL.EscapedPath() }))
		r := httptest.NewRequest("GET", "https://v.vault.example"+in+"?api-version=7.6", nil)
		h.ServeHTTP(httptest.NewRecorder(), r)
		if got != want {
			t.Errorf("%s: routed as %s, want %s", in, got, want)
		}
		if r.URL.EscapedPath() != in {
			t.Errorf("%s: the caller's request was changed to %s", in, r.URL.EscapedPath())
		}
	}
}

func TestDotSegmentsRefused(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	for path, want := range map[string]int{
		"/secrets/.":           http.StatusBadRequest,
		"/secrets/..":          http.StatusBadRequest,
		"/secrets/a/../b":      http.StatusBadRequest,
		"/keys/./create":       http.StatusBadRequest,
		"/secrets/%2e%2E":      http.StatusBadRequest,
		"/secrets/%2E":         http.StatusBadRequest,
		"/secrets/a.b":         http.StatusTeapot,
		"/secrets/...":         http.StatusTeapot,
		"/secrets/a%2F..%2Fb":  http.StatusTeapot, // one segment, which the name check refuses
		"/..":                  http.StatusBadRequest,
		"/secrets/x/.%2e":      http.StatusBadRequest,
		"/secrets/x/%2e.":      http.StatusBadRequest,
		"/secrets/x/%2e%2e%2e": http.StatusTeapot,
		"/secrets/plain":       http.StatusTeapot,
	} {
		w := httptest.NewRecorder()
		refuseDotSegments(next).ServeHTTP(w, httptest.NewRequest("PUT", "https://v.vault.example"+path+"?api-version=7.6", nil))
		if w.Code != want {
			t.Errorf("%s: %d, want %d", path, w.Code, want)
		}
	}
}

// TestHasDotSegmentAllocatesNothing: the check runs on every request.
func TestHasDotSegmentAllocatesNothing(t *testing.T) {
	for _, p := range []string{"/secrets/bench", "/secrets/a.b/0123", "/secrets/a%2Db/0123456789abcdef"} {
		if n := testing.AllocsPerRun(100, func() { hasDotSegment(p) }); n != 0 {
			t.Errorf("hasDotSegment(%q) allocates %v times", p, n)
		}
	}
}
