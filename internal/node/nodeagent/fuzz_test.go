package nodeagent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// The node's addresses, its pods and their service-account tokens.
const (
	nodeIP    = "10.240.0.4"
	webIP     = "10.244.1.7" // pod default/web, bound to identity "bound"
	otherIP   = "10.244.1.8" // pod default/other, no binding
	webToken  = "eyJhbGciOiJSUzI1NiIsImtpZCI6IndlYiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.d2Vi"
	farToken  = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZhciJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpmYXIifQ.ZmFy"
	idHeader  = "fuzz-identity-header-9f8e7d6c5b4a"
	webUID    = "0b8f7e52-3c6f-4c59-9d3a-8f6f1d1c2b3a"
	otherUID  = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
	bindingOf = "web-binding"
)

// fuzzCluster is the node as the agent sees it, held in memory: the fuzz
// target parses thousands of requests a second, and a kube-apiserver's
// TokenReview for each new token would leave it a few. The Cluster
// interface is the agent's own seam for that; test/nodeagent runs the
// agent against a real apiserver.
type fuzzCluster struct {
	pods  []*corev1.Pod
	snap  podidentity.Snapshot
	token map[string]nodeagent.Review
}

func (c *fuzzCluster) Synced() bool { return true }
func (c *fuzzCluster) Pod(ns, name string) (*corev1.Pod, error) {
	for _, p := range c.pods {
		if p.Namespace == ns && p.Name == name {
			return p, nil
		}
	}
	return nil, nodeagent.ErrNoPod
}
func (c *fuzzCluster) PodsByIP(ip string) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	for _, p := range c.pods {
		if p.Status.PodIP == ip {
			out = append(out, p)
		}
	}
	return out, nil
}
func (c *fuzzCluster) Snapshot() (podidentity.Snapshot, error) { return c.snap, nil }
func (c *fuzzCluster) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	return nil, apierrors.NewNotFound(corev1.Resource("secrets"), name)
}
func (c *fuzzCluster) Review(_ context.Context, token string, _ []string) (nodeagent.Review, error) {
	if rv, ok := c.token[token]; ok {
		return rv, nil
	}
	return nodeagent.Review{Error: "invalid bearer token"}, nil
}

func fuzzPod(name, uid, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid), Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "default"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
}

// The ids of the test server's node pool and identities are random;
// seeds name them by these placeholders.
const (
	phResource = "{resource}"
	phBound    = "{bound}"
	phAttached = "{attached}"
	phStranger = "{stranger}"
	phSystem   = "{system}"
	phHeader   = "{identity_header}"
)

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzTokenRequest", func(*testing.T) []fuzzseed.Seed {
		req := func(target string, headers ...string) string {
			s := "GET " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\n"
			for _, h := range headers {
				s += h + "\r\n"
			}
			return s + "\r\n"
		}
		const imds = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
		const web, other, node, stranger = byte(0), byte(1), byte(2), byte(3)
		return []fuzzseed.Seed{
			// The seed articles' curl, and what azidentity's
			// ManagedIdentityCredential sends on IMDS and App Service.
			fuzzseed.S("article-curl-source-ip", req(imds+phResource, "Metadata: true"), web|4),
			fuzzseed.S("azidentity-imds-token", req(imds+phResource+"&client_id="+phBound, "Metadata: true", "Authorization: Bearer "+webToken, "User-Agent: azsdk-go-azidentity/v1.8.0"), web),
			fuzzseed.S("azidentity-imds-scope", req(imds+phResource+"%2F.default", "Metadata: true", "Authorization: Bearer "+webToken), web),
			fuzzseed.S("imds-no-token-token-mode", req(imds+phResource, "Metadata: true"), web),
			fuzzseed.S("imds-node-system", req(imds+phResource, "Metadata: true"), node),
			fuzzseed.S("imds-node-attached", req(imds+phResource+"&client_id="+phAttached, "Metadata: true"), node),
			fuzzseed.S("imds-node-stranger", req(imds+phResource+"&client_id="+phStranger, "Metadata: true"), node),
			fuzzseed.S("imds-pod-stranger", req(imds+phResource+"&client_id="+phStranger, "Metadata: true", "Authorization: Bearer "+webToken), web),
			fuzzseed.S("imds-object-and-client", req(imds+phResource+"&client_id="+phBound+"&object_id="+phBound, "Metadata: true"), node),
			fuzzseed.S("imds-no-metadata", req(imds+phResource, "Authorization: Bearer "+webToken), web),
			fuzzseed.S("imds-forwarded", req(imds+phResource, "Metadata: true", "X-Forwarded-For: 203.0.113.9"), node),
			fuzzseed.S("imds-repeated-resource", req(imds+phResource+"&resource=https://management.azure.com", "Metadata: true"), node),
			fuzzseed.S("imds-other-node-token", req(imds+phResource, "Metadata: true", "Authorization: Bearer "+farToken), other),
			fuzzseed.S("imds-bad-token", req(imds+phResource, "Metadata: true", "Authorization: Bearer not.a.token"), stranger),
			fuzzseed.S("imds-unbound-pod", req(imds+phResource, "Metadata: true"), other|4),
			fuzzseed.S("imds-unknown-address", req(imds+phResource, "Metadata: true"), stranger|4),
			fuzzseed.S("imds-bad-api-version", req("/metadata/identity/oauth2/token?api-version=latest&resource="+phResource, "Metadata: true"), node),
			fuzzseed.S("imds-long-resource", req(imds+strings.Repeat("r", 1100), "Metadata: true"), node),
			fuzzseed.S("imds-post", strings.Replace(req(imds+phResource, "Metadata: true", "Content-Length: 0"), "GET", "POST", 1), node),
			// The NMI bypass (CVE-2022-23551) and its relatives.
			fuzzseed.S("cve-2022-23551-double-slash", req("//metadata/identity/oauth2/token?api-version=2018-02-01&resource="+phResource, "Metadata: true"), web|4),
			fuzzseed.S("dot-dot-encoded", req("/metadata/identity/oauth2/%2e%2e/oauth2/token?api-version=2018-02-01&resource="+phResource, "Metadata: true"), web|4),
			fuzzseed.S("case-variant", req("/METADATA/Identity/OAuth2/Token/?api-version=2018-02-01&resource="+phResource, "Metadata: TRUE"), node),
			fuzzseed.S("encoded-slash", req("/metadata%2Fidentity%2Foauth2%2Ftoken?api-version=2018-02-01&resource="+phResource, "Metadata: true"), node),
			fuzzseed.S("other-metadata", req("/metadata/instance?api-version=2021-02-01", "Metadata: true"), node),
			fuzzseed.S("app-service-header", req("/msi/token?api-version=2019-08-01&resource="+phResource, "X-IDENTITY-HEADER: "+phHeader), node),
			fuzzseed.S("app-service-pod-token", req("/msi/token?api-version=2019-08-01&resource="+phResource+"&client_id="+phBound, "X-IDENTITY-HEADER: "+webToken), stranger),
			fuzzseed.S("app-service-wrong-header", req("/msi/token?api-version=2019-08-01&resource="+phResource, "X-IDENTITY-HEADER: guess"), node),
			fuzzseed.S("app-service-old-version", req("/msi/token?api-version=2017-09-01&resource="+phResource, "X-IDENTITY-HEADER: "+phHeader), node),
			fuzzseed.S("healthz", req("/healthz"), node),
		}
	})
}

