package authclient_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
)

// endpoint is a token endpoint whose answer a test sets; it records each
// request's form.
type endpoint struct {
	srv *httptest.Server

	mu     sync.Mutex
	forms  []url.Values
	paths  []string
	answer func(w http.ResponseWriter, form url.Values, n int)
	hold   func()
}

func newEndpoint(t testing.TB) *endpoint {
	e := &endpoint{answer: func(w http.ResponseWriter, form url.Values, n int) {
		token(w, fmt.Sprintf("tok-%d", n), 3600)
	}}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		hold := e.hold
		e.mu.Unlock()
		if hold != nil {
			hold()
		}
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			http.Error(w, "want a form POST", http.StatusBadRequest)
			return
		}
		r.ParseForm()
		e.mu.Lock()
		e.forms = append(e.forms, r.PostForm)
		e.paths = append(e.paths, r.URL.EscapedPath())
		n, answer := len(e.forms), e.answer
		e.mu.Unlock()
		answer(w, r.PostForm, n)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) set(f func(w http.ResponseWriter, form url.Values, n int)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.answer = f
}

func (e *endpoint) requests() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.forms)
}

func (e *endpoint) form(i int) url.Values {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.forms[i]
}

// token answers with an access token valued v, valid for secs seconds.
func token(w http.ResponseWriter, v string, secs any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"access_token": v, "expires_in": secs, "token_type": "Bearer"})
}

// clock is a settable time for the cache.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func client(e *endpoint, c *clock) *authclient.Client {
	return &authclient.Client{HTTP: e.srv.Client(), Authority: e.srv.URL + "/", Now: c.now}
}

const scope = "https://vault.example/.default"

var secretCred = authclient.Credential{TenantID: "tenant-1", ClientID: "app", Secret: "s3cret"}

// What each kind of credential sends: exactly the OAuth client-credentials
// form for its proof, plus the managed identity it acts for.
func TestForms(t *testing.T) {
	signs := 0
	for name, c := range map[string]struct {
		cred authclient.Credential
		want map[string]string // "" for a field that must be absent
		err  string
	}{
		"secret": {cred: secretCred, want: map[string]string{"grant_type": "client_credentials", "client_id": "app", "client_secret": "s3cret", "scope": scope,
			"client_assertion": "", "client_assertion_type": "", "mi_client_id": "", "mi_object_id": "", "mi_res_id": ""}},
		"assertion": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app", Assertion: "eyJ.fed.sig"}, want: map[string]string{"client_id": "app",
			"client_assertion": "eyJ.fed.sig", "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_secret": ""}},
		"signer": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app", SignerID: "thumb", Sign: func() (string, error) { signs++; return fmt.Sprintf("signed-%d", signs), nil }},
			want: map[string]string{"client_assertion": "signed-1", "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_secret": ""}},
		"acting for a client id": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "agent", Secret: "s", ActFor: authclient.Selector{ClientID: "mi-client"}},
			want: map[string]string{"client_id": "agent", "mi_client_id": "mi-client", "mi_object_id": "", "mi_res_id": ""}},
		"acting for an object id": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "agent", Secret: "s", ActFor: authclient.Selector{ObjectID: "mi-oid"}},
			want: map[string]string{"mi_client_id": "", "mi_object_id": "mi-oid", "mi_res_id": ""}},
		"acting for a resource id": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "agent", Secret: "s", ActFor: authclient.Selector{ResourceID: "/subscriptions/s/x"}},
			want: map[string]string{"mi_client_id": "", "mi_object_id": "", "mi_res_id": "/subscriptions/s/x"}},
		"no proof":          {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app"}, err: "exactly one"},
		"two proofs":        {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app", Secret: "s", Assertion: "a"}, err: "exactly one"},
		"signer and secret": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app", Secret: "s", Sign: func() (string, error) { return "a", nil }}, err: "exactly one"},
		"signer fails": {cred: authclient.Credential{TenantID: "tenant-1", ClientID: "app", Sign: func() (string, error) { return "", errors.New("no key") }},
			err: "signing the client assertion: no key"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEndpoint(t)
			tok, err := client(e, &clock{t: time.Now()}).Token(context.Background(), c.cred, scope)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || e.requests() != 0 {
					t.Fatalf("err %v after %d requests, want %q and no request", err, e.requests(), c.err)
				}
				return
			}
			if err != nil || tok.Value != "tok-1" {
				t.Fatalf("%+v %v", tok, err)
			}
			f := e.form(0)
			for k, v := range c.want {
				if f.Get(k) != v || (v == "" && f.Has(k)) {
					t.Errorf("%s = %q, want %q", k, f.Get(k), v)
				}
			}
			if e.paths[0] != "/tenant-1/oauth2/v2.0/token" {
				t.Errorf("path %s", e.paths[0])
			}
		})
	}
	t.Run("the tenant is one path segment", func(t *testing.T) {
		e := newEndpoint(t)
		cred := secretCred
		cred.TenantID = "a/../b"
		if _, err := client(e, &clock{t: time.Now()}).Token(context.Background(), cred, scope); err != nil {
			t.Fatal(err)
		}
		if e.paths[0] != "/a%2F..%2Fb/oauth2/v2.0/token" {
			t.Fatalf("path %s", e.paths[0])
		}
	})
}

