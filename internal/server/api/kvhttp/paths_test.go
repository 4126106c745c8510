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
