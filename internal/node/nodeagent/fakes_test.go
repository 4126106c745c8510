package nodeagent_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/testing/syncbuf"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// The fixed world of these tests: one tenant, the node pool's agent
// credential, and the managed identities the authority knows.
const (
	tenant      = "tenant-1"
	agentClient = "agent-client"
	agentSecret = "agent-secret-value"
	node        = "node-1"
	nodeAddr    = "10.0.0.1"
	spClient    = "sp-client"
	spSecret    = "sp-secret-value"
	certClient  = "cert-client"

	vault = "https://vault.example"
	// Resources the fake authority answers with a failure.
	resThrottled = "https://throttled.example"
	resBroken    = "https://broken.example"
	resInvalid   = "https://invalid.example"
	resGarbled   = "https://garbled.example"
	resProxied   = "https://proxied.example" // a proxy's page, no OAuth body
)

func resID(name string) string {
	return "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// managedIdentity is one the authority knows; operable says whether the
// agent credential holds Managed Identity Operator on it.
type managedIdentity struct {
	clientID, objectID, resourceID string
	operable                       bool
}

var identities = []managedIdentity{
	{"sys-client", "sys-oid", resID("sys"), true},
	{"vm-client", "vm-oid", resID("vm"), true},
	{"bound-client", "bound-oid", resID("bound"), true},
	{"second-client", "second-oid", resID("second"), true},
	{"stranger-client", "stranger-oid", resID("stranger"), false},
}

// authority is a token endpoint in the shape of Coffer's (and Entra ID's):
// the agent credential acting for a managed identity, a service principal
// with a secret, and one with a certificate-signed assertion. A real
// authority needs a whole server and its storage; this one keeps to the
// wire protocol the agent speaks.
type authority struct {
	srv  *httptest.Server
	cert *x509.Certificate // certClient's certificate
	now  func() time.Time  // the agent's clock, which dates assertions

	mu    sync.Mutex
	forms []map[string]string
	hold  func() // if set, called before each request is answered
}

func newAuthority(t testing.TB, cert *x509.Certificate) *authority {
	a := &authority{cert: cert, now: time.Now}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

// requests returns the forms the authority received, one map per request.
func (a *authority) requests() []map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.forms)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

func (a *authority) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	hold := a.hold
	a.mu.Unlock()
	if hold != nil {
		hold()
	}
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost || r.URL.Path != "/"+tenant+"/oauth2/v2.0/token" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "not a token request")
		return
	}
	form := map[string]string{}
	for k := range r.PostForm {
		form[k] = r.PostForm.Get(k)
	}
	a.mu.Lock()
	a.forms = append(a.forms, form)
	a.mu.Unlock()
	switch strings.TrimSuffix(form["scope"], "/.default") {
	case resThrottled:
		w.Header().Set("Retry-After", "7")
		oauthError(w, http.StatusTooManyRequests, "temporarily_unavailable", "AADSTS50196: too many requests")
		return
	case resBroken:
		oauthError(w, http.StatusInternalServerError, "server_error", "AADSTS90000: the authority failed")
		return
	case resInvalid:
		oauthError(w, http.StatusBadRequest, "invalid_resource", "AADSTS500011: no such resource")
		return
	case resProxied:
		http.Error(w, "<html>not here</html>", http.StatusNotFound)
		return
	case resGarbled:
		json.NewEncoder(w).Encode(map[string]string{"token_type": "Bearer"})
		return
	}
	claims := map[string]any{"tid": tenant, "exp": time.Now().Add(time.Hour).Unix()}
	switch form["client_id"] {
	case agentClient:
		if form["client_secret"] != agentSecret {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "AADSTS7000215: invalid client secret")
			return
		}
		i := slices.IndexFunc(identities, func(m managedIdentity) bool {
			return (form["mi_client_id"] != "" && strings.EqualFold(form["mi_client_id"], m.clientID)) ||
				(form["mi_object_id"] != "" && strings.EqualFold(form["mi_object_id"], m.objectID)) ||
				(form["mi_res_id"] != "" && strings.EqualFold(form["mi_res_id"], m.resourceID))
		})
		switch {
		case i < 0:
			oauthError(w, http.StatusBadRequest, "invalid_request", "AADSTS: no such managed identity")
			return
		case !identities[i].operable:
			oauthError(w, http.StatusForbidden, "unauthorized_client", "AADSTS: the client lacks Managed Identity Operator on the identity")
			return
		}
		m := identities[i]
		claims["appid"], claims["oid"], claims["xms_mirid"], claims["sub"] = m.clientID, m.objectID, m.resourceID, m.objectID
	case spClient:
		if form["client_secret"] != spSecret {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "AADSTS7000215: invalid client secret")
			return
		}
		claims["appid"], claims["oid"] = spClient, "sp-oid"
	case certClient:
		if err := a.checkAssertion(form["client_assertion"], "http://"+r.Host+r.URL.Path); err != nil {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "AADSTS700027: "+err.Error())
			return
		}
		claims["appid"], claims["oid"] = certClient, "cert-oid"
	default:
		oauthError(w, http.StatusUnauthorized, "invalid_client", "AADSTS700016: unknown client")
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"access_token": unsignedJWT(claims), "expires_in": 3600, "token_type": "Bearer"})
}