// A token is cached per credential, proof included, and scope.
func TestCachePerIdentity(t *testing.T) {
	e := newEndpoint(t)
	c := client(e, &clock{t: time.Now()})
	ctx := context.Background()
	other := func(f func(*authclient.Credential)) authclient.Credential {
		c := secretCred
		f(&c)
		return c
	}
	steps := []struct {
		name  string
		cred  authclient.Credential
		scope string
		token string // the value answered
	}{
		{"first", secretCred, scope, "tok-1"},
		{"again", secretCred, scope, "tok-1"},
		{"another scope", secretCred, "https://other.example/.default", "tok-2"},
		{"another secret for the same client", other(func(c *authclient.Credential) { c.Secret = "guess" }), scope, "tok-3"},
		{"another tenant", other(func(c *authclient.Credential) { c.TenantID = "tenant-2" }), scope, "tok-4"},
		{"acting for an identity", other(func(c *authclient.Credential) { c.ActFor.ClientID = "mi" }), scope, "tok-5"},
		{"acting for another", other(func(c *authclient.Credential) { c.ActFor.ClientID = "mi2" }), scope, "tok-6"},
		{"the same one again", other(func(c *authclient.Credential) { c.ActFor.ClientID = "mi" }), scope, "tok-5"},
		{"an assertion", authclient.Credential{TenantID: "tenant-1", ClientID: "app", Assertion: "a1"}, scope, "tok-7"},
		{"another assertion", authclient.Credential{TenantID: "tenant-1", ClientID: "app", Assertion: "a2"}, scope, "tok-8"},
		{"another signer key", authclient.Credential{TenantID: "tenant-1", ClientID: "app", SignerID: "k1", Sign: func() (string, error) { return "x", nil }}, scope, "tok-9"},
		{"the same signer key", authclient.Credential{TenantID: "tenant-1", ClientID: "app", SignerID: "k1", Sign: func() (string, error) { return "y", nil }}, scope, "tok-9"},
		{"first, still", secretCred, scope, "tok-1"},
	}
	for _, s := range steps {
		tok, err := c.Token(ctx, s.cred, s.scope)
		if err != nil || tok.Value != s.token {
			t.Fatalf("%s: %q %v, want %q", s.name, tok.Value, err, s.token)
		}
	}
}

