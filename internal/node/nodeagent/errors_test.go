package nodeagent_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// internalDetail is what an internal error says: an address and a file
// inside the cluster, which must reach the agent's log and never a caller.
const internalDetail = "dial tcp 10.96.0.1:443: open /etc/kubernetes/pki/internal.key"

// No internal error's text reaches a caller: each class has its fixed
// message (and keeps its status and IMDS shape), and the detail is logged.
func TestInternalErrorsStayInTheLog(t *testing.T) {
	detail := errors.New(internalDetail)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for name, c := range map[string]struct {
		cfg     func(*nodeagent.Config)
		cluster func(*cluster)
		call    call
		want    want
		// leaks are texts, other than internalDetail, that must not be
		// sent; logged, that must be logged.
		leaks  []string
		logged string
	}{
		"snapshot": {cluster: func(c *cluster) { c.snapErr = detail }, call: call{target: imds(), header: bearerOf(podToken("team-a-web"))},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not read its pod and binding caches", retryAfter: 2}},
		"pod cache": {cluster: func(c *cluster) { c.podErr = detail }, call: call{target: imds(), header: bearerOf(podToken("team-a-web"))},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not read its pod and binding caches", retryAfter: 2}},
		"address index": {cluster: func(c *cluster) { c.ipErr = detail }, call: call{target: imds(), header: metadata, remote: "10.1.0.5"},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not read its pod and binding caches", retryAfter: 2}},
		"token review": {cluster: func(c *cluster) { c.reviewErr = detail }, call: call{target: imds(), header: bearerOf(podToken("team-a-web"))},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not review the service-account token", retryAfter: 2}},
		"review refusal": {
			cluster: func(c *cluster) {
				c.reviews["sa.webhook.sig"] = review{rv: nodeagent.Review{Error: "[Post \"https://10.96.0.1:443/authenticate\": " + internalDetail + "]"}}
			},
			call: call{target: imds(), header: bearerOf("sa.webhook.sig")},
			want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver (audiences the apiserver's)"},
		},
		"provider's review": {cluster: func(c *cluster) { c.reviewErr = detail },
			call: call{target: authclient.NodeAgentTokenPath + "?mode=pod&namespace=team-a&name=web&uid=uid-web&resource=x", header: map[string]string{authclient.PodTokenHeader: podToken("web-csi")}},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not review", retryAfter: 2}},
		"service principal Secret": {
			cluster: func(c *cluster) {
				spIdentity(c, podidentity.ServicePrincipal)
				c.secretErr = detail
			},
			call: call{target: imds(), header: bearerOf(podToken("team-a-web"))},
			want: want{status: 503, code: "temporarily_unavailable", desc: "could not read Secret team-a/sp of AzureIdentity sp", retryAfter: 2},
		},
		"PKCS#12 parser": {
			cluster: func(c *cluster) {
				spIdentity(c, podidentity.ServicePrincipalCertificate)
				c.secrets["team-a/sp"] = &corev1.Secret{Data: map[string][]byte{"certificate": []byte("not a PKCS#12 file"), "password": []byte("pw")}}
			},
			call:   call{target: imds(), header: bearerOf(podToken("team-a-web"))},
			want:   want{status: 400, code: "invalid_request", desc: "Secret team-a/sp of AzureIdentity sp: its certificate is not a PKCS#12 file that opens with its password"},
			leaks:  []string{"pkcs12:"},
			logged: "pkcs12:",
		},
		"authority unreachable": {
			cfg:    func(c *nodeagent.Config) { c.Auth.Authority = closed.URL },
			call:   call{target: imds(), header: metadata},
			want:   want{status: 503, code: "temporarily_unavailable", desc: "the authority is unreachable", retryAfter: 2},
			leaks:  []string{strings.TrimPrefix(closed.URL, "http://"), "connection refused", "dial"},
			logged: strings.TrimPrefix(closed.URL, "http://"),
		},
		"authority failing": {
			call:   call{target: imds("resource", resBroken), header: metadata},
			want:   want{status: 503, code: "temporarily_unavailable", desc: "the authority failed (HTTP 500)", retryAfter: 2},
			leaks:  []string{"AADSTS90000"},
			logged: "AADSTS90000",
		},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			if c.cluster != nil {
				c.cluster(cl)
			}
			w := newWorld(t, cl, c.cfg)
			h := w.agent.Handler()
			if strings.HasPrefix(c.call.target, authclient.NodeAgentTokenPath) {
				h = w.agent.LocalHandler()
			}
			// Twice: a refusal answered from the review cache must say
			// no more than the first.
			for range 2 {
				got := serve(t, h, c.call)
				check(t, got, c.want)
				for _, leak := range append(c.leaks, internalDetail, "10.96.0.1", "/etc/kubernetes") {
					if strings.Contains(got.raw, leak) {
						t.Fatalf("the body holds internal text %q: %s", leak, got.raw)
					}
				}
			}
			log := w.log.String()
			if logged := cmpOr(c.logged, internalDetail); !strings.Contains(log, logged) {
				t.Errorf("the log lacks the detail %q:\n%s", logged, log)
			}
			if strings.Contains(log, agentSecret) || strings.Contains(log, spSecret) {
				t.Error("the log holds a credential")
			}
		})
	}
}

// spIdentity binds team-a/web to a service principal identity "sp" of
// typ, whose credential is in Secret team-a/sp.
func spIdentity(c *cluster, typ podidentity.IdentityType) {
	c.snap.Identities = []podidentity.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "sp"},
		Spec: podidentity.AzureIdentitySpec{Type: typ, ClientID: spClient, TenantID: tenant, ClientPassword: corev1.SecretReference{Name: "sp"}}}}
	c.snap.Bindings = []podidentity.AzureIdentityBinding{binding("team-a", "sp", "sp", "web", 0)}
}

// A request that gives up while its token is being fetched gets the
// timeout's fixed message, not the context's error.
func TestCancelledRequest(t *testing.T) {
	w := newWorld(t, newCluster(), nil)
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	w.auth.mu.Lock()
	w.auth.hold = func() {
		arrived <- struct{}{}
		<-release
	}
	w.auth.mu.Unlock()
	first := make(chan int, 1)
	go func() {
		r := httptest.NewRequest(http.MethodGet, imds(), nil)
		r.RemoteAddr = nodeAddr + ":40000"
		r.Header.Set("Metadata", "true")
		rec := httptest.NewRecorder()
		w.agent.Handler().ServeHTTP(rec, r)
		first <- rec.Code
	}()
	<-arrived // the first request's token fetch is in flight
	// The second shares that fetch, and its caller is already gone.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, imds(), nil)
	r.RemoteAddr = nodeAddr + ":40000"
	r.Header.Set("Metadata", "true")
	rec := httptest.NewRecorder()
	w.agent.Handler().ServeHTTP(rec, r)
	close(release)
	got := answer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if got.status != 503 || !strings.Contains(got.raw, "the request timed out") || strings.Contains(got.raw, "context") || got.retryAfter() != 2 {
		t.Fatalf("%d %s (Retry-After %q), want 503 with the timeout message", got.status, got.raw, got.header.Get("Retry-After"))
	}
	if code := <-first; code != 200 {
		t.Fatalf("the first request: %d, want 200", code)
	}
	if !strings.Contains(w.log.String(), context.Canceled.Error()) {
		t.Error("the log lacks the cancellation")
	}
}
