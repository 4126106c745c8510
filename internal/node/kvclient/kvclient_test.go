package kvclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// answer is what a stand-in vault replies.
type answer struct {
	status int
	header map[string]string
	body   string
}

// vault is a stand-in vault on loopback that gives one answer, and
// returns the first request it was sent.
func vault(t *testing.T, a answer) (*Client, string, func() *http.Request) {
	t.Helper()
	var mu sync.Mutex
	var got []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Clone(context.Background()))
		mu.Unlock()
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		if a.status != 0 {
			w.WriteHeader(a.status)
		}
		w.Write([]byte(a.body))
	}))
	t.Cleanup(srv.Close)
	first := func() *http.Request {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			t.Fatal("the vault was sent nothing")
		}
		return got[0]
	}
	return &Client{HTTP: srv.Client()}, srv.URL, first
}

func errorBody(code, inner string) string {
	if inner == "" {
		return `{"error":{"code":"` + code + `","message":"it says no"}}`
	}
	return `{"error":{"code":"` + code + `","message":"it says no","innererror":{"code":"` + inner + `"}}}`
}

// Every failure is an *Error with the vault's status, codes and message,
// classified as the provider protocol reports it.
func TestErrorsAreClassified(t *testing.T) {
	tests := map[string]struct {
		answer    answer
		wantClass mounterr.Code
		want      Error
	}{
		"401": {answer: answer{status: 401, body: errorBody("Unauthorized", "")}, wantClass: mounterr.Forbidden,
			want: Error{Status: 401, Code: "Unauthorized", Message: "it says no"}},
		"403 with an inner code": {answer: answer{status: 403, body: errorBody("Forbidden", "AccessDenied")}, wantClass: mounterr.Forbidden,
			want: Error{Status: 403, Code: "Forbidden", Inner: "AccessDenied", Message: "it says no"}},
		"404": {answer: answer{status: 404, body: errorBody("SecretNotFound", "")}, wantClass: mounterr.NotFound,
			want: Error{Status: 404, Code: "SecretNotFound", Message: "it says no"}},
		"429 with Retry-After": {answer: answer{status: 429, header: map[string]string{"Retry-After": "7"}, body: errorBody("Throttled", "")}, wantClass: mounterr.Throttled,
			want: Error{Status: 429, Code: "Throttled", Message: "it says no", RetryAfter: 7 * time.Second}},
		"429 with a huge Retry-After": {answer: answer{status: 429, header: map[string]string{"Retry-After": "99999999999"}}, wantClass: mounterr.Throttled,
			want: Error{Status: 429, Message: "Too Many Requests", RetryAfter: 24 * time.Hour}},
		"429 with a date for Retry-After": {answer: answer{status: 429, header: map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}}, wantClass: mounterr.Throttled,
			want: Error{Status: 429, Message: "Too Many Requests"}},
		"400": {answer: answer{status: 400, body: errorBody("BadParameter", "")}, wantClass: mounterr.InvalidParameter,
			want: Error{Status: 400, Code: "BadParameter", Message: "it says no"}},
		"500 without a body": {answer: answer{status: 500}, wantClass: mounterr.Unreachable,
			want: Error{Status: 500, Message: "Internal Server Error"}},
		"503 from a proxy": {answer: answer{status: 503, body: "<html>down</html>"}, wantClass: mounterr.Unreachable,
			want: Error{Status: 503, Message: "Service Unavailable"}},
		"an unexpected status": {answer: answer{status: 418}, wantClass: mounterr.Internal,
			want: Error{Status: 418, Message: "I'm a teapot"}},
		"a 200 that is not JSON": {answer: answer{body: "<html>"}, wantClass: mounterr.Internal,
			want: Error{Status: 200, Code: "BadResponse"}},
		"a 200 over the bound": {answer: answer{body: `{"value":"` + strings.Repeat("x", MaxBody) + `"}`}, wantClass: mounterr.Internal,
			want: Error{Status: 200, Code: "ResponseTooLarge", Message: fmt.Sprintf("the response is over %d bytes", MaxBody)}},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			c, base, _ := vault(t, test.answer)
			var s Secret
			_, _, err := c.Get(context.Background(), base, "tok", "secrets", "db", "", "", &s)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Get: %v (%T), want an *Error", err, err)
			}
			if test.want.Code == "BadResponse" {
				test.want.Message = e.Message // the JSON decoder's words
			}
			if *e != test.want {
				t.Errorf("Get: %+v, want %+v", *e, test.want)
			}
			if got := Classify(err); got != test.wantClass {
				t.Errorf("Classify = %s, want %s", got, test.wantClass)
			}
			if got := Classify(fmt.Errorf("reading: %w", err)); got != test.wantClass {
				t.Errorf("Classify of the wrapped error = %s, want %s", got, test.wantClass)
			}
		})
	}
}

