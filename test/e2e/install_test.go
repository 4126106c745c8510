package e2e

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	coffclient "github.com/cofferhq/coffer/internal/cli/client"
	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/chartrender"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

const ns = "coffer-system"

// The chart's default port: inside the node's namespace nothing else
// listens on it.
const (
	serverPort = 8443
	vaultHost  = "vault." + cluster.Domain
)

// serverReplicas is how many server pods the installation runs, on etcd.
const serverReplicas = 2

// installation is Coffer installed on the cluster with its Helm chart.
type installation struct {
	c      *node
	admin  *coffclient.Client
	env    devenv.Env
	pool   mgmthttp.NodePoolOut
	caPEM  []byte
	suffix string // vault.e2e.test:8443
	// proxy is the server Service's stand-in for kube-proxy, on the
	// node's address and the chart's port.
	proxy *cluster.ServiceProxy
}

// install installs Coffer with deploy/helm/coffer the way its README says
// (secrets and the server first, then a node pool, then everything), highly
// available: serverReplicas server pods on a 3-member etcd cluster that the
// test starts on the node, reached over TCP with client TLS. The values are
// the chart's defaults but for what this cluster lacks: the node
// components use the host (the node's) network and reach the apiserver at
// the node's address (no kube-proxy, so no ClusterIPs), and the server's
// Service is reached through a proxy of the test's (cluster.ServeService);
// the node agent puts 169.254.169.254 on lo (this kernel has no dummy
// interfaces); and the directories are the cluster's own.
func install(t *testing.T, c *node) *installation {
	t.Helper()
	ctx := context.Background()
	kc := c.Client
	in := &installation{c: c, suffix: fmt.Sprintf("%s:%d", vaultHost, serverPort)}

	start := time.Now()
	etcd := etcdtest.StartWith(t, etcdtest.Options{Members: 3, ClientHost: cluster.NodeIP, TLS: true})
	t.Logf("e2e: a 3-member etcd cluster serves on the node's address, with client TLS, after %s: %s",
		time.Since(start).Round(10*time.Millisecond), strings.Join(etcd.TCPEndpoints(), ","))
	etcdTLS := etcd.ClientTLS()

	files, err := pki.EnsureDev(filepath.Join(c.Dir, "pki"), vaultHost, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	in.caPEM = read(files.CACert)
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffer-root-key", Namespace: ns}, Data: map[string][]byte{"root-key": []byte(rootkey.Generate().Encode())}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffer-tls", Namespace: ns}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": read(files.Cert), "tls.key": read(files.Key)}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "coffer-ca", Namespace: ns}, Data: map[string]string{"ca.crt": string(in.caPEM)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffer-etcd-client", Namespace: ns}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"ca.crt": etcdTLS.CA, "tls.crt": etcdTLS.Cert, "tls.key": etcdTLS.Key}},
		// The authority trusts the cluster's service-account issuer.
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-ca", Namespace: ns}, Data: map[string]string{"ca.crt": string(c.CAData)}},
	}
	for _, o := range objs {
		if err := kc.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	api, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]any{
		"image":     map[string]any{"repository": "coffer.local/coffer", "tag": "e2e", "pullPolicy": "Never"},
		"apiServer": map[string]any{"host": api.Hostname(), "port": api.Port()},
		"server": map[string]any{"dnsSuffix": vaultHost, "replicas": serverReplicas, "persistence": map[string]any{"enabled": false},
			"storage": map[string]any{"type": "etcd", "etcd": map[string]any{"endpoints": toAny(etcd.TCPEndpoints()),
				"tls": map[string]any{"secretName": "coffer-etcd-client"}}},
			"federationCA": map[string]any{"configMap": "kube-ca", "key": "ca.crt"}},
		"linux": map[string]any{"enabled": false, "kubeletRootDir": c.KubeletDir, "providersDir": filepath.Join(c.Dir, "providers"),
			"hostNetwork": true},
		"enableSecretRotation": true, "rotationPollInterval": "10m", "syncSecret": map[string]any{"enabled": true},
		"provider":  map[string]any{"enabled": false},
		"nodeAgent": map[string]any{"enabled": false, "socketDir": filepath.Join(c.Dir, "agent"), "linkLocalInterface": "lo"},
		"webhook":   map[string]any{"enabled": false, "hostNetwork": true},
	}
	chart, err := chartrender.Load(testpath.Repo(t, "deploy/helm/coffer"))
	if err != nil {
		t.Fatal(err)
	}

	t.Log("e2e: installing the chart, step 1: the server")
	apply(t, c, chart, values)
	in.proxy = c.ServeService(ns, "coffer-server", "https", net.JoinHostPort(cluster.NodeIP, strconv.Itoa(serverPort)))
	// The replicas start together; their init containers take turns.
	start = time.Now()
	servers := c.WaitPodsOf(ns, "app.kubernetes.io/component=server", serverReplicas, 2*time.Minute)
	t.Logf("e2e: %d server replicas ready after %s", serverReplicas, time.Since(start).Round(10*time.Millisecond))
	var admin corev1.Secret
	deadline := time.Now().Add(time.Minute)
	for kc.Get(ctx, client.ObjectKey{Namespace: ns, Name: "coffer-admin"}, &admin) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("no administrator's Secret; the init containers' first runs said:\n%s\nCoffer's pods say:\n%s", initLogs(c, servers), c.Logs(ns))
		}
		time.Sleep(250 * time.Millisecond)
	}
	envFile := filepath.Join(c.Dir, "admin.env")
	if err := os.WriteFile(envFile, admin.Data["dev.env"], 0o600); err != nil {
		t.Fatal(err)
	}
	if in.env, err = devenv.Read(envFile); err != nil {
		t.Fatal(err)
	}
	in.env.CAFile = files.CACert
	if in.admin, err = coffclient.New(in.env); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, "the server to answer", time.Minute, func() bool {
		return in.admin.Manage(ctx, "GET", "vaults", nil, nil) == nil
	})
	// Exactly one replica bootstrapped; the other found its work done, at
	// its first try.
	bootstrapped := 0
	for i := range servers {
		log := c.ContainerRunLog(&servers[i], "init", 0)
		switch {
		case strings.Contains(log, "Initialised."):
			bootstrapped++
		case !strings.Contains(log, "already initialised and Secret coffer-system/coffer-admin exists; nothing to do"):
			t.Errorf("server pod %s's init container said:\n%s", servers[i].Name, log)
		}
		for _, cs := range servers[i].Status.InitContainerStatuses {
			if cs.RestartCount > 0 {
				t.Errorf("server pod %s's init container ran %d times:\n%s", servers[i].Name, cs.RestartCount+1, initLogs(c, servers))
			}
		}
	}
	if bootstrapped != 1 {
		t.Errorf("%d server replicas bootstrapped the store, want 1:\n%s", bootstrapped, initLogs(c, servers))
	}
	manage := func(method, path string, body, out any) {
		t.Helper()
		if err := in.admin.Manage(ctx, method, path, body, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	manage("POST", "vaults", mgmthttp.CreateVaultIn{Name: "demo", ResourceGroup: "e2e"}, nil)
	manage("POST", "node-pools", mgmthttp.CreateIdentityIn{Name: "pool1", ResourceGroup: "nodes"}, &in.pool)
	if err := kc.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffer-node-agent", Namespace: ns},
		Data: map[string][]byte{"client-id": []byte(in.pool.AgentClientID), "client-secret": []byte(in.pool.AgentSecret)}}); err != nil {
		t.Fatal(err)
	}

	t.Log("e2e: installing the chart, step 2: the node components and the webhook")
	chartrender.Merge(values, map[string]any{
		"tenantID":  in.env.TenantID,
		"linux":     map[string]any{"enabled": true},
		"provider":  map[string]any{"enabled": true},
		"nodeAgent": map[string]any{"enabled": true, "systemIdentity": in.pool.SystemAssigned.ClientID},
		"webhook":   map[string]any{"enabled": true},
	})
	apply(t, c, chart, values)
	for _, comp := range []string{"csi-driver", "provider", "node-agent", "webhook"} {
		c.WaitPodsOf(ns, "app.kubernetes.io/component="+comp, 1, 2*time.Minute)
	}
	waitInstall(t, c, "the driver's registration with the kubelet", func() bool {
		var n storagev1.CSINode
		if kc.Get(ctx, client.ObjectKey{Name: cluster.NodeName}, &n) != nil {
			return false
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == "secrets-store.csi.k8s.io" {
				return true
			}
		}
		return false
	})
	waitInstall(t, c, "the webhook's caBundle", func() bool {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("admissionregistration.k8s.io/v1")
		u.SetKind("MutatingWebhookConfiguration")
		if kc.Get(ctx, client.ObjectKey{Name: "coffer-workload-identity"}, u) != nil {
			return false
		}
		hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
		if len(hooks) == 0 {
			return false
		}
		b, _, _ := unstructured.NestedString(hooks[0].(map[string]any), "clientConfig", "caBundle")
		return b != ""
	})
	return in
}

