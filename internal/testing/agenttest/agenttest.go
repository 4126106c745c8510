// Package agenttest sets up what the node agent's tests share: a node
// pool with identities in a real Coffer test server, and a real node agent
// reading a real kube-apiserver, serving on loopback and a unix socket.
package agenttest

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// Node is a node pool and the user-assigned identities of a test.
type Node struct {
	Pool mgmthttp.NodePoolOut
	// Attached is attached to the node (--vm-identity).
	Attached mgmthttp.IdentityOut
	// Bound is for pods, through AzureIdentityBindings.
	Bound mgmthttp.IdentityOut
	// Stranger is an identity the node pool may not act as.
	Stranger mgmthttp.IdentityOut
}

// SetupNode creates node pool "pool1" and identities "attached", "bound"
// and "stranger"; the pool may act as the first two, and all of them, and
// the pool's system-assigned identity, may get secrets of vault demo.
func SetupNode(t testing.TB, env *testserver.Env) Node {
	t.Helper()
	ctx := context.Background()
	var n Node
	manage := func(method, path string, in, out any) {
		t.Helper()
		if err := env.Client.Manage(ctx, method, path, in, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	manage("POST", "node-pools", mgmthttp.CreateIdentityIn{Name: "pool1", ResourceGroup: "nodes"}, &n.Pool)
	manage("POST", "identities", mgmthttp.CreateIdentityIn{Name: "attached", ResourceGroup: "apps"}, &n.Attached)
	manage("POST", "identities", mgmthttp.CreateIdentityIn{Name: "bound", ResourceGroup: "apps"}, &n.Bound)
	manage("POST", "identities", mgmthttp.CreateIdentityIn{Name: "stranger", ResourceGroup: "apps"}, &n.Stranger)
	manage("POST", "node-pools/nodes/pool1/identities", mgmthttp.AssignIn{Identities: []string{n.Attached.ID, n.Bound.ID}}, nil)
	get := []string{"get"}
	for _, oid := range []string{n.Pool.SystemAssigned.PrincipalID, n.Attached.PrincipalID, n.Bound.PrincipalID, n.Stranger.PrincipalID} {
		manage("POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: oid, Secrets: &get}, nil)
	}
	return n
}

// Options tune a started agent.
type Options struct {
	NodeName string // node-1 by default
	Lookup   nodeagent.Lookup
	Policy   podidentity.Policy
	// Listen is the IMDS address; 127.0.0.1:0 by default.
	Listen string
	// Redirect is the agent's redirect; none by default. With link-local,
	// LinkLocalInterface gets the address.
	Redirect           nodeagent.Redirect
	LinkLocalInterface string
	// Quiet logs at info, as the agent runs by default, not debug.
	Quiet bool
	// NodeIdentityNamespaces is the agent's --vm-identity-namespaces.
	NodeIdentityNamespaces []string
	// PodRate and PodBurst are the agent's per-pod limits (zero: its
	// defaults; a negative PodRate: none, for throughput benchmarks).
	PodRate  float64
	PodBurst int
}

// Agent is a running node agent.
type Agent struct {
	URL     string // http://{imds address}
	Socket  string // the provider's unix socket
	Agent   *nodeagent.Agent
	Cluster *nodeagent.KubeCluster
	Log     *SyncBuffer
}

// Start runs a node agent for node, reading kube, getting tokens from env,
// and stops it when the test ends. It is built by the node agent daemon's
// own entry point, as `coffer node-agent` builds it.
func Start(t testing.TB, env *testserver.Env, kube *kubetest.Env, node Node, o Options) *Agent {
	t.Helper()
	if o.NodeName == "" {
		o.NodeName = "node-1"
	}
	if o.Redirect == "" {
		o.Redirect = nodeagent.RedirectNone
	}
	if o.Listen == "" && o.Redirect == nodeagent.RedirectNone {
		o.Listen = "127.0.0.1:0"
	}
	log := &SyncBuffer{}
	level := slog.LevelDebug
	if o.Quiet {
		level = slog.LevelInfo
	}
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secretFile, []byte(node.Pool.AgentSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	d, err := nodeagent.NewDaemon(ctx, nodeagent.Options{
		NodeName: o.NodeName, Tenant: env.State.TenantID, AgentClientID: node.Pool.AgentClientID, AgentSecretFile: secretFile,
		AuthorityHost: env.Admin.AuthorityHost, CAFile: env.Admin.CAFile,
		SystemIdentity: node.Pool.SystemAssigned.ClientID, VMIdentities: []string{node.Attached.ClientID},
		NodeIdentityNamespaces: o.NodeIdentityNamespaces, Lookup: o.Lookup, NodeCallers: true, Policy: o.Policy,
		PodRate: o.PodRate, PodBurst: o.PodBurst,
		Listen: o.Listen, Redirect: o.Redirect, LinkLocalInterface: o.LinkLocalInterface, LocalSocket: "unix://" + sock,
		WriteStatus: true, Kube: kube.Config, Log: slog.New(slog.NewJSONHandler(log, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		cancel()
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node agent: %v", err)
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for !d.Cluster.Synced() {
		if time.Now().After(deadline) {
			t.Fatal("the node agent's caches did not sync")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Agent{URL: "http://" + d.Addr().String(), Socket: sock, Agent: d.Agent, Cluster: d.Cluster, Log: log}
}

// RunningPod creates a pod on node with labels, and gives it the status a
// kubelet would: Running, with address ip ("" for none).
func RunningPod(t testing.TB, kube *kubetest.Env, ns, name, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	}
	created, err := kube.Clientset.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	if ip != "" {
		created.Status.PodIP = ip
		created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	updated, err := kube.Clientset.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return updated
}

// Namespace creates a namespace and its default service account (no
// controller-manager runs to do it).
func Namespace(t testing.TB, kube *kubetest.Env, ns string) {
	t.Helper()
	ctx := context.Background()
	if _, err := kube.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.Clientset.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// PodToken returns a token bound to pod, as the kubelet projects it, for
// audiences (none: the apiserver's).
func PodToken(t testing.TB, kube *kubetest.Env, pod *corev1.Pod, audiences ...string) string {
	t.Helper()
	tr, err := kube.Clientset.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// IMDS sends an IMDS token request from the local address from ("" for
// any), with the pod token tok ("" for none).
func IMDS(t testing.TB, base, from, query, tok string, metadata bool) (int, map[string]string, http.Header) {
	t.Helper()
	hc := &http.Client{Timeout: 20 * time.Second}
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		hc.Transport = &http.Transport{DialContext: d.DialContext}
	}
	req, err := http.NewRequest("GET", base+"/metadata/identity/oauth2/token?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if metadata {
		req.Header.Set("Metadata", "true")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("IMDS answered %d with a body that is not a JSON object of strings: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, body, resp.Header
}

// SyncBuffer is a bytes.Buffer safe for a logger and a test to share.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// LoggedAddr waits until a process writing JSON log lines to s logs msg
// with an "addr" attribute, and returns it: a test passes 127.0.0.1:0 and
// learns the port the process bound, instead of picking a free port that
// another test could take before the process binds it.
func (s *SyncBuffer) LoggedAddr(t testing.TB, msg string) string {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		for _, line := range strings.Split(s.String(), "\n") {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg && rec.Addr != "" {
				return rec.Addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line with an address in a minute:\n%s", msg, s.String())
		}
	}
}
