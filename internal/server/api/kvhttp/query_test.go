package kvhttp

import (
	"net/url"
	"testing"
)

// TestQueryGetIsValuesGet holds queryGet to what it replaces, on queries
// written to differ: repeats, escapes, bad escapes, semicolons, bare keys.
func TestQueryGetIsValuesGet(t *testing.T) {
	queries := []string{
		"", "api-version=7.6", "api-version=7.6&api-version=7.5", "a=1&api-version=7.4",
		"api%2Dversion=7.3", "api-version=7%2E2", "api-version=%zz&api-version=7.1",
		"api-version=7.6;x=1&api-version=7.0", "api-version", "api-version=", "&&api-version=7.6&&",
		"api+version=1&api-version=2", "outContentType=application%2Fx-pkcs12", "api-version=a+b",
		"%zz=1&api-version=7.6", "x=%&api-version=7.6", "api-version=1=2",
	}
	for _, q := range queries {
		want, _ := url.ParseQuery(q)
		for _, name := range []string{"api-version", "outContentType", "api version", "x", "a"} {
			if got := queryGet(q, name); got != want.Get(name) {
				t.Errorf("queryGet(%q, %q) = %q, url.Values.Get = %q", q, name, got, want.Get(name))
			}
		}
	}
}

// FuzzQueryGet: the same comparison on any query.
func FuzzQueryGet(f *testing.F) {
	f.Add("api-version=7.6&outContentType=application%2Fx-pkcs12", "api-version")
	f.Fuzz(func(t *testing.T, q, name string) {
		want, _ := url.ParseQuery(q)
		if got := queryGet(q, name); got != want.Get(name) {
			t.Errorf("queryGet(%q, %q) = %q, url.Values.Get = %q", q, name, got, want.Get(name))
		}
	})
}

func TestQueryGetAllocatesNothing(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { queryGet("api-version=7.6", "api-version") }); n != 0 {
		t.Errorf("queryGet allocates %v times", n)
	}
}