// A vault that cannot be reached is mounterr.Unreachable, with the transport's
// error kept; an error that is neither the vault's nor the network's is
// Internal.
func TestTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close() // its port now refuses connections
	c := &Client{HTTP: &http.Client{}}
	_, _, err := c.Get(context.Background(), base, "tok", "secrets", "db", "", "", &Secret{})
	var e *Error
	if !errors.As(err, &e) || e.Status != 0 || e.Err == nil || Classify(err) != mounterr.Unreachable {
		t.Fatalf("a refused connection: %v, class %s", err, Classify(err))
	}
	if !strings.HasPrefix(err.Error(), "vault unreachable: ") {
		t.Errorf("message %q", err)
	}
	if got := Classify(context.DeadlineExceeded); got != mounterr.Unreachable {
		t.Errorf("a deadline: %s", got)
	}
	if got := Classify(errors.New("something else")); got != mounterr.Internal {
		t.Errorf("another error: %s", got)
	}
}

// Get reads the object at the URL Key Vault's API names, with the token,
// conditionally when it has an ETag: a 304 leaves out untouched.
func TestGet(t *testing.T) {
	tests := map[string]struct {
		version, etag   string
		answer          answer
		wantPath        string
		wantTag         string
		wantNotModified bool
		wantValue       string
	}{
		"the latest version": {
			answer:   answer{header: map[string]string{"ETag": `"v1.x"`}, body: `{"id":"https://v/secrets/db/v1","value":"s3cret"}`},
			wantPath: "/secrets/db", wantTag: `"v1.x"`, wantValue: "s3cret",
		},
		"a version, and a name to escape": {
			version:  "v1",
			answer:   answer{header: map[string]string{"ETag": `"v1.x"`}, body: `{"id":"https://v/secrets/db/v1","value":"s3cret"}`},
			wantPath: "/secrets/a%2Fb/v1", wantTag: `"v1.x"`, wantValue: "s3cret",
		},
		"unchanged": {
			etag:     `"v1.x"`,
			answer:   answer{status: 304, header: map[string]string{"ETag": `"v1.x"`}},
			wantPath: "/secrets/db", wantTag: `"v1.x"`, wantNotModified: true, wantValue: "untouched",
		},
		"changed": {
			etag:     `"v1.x"`,
			answer:   answer{header: map[string]string{"ETag": `"v2.y"`}, body: `{"id":"https://v/secrets/db/v2","value":"new"}`},
			wantPath: "/secrets/db", wantTag: `"v2.y"`, wantValue: "new",
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			c, base, first := vault(t, test.answer)
			secret := Secret{Value: "untouched"}
			objName := "db"
			if strings.Contains(test.wantPath, "%2F") {
				objName = "a/b"
			}
			tag, notModified, err := c.Get(context.Background(), base+"/", "tok", "secrets", objName, test.version, test.etag, &secret)
			if err != nil {
				t.Fatal(err)
			}
			if tag != test.wantTag || notModified != test.wantNotModified || secret.Value != test.wantValue {
				t.Errorf("Get = %q, %v, value %q; want %q, %v, %q", tag, notModified, secret.Value, test.wantTag, test.wantNotModified, test.wantValue)
			}
			r := first()
			if r.URL.EscapedPath() != test.wantPath || r.URL.Query().Get("api-version") != APIVersion {
				t.Errorf("asked for %s", r.URL)
			}
			if r.Header.Get("Authorization") != "Bearer tok" {
				t.Errorf("Authorization %q", r.Header.Get("Authorization"))
			}
			if r.Header.Get("If-None-Match") != test.etag {
				t.Errorf("If-None-Match %q, want %q", r.Header.Get("If-None-Match"), test.etag)
			}
			if r.Header.Get("Prefer") != "" {
				t.Errorf("an ordinary read asks to be held: Prefer %q", r.Header.Get("Prefer"))
			}
		})
	}
}