// checkAssertion verifies a certificate-signed client assertion as Entra
// ID does: x5t#S256 names the certificate, its key signed it, and it is
// addressed to the token endpoint.
func (a *authority) checkAssertion(raw, audience string) error {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(a.cert.Raw)
	if len(tok.Headers) != 1 || tok.Headers[0].ExtraHeaders["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
		return errors.New("x5t#S256 does not name the registered certificate")
	}
	var c jwt.Claims
	if err := tok.Claims(a.cert.PublicKey, &c); err != nil {
		return err
	}
	return c.ValidateWithLeeway(jwt.Expected{Issuer: certClient, Subject: certClient, AnyAudience: jwt.Audience{audience}, Time: a.now()}, time.Minute)
}

// unsignedJWT is a token the agent reads claims from; it never verifies
// them (the authority is reached over TLS).
func unsignedJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(b) + ".sig"
}

// cluster stands in for the watch caches and the apiserver, which a unit
// test cannot run: pods of several nodes, the pod-identity objects, the
// Secrets and the TokenReview answers, each settable by a test.
type cluster struct {
	mu       sync.Mutex
	synced   bool
	pods     []*corev1.Pod
	snap     podidentity.Snapshot
	secrets  map[string]*corev1.Secret // by namespace/name
	reviews  map[string]review         // by token
	reviewed int                       // TokenReview calls

	// Errors the next calls return, to play an apiserver or cache failure.
	snapErr, podErr, ipErr, secretErr, reviewErr error
}

// review is a TokenReview answer, given only for the audiences it names.
type review struct {
	rv        nodeagent.Review
	audiences []string
}

func (c *cluster) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

func (c *cluster) Pod(namespace, name string) (*corev1.Pod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.podErr != nil {
		return nil, c.podErr
	}
	for _, p := range c.pods {
		if p.Namespace == namespace && p.Name == name && p.Spec.NodeName == node {
			return p, nil
		}
	}
	return nil, nodeagent.ErrNoPod
}

func (c *cluster) PodsByIP(ip string) ([]*corev1.Pod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ipErr != nil {
		return nil, c.ipErr
	}
	var out []*corev1.Pod
	for _, p := range c.pods {
		if p.Spec.NodeName == node && p.Status.PodIP == ip && !p.Spec.HostNetwork {
			out = append(out, p)
		}
	}
	return out, nil
}

func (c *cluster) Snapshot() (podidentity.Snapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap, c.snapErr
}

func (c *cluster) Secret(_ context.Context, namespace, name string) (*corev1.Secret, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.secretErr != nil {
		return nil, c.secretErr
	}
	if s, ok := c.secrets[namespace+"/"+name]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("the test has no Secret %s/%s", namespace, name)
}

func (c *cluster) Review(_ context.Context, token string, audiences []string) (nodeagent.Review, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reviewed++
	if c.reviewErr != nil {
		return nodeagent.Review{}, c.reviewErr
	}
	r, ok := c.reviews[token]
	if !ok {
		return nodeagent.Review{Error: "invalid bearer token"}, nil
	}
	if !slices.Equal(r.audiences, audiences) {
		return nodeagent.Review{Error: "token audiences are invalid for the target audiences"}, nil
	}
	return r.rv, nil
}

func (c *cluster) reviewCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reviewed
}

func (c *cluster) set(f func(c *cluster)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

func pod(ns, name, nodeName, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: nodeName, ServiceAccountName: "default"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func userAssigned(ns, name, clientID, resourceID string) podidentity.AzureIdentity {
	return podidentity.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: podidentity.AzureIdentitySpec{Type: podidentity.UserAssignedMSI, ClientID: clientID, ResourceID: resourceID}}
}

func binding(ns, name, identity, selector string, weight int) podidentity.AzureIdentityBinding {
	return podidentity.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: podidentity.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector, Weight: weight}}
}

// podToken is the service-account token of pod p as the fake apiserver
// knows it: shaped as a JWT, as the App Service endpoint tells tokens
// from its shared header by their dots.
func podToken(p string) string { return "sa." + p + ".sig" }