// A cached token is answered for three quarters of its life (and at least
// until a minute before it expires); after that it is still answered while
// one background request replaces it; within 30 seconds of expiry the
// caller waits for a new one.
func TestRefresh(t *testing.T) {
	for name, c := range map[string]struct {
		life     int           // seconds
		at       time.Duration // when the second call is made
		fresh    bool          // whether it is answered from the cache alone
		waits    bool          // whether it waits for a new token
		requests int           // how many requests end up made
	}{
		"early":                     {life: 3600, at: 2699 * time.Second, fresh: true, requests: 1},
		"past three quarters":       {life: 3600, at: 2700 * time.Second, requests: 2},
		"just before stale":         {life: 3600, at: 3569 * time.Second, requests: 2},
		"stale":                     {life: 3600, at: 3570 * time.Second, waits: true, requests: 2},
		"expired":                   {life: 3600, at: 2 * time.Hour, waits: true, requests: 2},
		"short-lived, a minute off": {life: 200, at: 139 * time.Second, fresh: true, requests: 1},
		"short-lived, refreshing":   {life: 200, at: 140 * time.Second, requests: 2},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEndpoint(t)
			e.set(func(w http.ResponseWriter, _ url.Values, n int) { token(w, fmt.Sprintf("tok-%d", n), c.life) })
			clk := &clock{t: time.Unix(1_900_000_000, 0)}
			cl := client(e, clk)
			ctx := context.Background()
			first, err := cl.Token(ctx, secretCred, scope)
			if err != nil || !first.Expires.Equal(clk.now().Add(time.Duration(c.life)*time.Second)) {
				t.Fatalf("%+v %v", first, err)
			}
			clk.add(c.at)
			got, err := cl.Token(ctx, secretCred, scope)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: "tok-2", false: "tok-1"}[c.waits]; got.Value != want {
				t.Fatalf("answered %s, want %s", got.Value, want)
			}
			// A background refresh finishes on its own: poll for it.
			for deadline := time.Now().Add(10 * time.Second); e.requests() < c.requests; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d requests, want %d", e.requests(), c.requests)
				}
			}
			if c.fresh && e.requests() != 1 {
				t.Fatalf("%d requests, want the cache alone", e.requests())
			}
			if c.requests == 2 && !c.waits {
				// The refreshed token replaces the old one.
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
					if tok, _ := cl.Token(ctx, secretCred, scope); tok.Value == "tok-2" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the background refresh never replaced the token")
					}
				}
			}
			if e.requests() != c.requests {
				t.Fatalf("%d requests, want %d", e.requests(), c.requests)
			}
		})
	}
}

// Concurrent callers of one credential share a request, and one caller
// giving up fails no other.
func TestSharedRequest(t *testing.T) {
	e := newEndpoint(t)
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	e.mu.Lock()
	e.hold = func() {
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-release
	}
	e.mu.Unlock()
	cl := client(e, &clock{t: time.Now()})
	ownerCtx, cancelOwner := context.WithCancel(context.Background())
	results := make(chan error, 9)
	go func() {
		_, err := cl.Token(ownerCtx, secretCred, scope)
		results <- err
	}()
	<-arrived
	// The request is in flight: a caller that has already given up is
	// told so at once, and the owner's cancellation does not stop it.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cl.Token(gone, secretCred, scope); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled waiter: %v, want context.Canceled", err)
	}
	cancelOwner()
	for range 8 {
		go func() {
			tok, err := cl.Token(context.Background(), secretCred, scope)
			if err == nil && tok.Value != "tok-1" {
				err = fmt.Errorf("token %s", tok.Value)
			}
			results <- err
		}()
	}
	close(release)
	for range 9 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	// Whether a caller joined the request or came after it, it was
	// answered by that one request.
	if n := e.requests(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

// However many callers find a token due for refresh, one background
// request replaces it, and each of them is answered from the cache
// meanwhile.
func TestOneBackgroundRefresh(t *testing.T) {
	e := newEndpoint(t)
	clk := &clock{t: time.Unix(1_900_000_000, 0)}
	cl := client(e, clk)
	ctx := context.Background()
	if _, err := cl.Token(ctx, secretCred, scope); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	e.mu.Lock()
	e.hold = func() { <-release }
	e.mu.Unlock()
	clk.add(50 * time.Minute)
	for i := range 10 {
		if tok, err := cl.Token(ctx, secretCred, scope); err != nil || tok.Value != "tok-1" {
			t.Fatalf("call %d during the refresh: %q %v, want the cached tok-1", i, tok.Value, err)
		}
	}
	close(release)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if tok, _ := cl.Token(ctx, secretCred, scope); tok.Value == "tok-2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background refresh never replaced the token")
		}
	}
	if n := e.requests(); n != 2 {
		t.Fatalf("%d requests, want the first and one refresh", n)
	}
}