// apply creates the chart's objects, or updates those that exist. The
// apiserver must have no warning for any of them (a deprecated field, an
// unknown one, a doubtful value).
func apply(t *testing.T, c *node, ch *chartv2.Chart, values map[string]any) {
	t.Helper()
	objs, err := chartrender.Render(ch, "coffer", ns, values)
	if err != nil {
		t.Fatal(err)
	}
	kc, warnings := warningClient(t, c)
	ctx := context.Background()
	for _, o := range objs {
		err := kc.Create(ctx, o)
		if apierrors.IsAlreadyExists(err) {
			cur := &unstructured.Unstructured{}
			cur.SetGroupVersionKind(o.GroupVersionKind())
			if err = kc.Get(ctx, client.ObjectKeyFromObject(o), cur); err == nil {
				o.SetResourceVersion(cur.GetResourceVersion())
				if o.GetKind() == "MutatingWebhookConfiguration" {
					continue // its caBundle is the webhook's
				}
				err = kc.Update(ctx, o)
			}
		}
		if err != nil {
			t.Fatalf("applying %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		if w := warnings.Take(); len(w) > 0 {
			t.Errorf("the apiserver warns about %s %s: %s", o.GetKind(), o.GetName(), strings.Join(w, "; "))
		}
	}
}

// warningClient is an administrator's client whose apiserver warnings go
// to the returned recorder.
func warningClient(t *testing.T, c *node) (client.Client, *kubetest.Warnings) {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	warnings := &kubetest.Warnings{}
	cfg.WarningHandler, cfg.WarningHandlerWithContext = warnings, nil
	kc, err := client.New(cfg, client.Options{Scheme: c.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return kc, warnings
}

// waitInstall waits for cond, and shows every Coffer pod's log if it never
// holds.
func waitInstall(t *testing.T, c *node, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("e2e: timed out waiting for %s; Coffer's pods said:\n%s", what, c.Logs(ns))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// initLogs are the first runs' logs of the server pods' init containers
// (the API keeps only the latest two runs).
func initLogs(c *node, pods []corev1.Pod) string {
	var b strings.Builder
	for i := range pods {
		fmt.Fprintf(&b, "--- %s:\n%s\n", pods[i].Name, c.ContainerRunLog(&pods[i], "init", 0))
	}
	return b.String()
}