// newCluster returns the cluster most cases share:
//
//   - team-a/web, labelled web, bound to bound-client (weight 10) and
//     second-client (by resource id, weight 1);
//   - team-a/nolabel, with no binding label; team-a/unbound, whose label
//     no binding selects;
//   - team-a/host, matching an AzurePodIdentityException, and
//     team-b/host, matching none;
//   - team-a/dup1 and team-a/dup2, sharing an address;
//   - team-a/far, on another node.
//
// The tokens: podToken(name) for each of those pods, with the
// apiserver's own audience, podToken("web-csi") for web with the
// provider's, and podToken("sa-only"), not bound to a pod.
func newCluster() *cluster {
	web := pod("team-a", "web", node, "10.1.0.5", map[string]string{podidentity.BindingLabel: "web"})
	pods := []*corev1.Pod{
		web,
		pod("team-a", "nolabel", node, "10.1.0.6", nil),
		pod("team-a", "unbound", node, "10.1.0.7", map[string]string{podidentity.BindingLabel: "nothing"}),
		pod("team-a", "host", node, "10.1.0.8", map[string]string{"app": "host"}),
		pod("team-b", "host", node, "10.1.0.10", map[string]string{"app": "host"}),
		pod("team-a", "dup1", node, "10.1.0.9", nil),
		pod("team-a", "dup2", node, "10.1.0.9", nil),
		pod("team-a", "far", "node-2", "10.2.0.5", map[string]string{podidentity.BindingLabel: "web"}),
	}
	c := &cluster{synced: true, pods: pods, secrets: map[string]*corev1.Secret{}, reviews: map[string]review{}}
	for _, p := range pods {
		c.reviews[podToken(p.Namespace+"-"+p.Name)] = review{rv: nodeagent.Review{Authenticated: true, Namespace: p.Namespace, ServiceAccount: "default",
			PodName: p.Name, PodUID: string(p.UID), NodeName: p.Spec.NodeName}}
	}
	c.reviews[podToken("web-csi")] = review{rv: c.reviews[podToken("team-a-web")].rv, audiences: []string{"api://AzureADTokenExchange"}}
	c.reviews[podToken("sa-only")] = review{rv: nodeagent.Review{Authenticated: true, Namespace: "team-a", ServiceAccount: "default"}}
	c.reviews[podToken("stale-uid")] = review{rv: nodeagent.Review{Authenticated: true, Namespace: "team-a", ServiceAccount: "default", PodName: "web", PodUID: "uid-earlier-web", NodeName: node}}
	c.reviews[podToken("ghost")] = review{rv: nodeagent.Review{Authenticated: true, Namespace: "team-a", ServiceAccount: "default", PodName: "ghost", PodUID: "uid-ghost"}}
	c.snap = podidentity.Snapshot{
		Identities: []podidentity.AzureIdentity{
			userAssigned("team-a", "bound", "bound-client", ""),
			userAssigned("team-a", "second", "", resID("second")),
		},
		Bindings: []podidentity.AzureIdentityBinding{
			binding("team-a", "bound-binding", "bound", "web", 10),
			binding("team-a", "second-binding", "second", "web", 1),
		},
		Exceptions: []podidentity.AzurePodIdentityException{{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "host"},
			Spec: podidentity.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "host"}}}},
	}
	return c
}

// clock is a settable time for the review cache and the token cache.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncbuf.Buffer is a log sink a test reads while handlers write to it.

// world is an agent over the fake cluster and the fake authority.
type world struct {
	cluster *cluster
	auth    *authority
	clock   *clock
	log     *syncbuf.Buffer
	agent   *nodeagent.Agent
}

// newWorld starts an agent for node-1 with the system identity sys-client
// and the attached identity vm (by resource id), node callers allowed from
// nodeAddr; tweak changes the config first.
func newWorld(t testing.TB, c *cluster, tweak func(*nodeagent.Config)) *world {
	t.Helper()
	w := &world{cluster: c, clock: &clock{t: time.Unix(1_900_000_000, 0)}, log: &syncbuf.Buffer{}}
	w.auth = newAuthority(t, nil)
	w.auth.now = w.clock.Now
	cfg := nodeagent.Config{
		NodeName: node, Tenant: tenant, AgentClientID: agentClient, AgentSecret: agentSecret,
		SystemIdentity: "sys-client", VMIdentities: []string{resID("vm")}, NodeCallers: true,
		Cluster: c, Auth: &authclient.Client{HTTP: w.auth.srv.Client(), Authority: w.auth.srv.URL},
		LocalAddr: func(ip string) bool { return ip == nodeAddr },
		Log:       slog.New(slog.NewJSONHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:       w.clock.Now,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := nodeagent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.agent = a
	return w
}

// call is one request to a handler.
type call struct {
	method string // GET by default
	target string // path and query
	remote string // the caller's address; the node's by default
	header map[string]string
}

// answer is what a handler answered: IMDS bodies are JSON objects of
// strings, errors included.
type answer struct {
	status int
	header http.Header
	body   map[string]string
	raw    string
}

func serve(t testing.TB, h http.Handler, c call) answer {
	t.Helper()
	r := httptest.NewRequest(cmpOr(c.method, http.MethodGet), c.target, nil)
	r.RemoteAddr = cmpOr(c.remote, nodeAddr) + ":40000"
	for k, v := range c.header {
		r.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	a := answer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if err := json.Unmarshal(rec.Body.Bytes(), &a.body); err != nil && strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("%s: a JSON body that is not an object of strings: %v\n%s", c.target, err, a.raw)
	}
	return a
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// retryAfter returns the Retry-After header in seconds, or 0.
func (a answer) retryAfter() int {
	n, _ := strconv.Atoi(a.header.Get("Retry-After"))
	return n
}