// Wait asks the vault to hold a conditional read (If-None-Match and
// Prefer: wait=N), and a change brings the new state with it, decoded, so
// the caller need not fetch it again.
func TestWait(t *testing.T) {
	tests := map[string]struct {
		wait          time.Duration
		noOut         bool
		answer        answer
		wantPrefer    string
		want          Held
		wantValue     string
		wantErr       error
		wantUndecoded string // the code of Held.Undecoded
		wantErrClass  mounterr.Code
	}{
		"changed": {
			wait:       25 * time.Second,
			answer:     answer{header: map[string]string{"ETag": `"v2.y"`}, body: `{"id":"https://v/secrets/db/v2","value":"new"}`},
			wantPrefer: "wait=25", want: Held{ETag: `"v2.y"`, Changed: true}, wantValue: "new",
		},
		"changed, without a place to decode to": {
			wait: 25 * time.Second, noOut: true,
			answer:     answer{header: map[string]string{"ETag": `"v2.y"`}, body: `{"value":"new"}`},
			wantPrefer: "wait=25", want: Held{ETag: `"v2.y"`, Changed: true},
		},
		"changed, over the bound": {
			wait:       25 * time.Second,
			answer:     answer{header: map[string]string{"ETag": `"v2.y"`}, body: `{"value":"` + strings.Repeat("x", MaxBody) + `"}`},
			wantPrefer: "wait=25", want: Held{ETag: `"v2.y"`, Changed: true}, wantUndecoded: "ResponseTooLarge",
		},
		"changed, not JSON": {
			wait:       25 * time.Second,
			answer:     answer{header: map[string]string{"ETag": `"v2.y"`}, body: `<html>`},
			wantPrefer: "wait=25", want: Held{ETag: `"v2.y"`, Changed: true}, wantUndecoded: "BadResponse",
		},
		"held until the wait ended": {
			wait:       25 * time.Second,
			answer:     answer{status: 304, header: map[string]string{"ETag": `"v1.x"`, "Preference-Applied": "wait=25"}},
			wantPrefer: "wait=25", want: Held{ETag: `"v1.x"`}, wantValue: "untouched",
		},
		"under a second asks for one": {
			wait:       300 * time.Millisecond,
			answer:     answer{status: 304, header: map[string]string{"Preference-Applied": "wait=1"}},
			wantPrefer: "wait=1", want: Held{ETag: `"v1.x"`}, wantValue: "untouched",
		},
		"a vault that does not hold reads": {
			wait:       25 * time.Second,
			answer:     answer{status: 304, header: map[string]string{"ETag": `"v1.x"`}},
			wantPrefer: "wait=25", wantErr: ErrNotHeld, wantValue: "untouched",
		},
		"refused": {
			wait:       25 * time.Second,
			answer:     answer{status: 403, body: errorBody("Forbidden", "AccessDenied")},
			wantPrefer: "wait=25", wantErrClass: mounterr.Forbidden, wantValue: "untouched",
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			c, base, first := vault(t, test.answer)
			secret := Secret{Value: "untouched"}
			var out any = &secret
			if test.noOut {
				out = nil
			}
			held, err := c.Wait(context.Background(), base, "tok", "secrets", "db", `"v1.x"`, test.wait, out)
			switch {
			case test.wantErr != nil || test.wantErrClass != "":
				if (test.wantErr != nil && !errors.Is(err, test.wantErr)) || (test.wantErrClass != "" && Classify(err) != test.wantErrClass) {
					t.Fatalf("Wait: %v, want %v%s", err, test.wantErr, test.wantErrClass)
				}
			case err != nil:
				t.Fatal(err)
			}
			var e *Error
			switch {
			case test.wantUndecoded == "" && held.Undecoded != nil:
				t.Errorf("Undecoded: %v", held.Undecoded)
			case test.wantUndecoded != "" && (!errors.As(held.Undecoded, &e) || e.Code != test.wantUndecoded):
				t.Errorf("Undecoded: %v, want %s", held.Undecoded, test.wantUndecoded)
			}
			held.Undecoded = nil
			if held != test.want {
				t.Errorf("Wait = %+v, want %+v", held, test.want)
			}
			if !test.noOut && test.wantUndecoded == "" && secret.Value != test.wantValue {
				t.Errorf("decoded value %q, want %q", secret.Value, test.wantValue)
			}
			r := first()
			if r.URL.Path != "/secrets/db" || r.URL.Query().Get("api-version") != APIVersion || r.Header.Get("Authorization") != "Bearer tok" {
				t.Errorf("asked for %s with %q", r.URL, r.Header.Get("Authorization"))
			}
			if r.Header.Get("If-None-Match") != `"v1.x"` || r.Header.Get("Prefer") != test.wantPrefer {
				t.Errorf("If-None-Match %q, Prefer %q; want %q, %q", r.Header.Get("If-None-Match"), r.Header.Get("Prefer"), `"v1.x"`, test.wantPrefer)
			}
		})
	}
}