// The authority's answers, as *Error.
func TestErrors(t *testing.T) {
	for name, c := range map[string]struct {
		answer func(w http.ResponseWriter)
		want   authclient.Error
		text   string
	}{
		"refused": {answer: func(w http.ResponseWriter) {
			w.WriteHeader(401)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"})
		}, want: authclient.Error{Status: 401, Code: "invalid_client", Description: "AADSTS7000215: bad secret"}, text: "token request refused (401 invalid_client): AADSTS7000215: bad secret"},
		"throttled": {answer: func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(429)
			json.NewEncoder(w).Encode(map[string]string{"error": "temporarily_unavailable"})
		}, want: authclient.Error{Status: 429, Code: "temporarily_unavailable", Description: "Too Many Requests", RetryAfter: 5 * time.Second}},
		"huge Retry-After": {answer: func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "99999999999")
			w.WriteHeader(503)
		}, want: authclient.Error{Status: 503, Description: "Service Unavailable", RetryAfter: 24 * time.Hour}},
		"Retry-After as a date": {answer: func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT")
			w.WriteHeader(503)
		}, want: authclient.Error{Status: 503, Description: "Service Unavailable"}},
		"a proxy's page": {answer: func(w http.ResponseWriter) {
			http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
		}, want: authclient.Error{Status: 502, Description: "Bad Gateway"}},
		"success without a token": {answer: func(w http.ResponseWriter) {
			json.NewEncoder(w).Encode(map[string]string{"token_type": "Bearer"})
		}, want: authclient.Error{Status: 200, Description: "OK"}},
		"no expires_in": {answer: func(w http.ResponseWriter) {
			json.NewEncoder(w).Encode(map[string]string{"access_token": "t"})
		}, want: authclient.Error{Status: 200, Code: "bad_response", Description: "the token response has no valid expires_in"}},
		"negative expires_in": {answer: func(w http.ResponseWriter) { token(w, "t", -5) },
			want: authclient.Error{Status: 200, Code: "bad_response", Description: "the token response has no valid expires_in"}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEndpoint(t)
			e.set(func(w http.ResponseWriter, _ url.Values, _ int) { c.answer(w) })
			_, err := client(e, &clock{t: time.Now()}).Token(context.Background(), secretCred, scope)
			var ae *authclient.Error
			if !errors.As(err, &ae) {
				t.Fatalf("%v (%T), want *authclient.Error", err, err)
			}
			if *ae != c.want {
				t.Errorf("%+v, want %+v", *ae, c.want)
			}
			if c.text != "" && err.Error() != c.text {
				t.Errorf("%q, want %q", err.Error(), c.text)
			}
			if strings.Contains(err.Error(), secretCred.Secret) {
				t.Error("the error holds the secret")
			}
		})
	}
	t.Run("failures are not cached", func(t *testing.T) {
		e := newEndpoint(t)
		e.set(func(w http.ResponseWriter, _ url.Values, n int) {
			if n == 1 {
				w.WriteHeader(500)
				return
			}
			token(w, "tok", "3600") // expires_in as a string, as some authorities send it
		})
		cl := client(e, &clock{t: time.Now()})
		if _, err := cl.Token(context.Background(), secretCred, scope); err == nil {
			t.Fatal("the 500 was not an error")
		}
		if tok, err := cl.Token(context.Background(), secretCred, scope); err != nil || tok.Value != "tok" {
			t.Fatalf("%+v %v", tok, err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		e := newEndpoint(t)
		e.srv.Close()
		_, err := client(e, &clock{t: time.Now()}).Token(context.Background(), secretCred, scope)
		var ae *authclient.Error
		if !errors.As(err, &ae) || ae.Status != 0 || !errors.Is(err, syscall.ECONNREFUSED) || !strings.HasPrefix(err.Error(), "authority unreachable: ") {
			t.Fatalf("%v, want an unreachable *Error wrapping the dial error", err)
		}
	})
}

func TestReadClaims(t *testing.T) {
	payload := func(s string) string { return "h." + base64.RawURLEncoding.EncodeToString([]byte(s)) + ".s" }
	for name, c := range map[string]struct {
		raw  string
		want authclient.Claims
	}{
		"claims": {raw: payload(`{"sub":"s","oid":"o","appid":"a","tid":"t","xms_mirid":"/r","nbf":1,"exp":2}`),
			want: authclient.Claims{Subject: "s", ObjectID: "o", AppID: "a", TenantID: "t", ResourceID: "/r", NotBefore: 1, Expiry: 2}},
		"not a JWT":      {raw: "opaque-token"},
		"four parts":     {raw: payload(`{"oid":"o"}`) + ".x"},
		"not base64url":  {raw: "h.!!!.s"},
		"not JSON":       {raw: payload("oid=o")},
		"unknown claims": {raw: payload(`{"oid":"o","roles":["x"]}`), want: authclient.Claims{ObjectID: "o"}},
	} {
		if got := authclient.ReadClaims(c.raw); got != c.want {
			t.Errorf("%s: %+v, want %+v", name, got, c.want)
		}
	}
}
