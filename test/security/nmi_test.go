package security

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
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

// podWorld is a server, an apiserver, a node pool and pods on node-1:
// team-a/web (127.0.0.2) is bound to identity "bound"; team-a/plain
// (127.0.0.3) has no binding; team-b/intruder (127.0.0.4) wears web's label.
type podWorld struct {
	env                  *testserver.Env
	kube                 *kubetest.Env
	node                 agenttest.Node
	kc                   client.Client
	web, plain, intruder *corev1.Pod
	q                    string
}

func startPods(t *testing.T) *podWorld {
	t.Helper()
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{testpath.Repo(t, "deploy/crds")}})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
	w := &podWorld{env: env, kube: kube, node: agenttest.SetupNode(t, env)}
	if err := podidentity.AddToScheme(kube.Scheme); err != nil {
		t.Fatal(err)
	}
	kc, err := client.New(kube.Config, client.Options{Scheme: kube.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	w.kc = kc
	sc, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.SetSecret(context.Background(), "password", azsecrets.SetSecretParameters{Value: to.Ptr("s3cr3t-value")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"team-a", "team-b"} {
		agenttest.Namespace(t, kube, ns)
	}
	w.bind(t, "team-a", "web-identity", w.node.Bound.ClientID, "web")
	w.web = agenttest.RunningPod(t, kube, "team-a", "web", "node-1", "127.0.0.2", map[string]string{podidentity.BindingLabel: "web"})
	w.plain = agenttest.RunningPod(t, kube, "team-a", "plain", "node-1", "127.0.0.3", nil)
	w.intruder = agenttest.RunningPod(t, kube, "team-b", "intruder", "node-1", "127.0.0.4", map[string]string{podidentity.BindingLabel: "web"})
	w.q = "api-version=2018-02-01&resource=" + url.QueryEscape("https://"+env.Endpoints.Apex())
	return w
}

func (w *podWorld) bind(t *testing.T, ns, name, clientID, selector string) {
	t.Helper()
	ctx := context.Background()
	if err := w.kc.Create(ctx, &podidentity.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: podidentity.AzureIdentitySpec{Type: podidentity.UserAssignedMSI, ClientID: clientID}}); err != nil {
		t.Fatal(err)
	}
	if err := w.kc.Create(ctx, &podidentity.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: name + "-binding", Namespace: ns},
		Spec: podidentity.AzureIdentityBindingSpec{AzureIdentity: name, Selector: selector}}); err != nil {
		t.Fatal(err)
	}
}

// startAgent starts a node agent and waits until its cache holds pods.
func (w *podWorld) startAgent(t *testing.T, o agenttest.Options, pods ...*corev1.Pod) *agenttest.Agent {
	t.Helper()
	a := agenttest.Start(t, w.env, w.kube, w.node, o)
	eventually(t, "the agent's cache to hold the test's pods and binding", func() bool {
		for _, p := range pods {
			if got, err := a.Cluster.Pod(p.Namespace, p.Name); err != nil || got == nil {
				return false
			}
		}
		snap, err := a.Cluster.Snapshot()
		return err == nil && len(snap.Bindings) > 0
	})
	return a
}

