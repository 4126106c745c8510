// Package nodeagent tests Coffer's node agent against a real kube-apiserver
// (pods, bindings, TokenReview, bound service-account tokens) and a real
// Coffer server (the authority and the vault). Pods are API objects given
// the status a kubelet would write; no kubelet runs.
package nodeagent

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

func repoFile(t testing.TB, rel string) string { return testpath.Repo(t, rel) }

type world struct {
	env  *testserver.Env
	kube *kubetest.Env
	node agenttest.Node
	kc   client.Client
}

func start(t testing.TB) *world {
	t.Helper()
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/crds")}})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
	node := agenttest.SetupNode(t, env)
	if err := podidentity.AddToScheme(kube.Scheme); err != nil {
		t.Fatal(err)
	}
	kc, err := client.New(kube.Config, client.Options{Scheme: kube.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.SetSecret(context.Background(), "password", azsecrets.SetSecretParameters{Value: to.Ptr("s3cr3t-value")}, nil); err != nil {
		t.Fatal(err)
	}
	return &world{env: env, kube: kube, node: node, kc: kc}
}

// bind creates, in ns, an AzureIdentity for id and a binding with
// selector, from a manifest as AAD Pod Identity users write it (with the
// capitalised field names its readers accepted).
func (w *world) bind(t testing.TB, ns, name, clientID, resourceID, selector string, annotations map[string]string) {
	t.Helper()
	ctx := context.Background()
	u := podidentity.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: podidentity.AzureIdentitySpec{Type: podidentity.UserAssignedMSI, ClientID: clientID, ResourceID: resourceID}}
	if err := w.kc.Create(ctx, &u); err != nil {
		t.Fatal(err)
	}
	b := podidentity.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: name + "-binding", Namespace: ns, Annotations: annotations},
		Spec: podidentity.AzureIdentityBindingSpec{AzureIdentity: name, Selector: selector}}
	if err := w.kc.Create(ctx, &b); err != nil {
		t.Fatal(err)
	}
}