// FuzzTokenRequest sends arbitrary HTTP requests (any path, query and
// headers, from a pod's, the node's or a stranger's address) to the node
// agent's IMDS and App Service endpoints, in token and in source-ip mode.
// Every answer is JSON (or /healthz's ok); no answer carries a pod's token
// or the identity header; a token is issued only on the two endpoints'
// exact paths, to a GET without X-Forwarded-For and with unrepeated query
// parameters, with IMDS's Metadata header or App Service's version and
// header; its audience is the resource asked for, and its identity one the
// caller may use: the pod's bound identity, or, for the node, its own.
func FuzzTokenRequest(f *testing.F) {
	env := testserver.Start(f, testserver.Options{})
	n := agenttest.SetupNode(f, env)
	hc, err := httpclient.New(env.Admin.CAFile)
	if err != nil {
		f.Fatal(err)
	}
	auth := &authclient.Client{HTTP: hc, Authority: strings.TrimSuffix(env.Admin.AuthorityHost, "/")}
	resource := env.Endpoints.Resource()
	c := &fuzzCluster{
		pods: []*corev1.Pod{fuzzPod("web", webUID, webIP, map[string]string{podidentity.BindingLabel: bindingOf}), fuzzPod("other", otherUID, otherIP, nil)},
		snap: podidentity.Snapshot{
			Identities: []podidentity.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bound"},
				Spec: podidentity.AzureIdentitySpec{Type: podidentity.UserAssignedMSI, ClientID: n.Bound.ClientID, ResourceID: n.Bound.ID}}},
			Bindings: []podidentity.AzureIdentityBinding{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
				Spec: podidentity.AzureIdentityBindingSpec{AzureIdentity: "bound", Selector: bindingOf}}},
		},
		token: map[string]nodeagent.Review{
			webToken: {Authenticated: true, Namespace: "default", ServiceAccount: "default", PodName: "web", PodUID: webUID, NodeName: "node-1", Expires: time.Now().Add(time.Hour)},
			farToken: {Authenticated: true, Namespace: "default", ServiceAccount: "default", PodName: "far", PodUID: "x", NodeName: "node-2", Expires: time.Now().Add(time.Hour)},
		},
	}
	var agents []*nodeagent.Agent
	for _, lookup := range []nodeagent.Lookup{nodeagent.LookupToken, nodeagent.LookupSourceIP} {
		a, err := nodeagent.New(nodeagent.Config{NodeName: "node-1", Tenant: env.State.TenantID, AgentClientID: n.Pool.AgentClientID, AgentSecret: n.Pool.AgentSecret,
			SystemIdentity: n.Pool.SystemAssigned.ClientID, VMIdentities: []string{n.Attached.ClientID}, Lookup: lookup, NodeCallers: true,
			IdentityHeader: idHeader, Cluster: c, Auth: auth, LocalAddr: func(ip string) bool { return ip == nodeIP }, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			f.Fatal(err)
		}
		agents = append(agents, a)
	}
	fill := strings.NewReplacer(phResource, resource, phBound, n.Bound.ClientID, phAttached, n.Attached.ClientID, phStranger, n.Stranger.ClientID,
		phSystem, n.Pool.SystemAssigned.ClientID, phHeader, idHeader)
	addrs := []string{webIP, otherIP, nodeIP, "192.0.2.44"}
	f.Fuzz(func(t *testing.T, raw string, from byte) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(fill.Replace(raw))))
		if err != nil {
			return
		}
		r.RemoteAddr = addrs[int(from%4)] + ":41234"
		a := agents[int(from>>2)%2]
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, r)
		out, _ := io.ReadAll(w.Result().Body)
		reflected := r.URL.String() + r.Header.Get("X-Forwarded-For")
		for _, s := range []string{webToken, farToken, idHeader} {
			if strings.Contains(string(out), s) && !strings.Contains(reflected, s) {
				t.Fatalf("the answer (%d) carries a credential: %s", w.Code, out)
			}
		}
		clean := strings.ToLower(strings.TrimSuffix(r.URL.Path, "/"))
		if clean == "/healthz" {
			return
		}
		var body map[string]string
		if err := json.Unmarshal(out, &body); err != nil {
			t.Fatalf("%d answer is not JSON: %s", w.Code, out)
		}
		if w.Code != http.StatusOK {
			if body["error"] == "" || body["error_description"] == "" {
				t.Fatalf("%d without error and error_description: %s", w.Code, out)
			}
			if w.Code == http.StatusInternalServerError {
				t.Fatalf("a token request failed inside the agent: %s", out)
			}
			return
		}
		q := r.URL.Query()
		switch {
		case clean != "/metadata/identity/oauth2/token" && clean != "/msi/token":
			t.Fatalf("a token was issued on %q", r.URL.Path)
		case path.Clean(clean) != clean:
			t.Fatalf("a token was issued on the unclean path %q", r.URL.Path)
		case r.Method != http.MethodGet || r.Header.Get("X-Forwarded-For") != "":
			t.Fatalf("a token was issued to %s with X-Forwarded-For %q", r.Method, r.Header.Get("X-Forwarded-For"))
		case clean == "/metadata/identity/oauth2/token" && !strings.EqualFold(r.Header.Get("Metadata"), "true"):
			t.Fatal("an IMDS token without Metadata: true")
		case clean == "/msi/token" && (q.Get("api-version") != nodeagent.AppServiceAPIVersion || r.Header.Get("X-IDENTITY-HEADER") == ""):
			t.Fatal("an App Service token without its version and header")
		}
		for k, vs := range q {
			if len(vs) > 1 {
				t.Fatalf("a token with query parameter %s repeated", k)
			}
		}
		if want := strings.TrimSuffix(strings.TrimSpace(q.Get("resource")), "/.default"); body["resource"] != want {
			t.Fatalf("a token for %q, asked for %q", body["resource"], want)
		}
		cl := authclient.ReadClaims(body["access_token"])
		if cl.TenantID != env.State.TenantID {
			t.Fatalf("a token of tenant %q", cl.TenantID)
		}
		// Who the caller was: a token proves the pod; otherwise its address.
		bearer := strings.TrimSpace(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		hdr := r.Header.Get("X-IDENTITY-HEADER")
		var allowed []string
		switch {
		case clean == "/msi/token" && hdr != idHeader:
			allowed = podIdentities(c, hdr, n.Bound.ClientID)
		case len(r.Header.Get("Authorization")) > 7 && strings.EqualFold(r.Header.Get("Authorization")[:7], "bearer "):
			allowed = podIdentities(c, bearer, n.Bound.ClientID)
		case addrs[int(from%4)] == webIP:
			allowed = []string{n.Bound.ClientID}
		case addrs[int(from%4)] == nodeIP:
			allowed = []string{n.Pool.SystemAssigned.ClientID, n.Attached.ClientID}
		}
		if !slices.ContainsFunc(allowed, func(id string) bool { return strings.EqualFold(id, cl.AppID) }) || strings.EqualFold(cl.AppID, n.Stranger.ClientID) {
			t.Fatalf("%s from %s got a token for %s; it may use %q", r.URL, addrs[int(from%4)], cl.AppID, allowed)
		}
	})
}

// podIdentities is what the pod a token proves may use.
func podIdentities(c *fuzzCluster, token, bound string) []string {
	if rv, ok := c.token[token]; ok && rv.PodName == "web" {
		return []string{bound}
	}
	return nil
}
