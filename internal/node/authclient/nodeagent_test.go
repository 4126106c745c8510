package authclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
)

// agent serves the node agent's local protocol on a unix socket in a
// temporary directory, answering with answer and recording each request.
func agent(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) (socket string, seen chan *http.Request) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	seen = make(chan *http.Request, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r
		answer(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, seen
}

func imdsBody(w http.ResponseWriter, tok string, expiresOn string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "expires_on": expiresOn, "token_type": "Bearer"})
}

// The provider's requests: pod or node identity, the pod's names, and its
// token in a header, never in the query.
func TestNodeAgentRequests(t *testing.T) {
	for name, c := range map[string]struct {
		req    authclient.PodRequest
		query  url.Values
		header string
	}{
		"pod": {req: authclient.PodRequest{Namespace: "ns", Name: "web", UID: "u1", Resource: "https://vault.example"},
			query: url.Values{"mode": {"pod"}, "namespace": {"ns"}, "name": {"web"}, "uid": {"u1"}, "resource": {"https://vault.example"}}},
		"pod with its token": {req: authclient.PodRequest{Namespace: "ns", Name: "web", UID: "u1", Resource: "r", PodToken: "sa.tok.sig"},
			query: url.Values{"mode": {"pod"}, "namespace": {"ns"}, "name": {"web"}, "uid": {"u1"}, "resource": {"r"}}, header: "sa.tok.sig"},
		"vm, system-assigned": {req: authclient.PodRequest{VM: true, Namespace: "ns", Name: "web", UID: "u1", Resource: "r"},
			query: url.Values{"mode": {"vm"}, "namespace": {"ns"}, "name": {"web"}, "uid": {"u1"}, "resource": {"r"}}},
		"vm, user-assigned": {req: authclient.PodRequest{VM: true, Namespace: "ns", Name: "web", UID: "u1", Resource: "r", ClientID: "mi"},
			query: url.Values{"mode": {"vm"}, "namespace": {"ns"}, "name": {"web"}, "uid": {"u1"}, "resource": {"r"}, "client_id": {"mi"}}},
	} {
		t.Run(name, func(t *testing.T) {
			socket, seen := agent(t, func(w http.ResponseWriter, _ *http.Request) { imdsBody(w, "h.e30.s", "1900000000") })
			tok, err := authclient.NewNodeAgent("unix://"+socket).Token(context.Background(), c.req)
			if err != nil || tok.Value != "h.e30.s" || !tok.Expires.Equal(time.Unix(1_900_000_000, 0)) {
				t.Fatalf("%+v %v", tok, err)
			}
			r := <-seen
			if r.Method != http.MethodGet || r.URL.Path != authclient.NodeAgentTokenPath {
				t.Errorf("%s %s", r.Method, r.URL.Path)
			}
			if got := r.URL.Query(); got.Encode() != c.query.Encode() {
				t.Errorf("query %s, want %s", got.Encode(), c.query.Encode())
			}
			if got := r.Header.Get(authclient.PodTokenHeader); got != c.header {
				t.Errorf("%s = %q, want %q", authclient.PodTokenHeader, got, c.header)
			}
		})
	}
}

// The agent's refusals keep its status, code, explanation and
// Retry-After, for the provider to classify.
func TestNodeAgentErrors(t *testing.T) {
	refuse := func(status int, retry string) func(w http.ResponseWriter, _ *http.Request) {
		return func(w http.ResponseWriter, _ *http.Request) {
			if retry != "" {
				w.Header().Set("Retry-After", retry)
			}
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(map[string]string{"error": "temporarily_unavailable", "error_description": "not in the cache yet"})
		}
	}
	for name, c := range map[string]struct {
		answer func(w http.ResponseWriter, r *http.Request)
		want   authclient.Error
	}{
		"pod not seen yet": {answer: refuse(404, "2"), want: authclient.Error{Status: 404, Code: "temporarily_unavailable", Description: "not in the cache yet", RetryAfter: 2 * time.Second}},
		"refused": {answer: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(403)
			json.NewEncoder(w).Encode(map[string]string{"error": "unauthorized_client", "error_description": "belongs to another pod"})
		}, want: authclient.Error{Status: 403, Code: "unauthorized_client", Description: "belongs to another pod"}},
		"not a JSON answer":   {answer: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "oops", 500) }, want: authclient.Error{Status: 500, Description: "Internal Server Error"}},
		"no token":            {answer: func(w http.ResponseWriter, _ *http.Request) { imdsBody(w, "", "1") }, want: authclient.Error{Status: 200, Description: "OK"}},
		"no valid expires_on": {answer: func(w http.ResponseWriter, _ *http.Request) { imdsBody(w, "t", "soon") }, want: authclient.Error{Status: 200, Code: "bad_response", Description: "the node agent's answer has no valid expires_on"}},
	} {
		t.Run(name, func(t *testing.T) {
			socket, _ := agent(t, c.answer)
			_, err := authclient.NewNodeAgent(socket).Token(context.Background(), authclient.PodRequest{Namespace: "ns", Name: "n", UID: "u", Resource: "r"})
			var ae *authclient.Error
			if !errors.As(err, &ae) || *ae != c.want {
				t.Fatalf("%#v, want %+v", err, c.want)
			}
		})
	}
	t.Run("agent not running", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "none.sock")
		_, err := authclient.NewNodeAgent(socket).Token(context.Background(), authclient.PodRequest{Namespace: "ns", Name: "n", UID: "u", Resource: "r"})
		var ae *authclient.Error
		if !errors.As(err, &ae) || ae.Status != 0 || ae.Err == nil || !strings.Contains(ae.Description, socket) {
			t.Fatalf("%v, want an unreachable *Error naming the socket", err)
		}
	})
}