// rawGet sends target verbatim as the request line's target (no client
// normalises it), from address from, and returns the status and the
// access token's object id, if one came back.
func rawGet(t *testing.T, base, from, target, tok string) (int, string, string) {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nMetadata: true\r\nConnection: close\r\n", target, host)
	if tok != "" {
		req += "Authorization: Bearer " + tok + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	oid := ""
	if body["access_token"] != "" {
		oid, _ = claims(t, body["access_token"])["oid"].(string)
	}
	return resp.StatusCode, oid, body["error_description"]
}

// CVE-2022-23551 (AAD Pod Identity's NMI): a request path that the token
// handler did not recognise was forwarded to the real IMDS, which answered
// with the node's identity. The node agent proxies nothing, so every
// spelling of the token path either answers 404 or goes through the same
// checks as the canonical path: never the node's identity to a pod.
func TestNMIPathBypass(t *testing.T) {
	w := startPods(t)
	agent := w.startAgent(t, agenttest.Options{}, w.web, w.plain, w.intruder)
	nodeOIDs := map[string]bool{w.node.Pool.SystemAssigned.PrincipalID: true, w.node.Attached.PrincipalID: true}
	// The canonical path from the unbound pod, which presents no token:
	// refused, and that refusal is what every variant must keep.
	if code, oid, d := rawGet(t, agent.URL, w.plain.Status.PodIP, "/metadata/identity/oauth2/token?"+w.q, ""); code != 403 || oid != "" {
		t.Fatalf("canonical path from a pod without its token: %d %s", code, d)
	}
	webTok, plainTok := agenttest.PodToken(t, w.kube, w.web), agenttest.PodToken(t, w.kube, w.plain)
	for _, p := range []string{
		"//metadata/identity/oauth2/token",
		"///metadata/identity/oauth2/token",
		"/metadata//identity/oauth2/token",
		"/metadata/identity/oauth2/token/",
		"/metadata/identity/oauth2/token//",
		"/METADATA/IDENTITY/OAUTH2/TOKEN",
		"/Metadata/Identity/OAuth2/Token/",
		"/metadata/identity/%2e%2e/identity/oauth2/token",
		"/metadata/identity/../identity/oauth2/token",
		"/metadata/./identity/oauth2/token",
		"/metadata/identity/oauth2/token/.",
		"/%6detadata/identity/oauth2/token",
		"/metadata%2Fidentity%2Foauth2%2Ftoken",
		"/metadata/identity%2foauth2%2ftoken",
		"/metadata/identity/oauth2/token%2F",
		"/metadata/identity/oauth2/token%00",
		"/metadata/identity/oauth2/token;x=1",
		"/metadata/identity/oauth2/token%3Fx=1",
		"http://169.254.169.254/metadata/identity/oauth2/token",
		"/msi//token",
	} {
		t.Run("CVE-2022-23551: "+p, func(t *testing.T) {
			target := p + "?" + w.q
			// A pod with no token, from its own address: no identity.
			if code, oid, d := rawGet(t, agent.URL, w.plain.Status.PodIP, target, ""); code == 200 || oid != "" {
				t.Fatalf("pod without a token: %d oid %s %s", code, oid, d)
			}
			// An unbound pod with its token: still nothing.
			if code, oid, d := rawGet(t, agent.URL, w.plain.Status.PodIP, target, plainTok); code == 200 || nodeOIDs[oid] {
				t.Fatalf("unbound pod with its token: %d oid %s %s", code, oid, d)
			}
			// A bound pod gets its own identity or a refusal, never the node's.
			if code, oid, d := rawGet(t, agent.URL, w.web.Status.PodIP, target, webTok); nodeOIDs[oid] || (code == 200 && oid != w.node.Bound.PrincipalID) {
				t.Fatalf("bound pod: %d oid %s %s", code, oid, d)
			}
		})
	}
}

// AAD Pod Identity's host-network and ARP-spoofing classes: an address
// proves nothing, so a pod that borrows another pod's address, or a
// host-network pod that shares the node's, gets no identity it was not
// bound to.
func TestPodIdentityAddressClasses(t *testing.T) {
	w := startPods(t)
	ctx := context.Background()
	// A host-network pod bound to "bound": its address is the node's.
	hostPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnet", Namespace: "team-a", Labels: map[string]string{podidentity.BindingLabel: "web"}},
		Spec: corev1.PodSpec{NodeName: "node-1", HostNetwork: true, ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}
	hostPod, err := w.kube.Clientset.CoreV1().Pods("team-a").Create(ctx, hostPod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hostPod.Status.Phase, hostPod.Status.PodIP, hostPod.Status.PodIPs = corev1.PodRunning, "127.0.0.1", []corev1.PodIP{{IP: "127.0.0.1"}}
	if hostPod, err = w.kube.Clientset.CoreV1().Pods("team-a").UpdateStatus(ctx, hostPod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A second pod reporting web's address, as a stale or spoofed status.
	twin := agenttest.RunningPod(t, w.kube, "team-b", "twin", "node-1", "127.0.0.2", nil)
	agent := w.startAgent(t, agenttest.Options{}, w.web, w.plain, w.intruder, hostPod, twin)
	legacy := w.startAgent(t, agenttest.Options{Lookup: nodeagent.LookupSourceIP}, w.web, w.plain, w.intruder, hostPod, twin)
	imds := "/metadata/identity/oauth2/token?" + w.q

	t.Run("ARP spoofing: another pod's address without its token", func(t *testing.T) {
		if code, oid, d := rawGet(t, agent.URL, w.web.Status.PodIP, imds, ""); code != 403 || oid != "" {
			t.Fatalf("%d %s %s", code, oid, d)
		}
	})
	t.Run("ARP spoofing: another pod's address with the spoofer's own token", func(t *testing.T) {
		if code, oid, d := rawGet(t, agent.URL, w.web.Status.PodIP, imds, agenttest.PodToken(t, w.kube, w.intruder)); code == 200 || oid != "" {
			t.Fatalf("%d %s %s", code, oid, d)
		}
	})
	t.Run("ARP spoofing: two pods claim one address (source-ip mode)", func(t *testing.T) {
		if code, oid, d := rawGet(t, legacy.URL, w.web.Status.PodIP, imds, ""); code != 403 || !strings.Contains(d, "ambiguous") || oid != "" {
			t.Fatalf("%d %s %s", code, oid, d)
		}
	})
	t.Run("host network: the node's address never selects a host-network pod's binding", func(t *testing.T) {
		for _, a := range []*agenttest.Agent{agent, legacy} {
			if code, oid, d := rawGet(t, a.URL, "127.0.0.1", imds, ""); oid == w.node.Bound.PrincipalID {
				t.Fatalf("%d: a node caller got the host-network pod's identity %s", code, d)
			}
		}
	})
	t.Run("host network: the pod proves itself with its token", func(t *testing.T) {
		if code, oid, d := rawGet(t, agent.URL, "127.0.0.1", imds, agenttest.PodToken(t, w.kube, hostPod)); code != 200 || oid != w.node.Bound.PrincipalID {
			t.Fatalf("%d %s %s", code, oid, d)
		}
	})
	t.Run("cross-namespace binding: a pod wearing another namespace's selector", func(t *testing.T) {
		if code, oid, d := rawGet(t, agent.URL, w.intruder.Status.PodIP, imds, agenttest.PodToken(t, w.kube, w.intruder)); code == 200 || oid != "" || !strings.Contains(d, "namespace team-b") {
			t.Fatalf("%d %s %s", code, oid, d)
		}
	})
	t.Run("cross-namespace binding: the provider socket asked for another namespace's pod", func(t *testing.T) {
		_, err := authclient.NewNodeAgent(agent.Socket).Token(ctx, authclient.PodRequest{Namespace: "team-a", Name: "web", UID: string(w.web.UID),
			Resource: "https://" + w.env.Endpoints.Apex(), PodToken: agenttest.PodToken(t, w.kube, w.intruder, "api://AzureADTokenExchange")})
		if err == nil || !strings.Contains(err.Error(), "belongs to pod team-b/intruder") {
			t.Fatalf("%v", err)
		}
	})
}