// Versions follows nextLink through every page, within the vault only.
func TestVersions(t *testing.T) {
	var srv *httptest.Server
	var mu sync.Mutex
	pages := map[string]string{}
	setPage := func(page, body string) {
		mu.Lock()
		defer mu.Unlock()
		pages[page] = body
	}
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		body, ok := pages[r.URL.Query().Get("page")]
		mu.Unlock()
		if !ok {
			w.WriteHeader(404)
			w.Write([]byte(errorBody("SecretNotFound", "")))
			return
		}
		w.Write([]byte(strings.ReplaceAll(body, "BASE", srv.URL)))
	}))
	defer srv.Close()
	c := &Client{HTTP: srv.Client()}
	ctx := context.Background()
	setPage("", `{"value":[{"id":"BASE/secrets/db/v1","attributes":{"enabled":true}}],"nextLink":"BASE/secrets/db/versions?api-version=7.6&page=2"}`)
	setPage("2", `{"value":[{"id":"BASE/secrets/db/v2","attributes":{"enabled":false}}],"nextLink":null}`)
	items, err := c.Versions(ctx, srv.URL, "tok", "secrets", "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Version() != "v1" || !items[0].Attributes.Enabled || items[1].Version() != "v2" || items[1].Attributes.Enabled {
		t.Fatalf("Versions = %+v", items)
	}

	setPage("2", `{"value":[],"nextLink":"https://elsewhere.example/secrets/db/versions?page=3"}`)
	if _, err := c.Versions(ctx, srv.URL, "tok", "secrets", "db"); err == nil || !strings.Contains(err.Error(), "leaves the vault") {
		t.Fatalf("a nextLink to another host: %v", err)
	}

	setPage("", `{"value":[],"nextLink":"BASE/secrets/db/versions?page=gone"}`)
	if _, err := c.Versions(ctx, srv.URL, "tok", "secrets", "db"); Classify(err) != mounterr.NotFound {
		t.Fatalf("a page that fails: %v", err)
	}
}

// A key's and a certificate's versions are named by their kid and id.
func TestVersionOf(t *testing.T) {
	tests := map[string]struct {
		item Item
		want string
	}{
		"a secret's id":      {item: Item{ID: "https://v/secrets/db/abc"}, want: "abc"},
		"a key's kid":        {item: Item{KID: "https://v/keys/k/def"}, want: "def"},
		"no path at all":     {item: Item{ID: "abc"}, want: "abc"},
		"a trailing slash":   {item: Item{ID: "https://v/secrets/db/"}, want: ""},
		"nothing to name it": {item: Item{}, want: ""},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			if got := test.item.Version(); got != test.want {
				t.Errorf("Version() = %q, want %q", got, test.want)
			}
		})
	}
}