// claims decodes an access token's payload.
func claims(t testing.TB, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	b, err := base64URL(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// readSecret reads secret password of vault demo with an access token.
func (w *world) readSecret(t testing.TB, tok string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", w.env.Endpoints.VaultURL("demo")+"/secrets/password?api-version=7.4", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := w.env.Client.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Value string `json:"value"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.Value
}

func vaultResource(w *world) string { return "https://" + w.env.Endpoints.Apex() }

func TestPodIdentity(t *testing.T) {
	w := start(t)
	agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{})
	// The provider's socket hands out pods' tokens: root-only, as the
	// daemon that the CLI and this test share makes it.
	if fi, err := os.Stat(agent.Socket); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != nodeagent.LocalSocketMode {
		t.Fatalf("provider socket %s has mode %v, want %o", agent.Socket, fi.Mode(), nodeagent.LocalSocketMode)
	}
	for _, ns := range []string{"team-a", "team-b"} {
		agenttest.Namespace(t, w.kube, ns)
	}
	// team-a binds identity "bound" to pods labelled web; team-b has no
	// binding of its own and reuses the label.
	w.bind(t, "team-a", "web-identity", w.node.Bound.ClientID, "", "web", nil)
	exc := podidentity.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Name: "infra", Namespace: "team-a"},
		Spec: podidentity.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "infra-agent"}}}
	if err := w.kc.Create(context.Background(), &exc); err != nil {
		t.Fatal(err)
	}
	web := agenttest.RunningPod(t, w.kube, "team-a", "web", "node-1", "127.0.0.2", map[string]string{podidentity.BindingLabel: "web"})
	plain := agenttest.RunningPod(t, w.kube, "team-a", "plain", "node-1", "127.0.0.3", nil)
	intruder := agenttest.RunningPod(t, w.kube, "team-b", "intruder", "node-1", "127.0.0.4", map[string]string{podidentity.BindingLabel: "web"})
	infra := agenttest.RunningPod(t, w.kube, "team-a", "infra", "node-1", "127.0.0.5", map[string]string{"app": "infra-agent"})
	elsewhere := agenttest.RunningPod(t, w.kube, "team-a", "elsewhere", "node-2", "127.0.0.6", map[string]string{podidentity.BindingLabel: "web"})
	// The agent answers from its watch cache: wait until it holds what the
	// cases below are about, so a refusal proves a rule, not a cache miss.
	cached(t, agent, []*corev1.Pod{web, plain, intruder, infra}, "web-identity-binding")
	q := "api-version=2018-02-01&resource=" + url.QueryEscape(vaultResource(w))

	t.Run("labelled pod gets its identity", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, web), true)
		if code != 200 {
			t.Fatalf("%d %v", code, body)
		}
		c := claims(t, body["access_token"])
		if c["oid"] != w.node.Bound.PrincipalID || c["aud"] != vaultResource(w) {
			t.Fatalf("token for oid %v aud %v, want %s", c["oid"], c["aud"], w.node.Bound.PrincipalID)
		}
		for _, f := range []string{"access_token", "expires_in", "expires_on", "not_before", "resource", "token_type", "client_id"} {
			if body[f] == "" {
				t.Errorf("field %s missing", f)
			}
		}
		if body["client_id"] != w.node.Bound.ClientID || body["token_type"] != "Bearer" {
			t.Errorf("client_id %q token_type %q", body["client_id"], body["token_type"])
		}
		if code, v := w.readSecret(t, body["access_token"]); code != 200 || v != "s3cr3t-value" {
			t.Fatalf("vault read with the pod's token: %d", code)
		}
		// By client id, object id and resource id, /.default or not.
		for _, sel := range []string{"client_id=" + w.node.Bound.ClientID, "object_id=" + w.node.Bound.PrincipalID, "msi_res_id=" + url.QueryEscape(w.node.Bound.ID), "mi_res_id=" + url.QueryEscape(w.node.Bound.ID)} {
			code, body, _ := agenttest.IMDS(t, agent.URL, "", q+"%2F.default&"+sel, agenttest.PodToken(t, w.kube, web), true)
			if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Bound.PrincipalID {
				t.Errorf("%s: %d %v", sel, code, body["error_description"])
			}
		}
		code, body, _ = agenttest.IMDS(t, agent.URL, "", q+"&client_id="+w.node.Attached.ClientID, agenttest.PodToken(t, w.kube, web), true)
		if code != 400 || !strings.Contains(body["error_description"], "Identity not found") {
			t.Errorf("an identity the pod is not bound to: %d %v", code, body)
		}
	})

	t.Run("AzureAssignedIdentity shows the holder", func(t *testing.T) {
		eventually(t, "AzureAssignedIdentity for team-a/web", func() bool {
			var l podidentity.AzureAssignedIdentityList
			if err := w.kc.List(context.Background(), &l, client.InNamespace("team-a")); err != nil {
				t.Fatal(err)
			}
			for _, a := range l.Items {
				if a.Name == "web-team-a-web-identity" && a.Spec.Pod == "web" && a.Spec.NodeName == "node-1" && a.Spec.AzureIdentityRef != nil &&
					a.Spec.AzureIdentityRef.Name == "web-identity" && a.Spec.AzureIdentityRef.Spec.ClientID == w.node.Bound.ClientID &&
					a.Spec.AzureBindingRef != nil && a.Spec.AzureBindingRef.Spec.Selector == "web" && a.Status.Status == "Assigned" &&
					len(a.OwnerReferences) == 1 && a.OwnerReferences[0].UID == web.UID {
					return len(l.Items) == 1 // plain, infra and elsewhere hold nothing
				}
			}
			return false
		})
	})

	t.Run("a written AzureAssignedIdentity reads back current", func(t *testing.T) {
		// What the apiserver stores (its embedded identity and binding
		// pruned and defaulted as it does) must compare equal to what the
		// writer wants, or the writer would update it on every reconcile.
		pods, err := agent.Cluster.Pods()
		if err != nil {
			t.Fatal(err)
		}
		snap, err := agent.Cluster.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		want := nodeagent.Desired("node-1", pods, snap, podidentity.Policy{})
		if len(want) != 1 {
			t.Fatalf("%d AzureAssignedIdentities wanted, 1 expected", len(want))
		}
		var have podidentity.AzureAssignedIdentity
		if err := w.kc.Get(context.Background(), client.ObjectKeyFromObject(&want[0]), &have); err != nil {
			t.Fatal(err)
		}
		if !nodeagent.Current(have, want[0]) {
			t.Fatalf("the stored object differs from the wanted one:\nhave %+v\nwant %+v", have.Spec, want[0].Spec)
		}
		want[0].Spec.AzureIdentityRef.Spec.ClientID = "another"
		if nodeagent.Current(have, want[0]) {
			t.Fatal("a changed identity still compares current")
		}
	})

	t.Run("unlabelled pod gets nothing", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, plain), true)
		if code != 400 || !strings.Contains(body["error_description"], "Identity not assigned") {
			t.Fatalf("%d %v", code, body)
		}
	})

	t.Run("binding of another namespace never applies", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, intruder), true)
		if code != 400 || !strings.Contains(body["error_description"], "namespace team-b") {
			t.Fatalf("%d %v", code, body)
		}
	})

	t.Run("cluster-wide binding needs both opt-ins", func(t *testing.T) {
		w.bind(t, "team-a", "shared", w.node.Bound.ClientID, "", "shared", map[string]string{podidentity.ClusterWideAnnotation: "true"})
		shared := agenttest.RunningPod(t, w.kube, "team-b", "shared", "node-1", "", map[string]string{podidentity.BindingLabel: "shared"})
		cached(t, agent, []*corev1.Pod{shared}, "shared-binding")
		tok := agenttest.PodToken(t, w.kube, shared)
		if code, body, _ := agenttest.IMDS(t, agent.URL, "", q, tok, true); code != 400 {
			t.Fatalf("annotation alone: %d %v", code, body)
		}
		wide := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{Policy: podidentity.Policy{AllowClusterWide: true}})
		eventually(t, "the opted-in agent serves the shared binding", func() bool {
			code, _, _ := agenttest.IMDS(t, wide.URL, "", q, tok, true)
			return code == 200
		})
	})

	t.Run("exception pod is served as the node", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, infra), true)
		if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Pool.SystemAssigned.PrincipalID {
			t.Fatalf("%d %v", code, body["error_description"])
		}
		code, body, _ = agenttest.IMDS(t, agent.URL, "", q+"&client_id="+w.node.Attached.ClientID, agenttest.PodToken(t, w.kube, infra), true)
		if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Attached.PrincipalID {
			t.Fatalf("attached identity: %d %v", code, body["error_description"])
		}
	})

	t.Run("pod on another node is refused", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, elsewhere), true)
		if code != 403 || !strings.Contains(body["error_description"], "runs on node node-2, not node-1") {
			t.Fatalf("%d %v", code, body)
		}
	})

	t.Run("another pod's address without its token is refused", func(t *testing.T) {
		// The intruder sends from web's address, with no token.
		code, body, _ := agenttest.IMDS(t, agent.URL, web.Status.PodIP, q, "", true)
		if code != 403 || !strings.Contains(body["error_description"], "team-a/web") || !strings.Contains(body["error_description"], "no service-account token") {
			t.Fatalf("%d %v", code, body)
		}
		// ... and with its own token, it is still itself.
		code, _, _ = agenttest.IMDS(t, agent.URL, web.Status.PodIP, q, agenttest.PodToken(t, w.kube, intruder), true)
		if code != 400 {
			t.Fatalf("intruder's token from web's address: %d", code)
		}
		// A token for another audience, or garbage, is refused.
		code, body, _ = agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, web, "api://other"), true)
		if code != 403 || !strings.Contains(body["error_description"], "refused by the apiserver") {
			t.Fatalf("wrong audience: %d %v", code, body)
		}
		code, _, _ = agenttest.IMDS(t, agent.URL, "", q, "not.a.token", true)
		if code != 403 {
			t.Fatalf("garbage token: %d", code)
		}
	})

	t.Run("source-ip mode trusts addresses, as AAD Pod Identity did", func(t *testing.T) {
		legacy := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{Lookup: nodeagent.LookupSourceIP})
		code, body, _ := agenttest.IMDS(t, legacy.URL, web.Status.PodIP, q, "", true)
		if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Bound.PrincipalID {
			t.Fatalf("%d %v", code, body["error_description"])
		}
		code, _, _ = agenttest.IMDS(t, legacy.URL, plain.Status.PodIP, q, "", true)
		if code != 400 {
			t.Fatalf("unlabelled pod by address: %d", code)
		}
		code, _, hdr := agenttest.IMDS(t, legacy.URL, "127.0.0.77", q, "", true)
		if code != 200 { // 127.0.0.77 is no pod's, and a node address: the node
			t.Fatalf("node address: %d", code)
		}
		_ = hdr
	})

	t.Run("node callers get the node's identities only", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, "", true)
		if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Pool.SystemAssigned.PrincipalID {
			t.Fatalf("system-assigned: %d %v", code, body["error_description"])
		}
		code, body, _ = agenttest.IMDS(t, agent.URL, "", q+"&client_id="+w.node.Bound.ClientID, "", true)
		if code != 400 {
			t.Fatalf("a pod identity the node may act as, but which is not attached: %d %v", code, body)
		}
	})

	t.Run("protocol errors", func(t *testing.T) {
		code, body, _ := agenttest.IMDS(t, agent.URL, "", q, "", false)
		if code != 400 || !strings.Contains(body["error_description"], "Metadata") {
			t.Fatalf("no Metadata header: %d %v", code, body)
		}
		code, body, _ = agenttest.IMDS(t, agent.URL, "", "api-version=2018-02-01", "", true)
		if code != 400 || !strings.Contains(body["error_description"], "resource") {
			t.Fatalf("no resource: %d %v", code, body)
		}
		code, _, _ = agenttest.IMDS(t, agent.URL, "", q+"&client_id=a&object_id=b", "", true)
		if code != 400 {
			t.Fatalf("two selectors: %d", code)
		}
		code, body, _ = agenttest.IMDS(t, agent.URL, "", q+"&client_id=00000000-0000-0000-0000-000000000000", "", true)
		if code != 400 || !strings.Contains(body["error_description"], "Identity not found") {
			t.Fatalf("unknown client id: %d %v", code, body)
		}
		// The path is case-insensitive; other metadata is never served.
		req, _ := http.NewRequest("GET", agent.URL+"/METADATA/identity/OAuth2/Token?"+q, nil)
		req.Header.Set("Metadata", "true")
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("mixed-case path: %v %v", resp, err)
		}
		for _, p := range []string{"/metadata/instance?api-version=2021-02-01", "/metadata/scheduledevents", "/latest/meta-data/"} {
			req, _ := http.NewRequest("GET", agent.URL+p, nil)
			req.Header.Set("Metadata", "true")
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 404 {
				t.Fatalf("%s: %v %v", p, resp, err)
			}
		}
		req, _ = http.NewRequest("GET", agent.URL+"/metadata/identity/oauth2/token?"+q, nil)
		req.Header.Set("Metadata", "true")
		req.Header.Set("X-Forwarded-For", "10.0.0.1")
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
			t.Fatalf("forwarded request: %v %v", resp, err)
		}
	})

	t.Run("App Service protocol with the pod's token", func(t *testing.T) {
		req, _ := http.NewRequest("GET", agent.URL+"/msi/token?api-version=2019-08-01&resource="+url.QueryEscape(vaultResource(w)), nil)
		req.Header.Set("X-IDENTITY-HEADER", agenttest.PodToken(t, w.kube, web))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]string
		json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != 200 || claims(t, body["access_token"])["oid"] != w.node.Bound.PrincipalID || body["expires_on"] == "" {
			t.Fatalf("%d %v", resp.StatusCode, body["error_description"])
		}
		req.Header.Set("X-IDENTITY-HEADER", "wrong")
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
			t.Fatalf("wrong header: %v %v", resp, err)
		}
	})

	t.Run("provider socket", func(t *testing.T) {
		na := authclient.NewNodeAgent(agent.Socket)
		ctx := context.Background()
		tok, err := na.Token(ctx, authclient.PodRequest{Namespace: "team-a", Name: "web", UID: string(web.UID), Resource: vaultResource(w)})
		if err != nil || tok.Claims.ObjectID != w.node.Bound.PrincipalID {
			t.Fatalf("pod mode: %v %v", tok.Claims, err)
		}
		tok, err = na.Token(ctx, authclient.PodRequest{Namespace: "team-a", Name: "web", UID: string(web.UID), Resource: vaultResource(w),
			PodToken: agenttest.PodToken(t, w.kube, web, "api://AzureADTokenExchange")})
		if err != nil || tok.Claims.ObjectID != w.node.Bound.PrincipalID {
			t.Fatalf("pod mode with the pod's token: %v %v", tok.Claims, err)
		}
		_, err = na.Token(ctx, authclient.PodRequest{Namespace: "team-a", Name: "web", UID: string(web.UID), Resource: vaultResource(w),
			PodToken: agenttest.PodToken(t, w.kube, plain, "api://AzureADTokenExchange")})
		if err == nil || !strings.Contains(err.Error(), "belongs to pod team-a/plain") {
			t.Fatalf("another pod's token: %v", err)
		}
		_, err = na.Token(ctx, authclient.PodRequest{Namespace: "team-a", Name: "web", UID: "wrong-uid", Resource: vaultResource(w)})
		if err == nil || !strings.Contains(err.Error(), "uid") {
			t.Fatalf("wrong uid: %v", err)
		}
		tok, err = na.Token(ctx, authclient.PodRequest{VM: true, Namespace: "team-a", Name: "plain", UID: string(plain.UID), Resource: vaultResource(w), ClientID: w.node.Attached.ClientID})
		if err != nil || tok.Claims.ObjectID != w.node.Attached.PrincipalID {
			t.Fatalf("vm mode: %v %v", tok.Claims, err)
		}
		_, err = na.Token(ctx, authclient.PodRequest{VM: true, Namespace: "team-a", Name: "plain", UID: string(plain.UID), Resource: vaultResource(w), ClientID: w.node.Stranger.ClientID})
		if err == nil {
			t.Fatal("vm mode with an identity not attached to the node")
		}
		// An operator may keep the node's identities to some namespaces.
		strict := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{NodeIdentityNamespaces: []string{"kube-system"}})
		_, err = authclient.NewNodeAgent(strict.Socket).Token(ctx, authclient.PodRequest{VM: true, Namespace: "team-a", Name: "plain", UID: string(plain.UID), Resource: vaultResource(w)})
		if err == nil || !strings.Contains(err.Error(), "--vm-identity-namespaces") {
			t.Fatalf("vm mode outside --vm-identity-namespaces: %v", err)
		}
		code, _, _ := agenttest.IMDS(t, strict.URL, "", q, agenttest.PodToken(t, w.kube, infra), true)
		if code != 403 {
			t.Fatalf("exception pod outside --vm-identity-namespaces: %d", code)
		}
	})

	t.Run("deleted pod loses its identity and its record", func(t *testing.T) {
		tok := agenttest.PodToken(t, w.kube, web)
		if err := w.kube.Clientset.CoreV1().Pods("team-a").Delete(context.Background(), "web", metav1.DeleteOptions{GracePeriodSeconds: to.Ptr[int64](0)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the agent refuses the deleted pod's token", func() bool {
			code, _, _ := agenttest.IMDS(t, agent.URL, "", q, tok, true)
			return code == 404 || code == 403
		})
		eventually(t, "the AzureAssignedIdentity is gone", func() bool {
			var l podidentity.AzureAssignedIdentityList
			w.kc.List(context.Background(), &l, client.InNamespace("team-a"))
			for _, a := range l.Items {
				if a.Spec.Pod == "web" {
					return false
				}
			}
			return true
		})
	})

	// No token or secret value ever reaches the log.
	log := agent.Log.String()
	if strings.Contains(log, "s3cr3t") || strings.Contains(log, w.node.Pool.AgentSecret) || strings.Contains(log, "eyJ") {
		t.Fatalf("the agent's log holds a token or secret:\n%s", log)
	}
	if !strings.Contains(log, "Identity not assigned") {
		t.Fatalf("refusals are not logged:\n%s", log)
	}
}

// cached waits until the agent's watch cache holds the pods and bindings.
func cached(t testing.TB, agent *agenttest.Agent, pods []*corev1.Pod, bindings ...string) {
	t.Helper()
	eventually(t, "the agent's cache to hold the test's pods and bindings", func() bool {
		for _, p := range pods {
			if got, err := agent.Cluster.Pod(p.Namespace, p.Name); err != nil || got == nil {
				return false
			}
		}
		snap, err := agent.Cluster.Snapshot()
		if err != nil {
			return false
		}
		for _, name := range bindings {
			if !slices.ContainsFunc(snap.Bindings, func(b podidentity.AzureIdentityBinding) bool { return b.Name == name }) {
				return false
			}
		}
		return true
	})
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func base64URL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func keyOf(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }
