package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/cli"
	coffclient "github.com/cofferhq/coffer/internal/cli/client"
	installer "github.com/cofferhq/coffer/internal/cli/install"
	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
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
	// valuesFile and envFile are coffer install's --values and
	// --write-env.
	valuesFile, envFile string
	// proxy is the server Service's stand-in for kube-proxy, on the
	// node's address and the chart's port.
	proxy *cluster.ServiceProxy
}

// install installs Coffer with `coffer install`, as its README says,
// highly available: serverReplicas server pods on a 3-member etcd cluster
// that the test starts on the node, reached over TCP with client TLS. The
// values file gives what this cluster needs beyond the chart's defaults:
// the image built here; the node components use the host (the node's)
// network and reach the apiserver at the node's address (no kube-proxy,
// so no ClusterIPs), and the server's Service is reached through a proxy
// of the test's (cluster.ServeService); the node agent puts
// 169.254.169.254 on lo (this kernel has no dummy interfaces); the
// directories are the cluster's own; and the authority trusts the
// cluster's service-account issuer. The etcd client certificate and the
// issuer's CA are the test's, in the namespace the test makes: `coffer
// uninstall` must leave those, and remove everything else.
func install(t *testing.T, c *node) *installation {
	t.Helper()
	ctx := context.Background()
	kc := c.Client
	in := &installation{c: c, suffix: fmt.Sprintf("%s:%d", vaultHost, serverPort), envFile: filepath.Join(c.Dir, "admin.env")}

	start := time.Now()
	etcd := etcdtest.StartWith(t, etcdtest.Options{Members: 3, ClientHost: cluster.NodeIP, TLS: true})
	t.Logf("e2e: a 3-member etcd cluster serves on the node's address, with client TLS, after %s: %s",
		time.Since(start).Round(10*time.Millisecond), strings.Join(etcd.TCPEndpoints(), ","))
	etcdTLS := etcd.ClientTLS()
	for _, o := range testObjects(c, etcdTLS.CA, etcdTLS.Cert, etcdTLS.Key) {
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
			"federationCA": map[string]any{"configMap": "kube-ca", "key": "ca.crt"}, "allowPrivateIssuers": true},
		"linux": map[string]any{"kubeletRootDir": c.KubeletDir, "providersDir": filepath.Join(c.Dir, "providers"),
			"hostNetwork": true},
		"enableSecretRotation": true, "rotationPollInterval": "10m", "syncSecret": map[string]any{"enabled": true},
		"nodeAgent": map[string]any{"socketDir": filepath.Join(c.Dir, "agent"), "linkLocalInterface": "lo"},
		"webhook":   map[string]any{"hostNetwork": true},
		// One replica: on the node's network, two would share its ports.
		"syncController": map[string]any{"enabled": true, "namespaces": []any{"default"}, "hostNetwork": true, "replicas": 1},
	}
	b, err := yaml.Marshal(values)
	if err != nil {
		t.Fatal(err)
	}
	in.valuesFile = filepath.Join(c.Dir, "values.yaml")
	if err := os.WriteFile(in.valuesFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Before the install: the node agent, the provider and the webhook
	// reach the server through it as soon as they start.
	in.proxy = c.ServeService(ns, "coffer-server", "https", net.JoinHostPort(cluster.NodeIP, strconv.Itoa(serverPort)))

	start = time.Now()
	out := in.coffer(t, "install")
	t.Logf("e2e: coffer install took %s; it printed:\n%s", time.Since(start).Round(time.Second), indent(out, "  "))
	for _, want := range []string{"Connecting to the cluster", "created the root key", "Installing the server", "Creating the node pool pool1",
		"csi-driver: 1/1 ready", "the webhook's CA is published", "Coffer is installed in namespace coffer-system (Helm release coffer, revision 2)"} {
		if !strings.Contains(out, want) {
			t.Errorf("coffer install did not print %q", want)
		}
	}
	if in.env, err = devenv.Read(in.envFile); err != nil {
		t.Fatal(err)
	}
	if in.caPEM, err = os.ReadFile(in.env.CAFile); err != nil {
		t.Fatal(err)
	}
	if in.admin, err = coffclient.New(in.env); err != nil {
		t.Fatal(err)
	}
	in.pool = in.state(t)
	if in.pool.TenantID != in.env.TenantID || !strings.Contains(out, in.pool.SystemAssigned.ClientID) {
		t.Errorf("the node pool's identity %+v is not the one printed, or not of the tenant %s", in.pool, in.env.TenantID)
	}
	eventually(t, c, "the server to answer", time.Minute, func() bool {
		return in.admin.Manage(ctx, "GET", "vaults", nil, nil) == nil
	})
	// Exactly one replica bootstrapped; the other found its work done, at
	// its first try.
	servers := c.WaitPodsOf(ns, "app.kubernetes.io/component=server", serverReplicas, time.Minute)
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
	if err := in.admin.Manage(ctx, "POST", "vaults", mgmthttp.CreateVaultIn{Name: "demo", ResourceGroup: "e2e"}, nil); err != nil {
		t.Fatal(err)
	}
	return in
}

// testObjects are what the test makes for the installation itself: the
// namespace, the etcd client certificate, and the CA of the cluster's
// service-account issuer.
func testObjects(c *node, ca, cert, key []byte) []client.Object {
	return []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "coffer-etcd-client", Namespace: ns}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"ca.crt": ca, "tls.crt": cert, "tls.key": key}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-ca", Namespace: ns}, Data: map[string]string{"ca.crt": string(c.CAData)}},
	}
}

// coffer runs `coffer {verb}` (install or uninstall) as a user would,
// through the CLI, on the cluster's kubeconfig, and returns what it
// printed.
func (in *installation) coffer(t *testing.T, verb string) string {
	t.Helper()
	args := []string{verb, "--kubeconfig", in.c.Kubeconfig}
	switch verb {
	case "install":
		args = append(args, "--values", in.valuesFile, "--node-pool", "pool1", "--resource-group", "nodes", "--write-env", in.envFile, "--timeout", "4m")
	case "uninstall":
		args = append(args, "--yes")
	}
	var out, errb strings.Builder
	if code := cli.Main(args, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("coffer %s exited %d: %s\nit printed:\n%s\nCoffer's pods say:\n%s", verb, code, errb.String(), out.String(), in.c.Logs(ns))
	}
	return out.String()
}

// state reads the node pool's identity where coffer install records it.
func (in *installation) state(t *testing.T) mgmthttp.NodePoolOut {
	t.Helper()
	var cm corev1.ConfigMap
	if err := in.c.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: installer.StateConfigMap("coffer")}, &cm); err != nil {
		t.Fatal(err)
	}
	d := cm.Data
	return mgmthttp.NodePoolOut{Name: d[installer.StateNodePool], ID: d[installer.StateResourceID], AgentClientID: d[installer.StateAgentClientID],
		TenantID: d[installer.StateTenantID], SystemAssigned: mgmthttp.IdentityOut{ClientID: d[installer.StateClientID], PrincipalID: d[installer.StatePrincipalID]}}
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

// upgrade runs `coffer install` again, as an upgrade does: a new revision
// of the release, and the same root key, certificate, tenant, node pool
// and administrator.
func (in *installation) upgrade(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	secret := func(name string) []byte {
		var s corev1.Secret
		if err := in.c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
			t.Fatal(err)
		}
		return bytes.Join([][]byte{s.Data["root-key"], s.Data["tls.crt"], s.Data["client-id"]}, nil)
	}
	before := map[string][]byte{}
	for _, name := range []string{"coffer-root-key", "coffer-tls", "coffer-node-agent"} {
		before[name] = secret(name)
	}
	start := time.Now()
	out := in.coffer(t, "install")
	t.Logf("e2e: the second coffer install took %s; it printed:\n%s", time.Since(start).Round(time.Second), indent(out, "  "))
	for _, want := range []string{"the root key exists", "the server certificate for *." + vaultHost + " is current",
		"Found the node pool pool1 (identity " + in.pool.SystemAssigned.ClientID + ")", "Upgrading Coffer",
		"Coffer is upgraded in namespace coffer-system (Helm release coffer, revision 3)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the second coffer install did not print %q", want)
		}
	}
	for name, b := range before {
		if !bytes.Equal(secret(name), b) {
			t.Errorf("the second coffer install changed Secret %s", name)
		}
	}
	if got := in.state(t); got != in.pool {
		t.Errorf("the node pool is now %+v, was %+v", got, in.pool)
	}
	env, err := devenv.Read(in.envFile)
	if err != nil {
		t.Fatal(err)
	}
	if env.TenantID != in.env.TenantID || env.ClientID != in.env.ClientID {
		t.Errorf("the administrator is now %s of %s, was %s of %s", env.ClientID, env.TenantID, in.env.ClientID, in.env.TenantID)
	}
	if err := in.admin.Manage(ctx, "GET", "vaults/demo", nil, nil); err != nil {
		t.Errorf("vault demo after the upgrade: %v", err)
	}
}

// uninstall deletes the examples' Deployments and pods, then runs `coffer uninstall`, and
// checks that nothing of Coffer's is left: in its namespace only what the
// test made itself, and no cluster-wide object, CRD or CSI registration.
// Coffer's store stays in the test's etcd, as the uninstall says.
func (in *installation) uninstall(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	cs := in.c.Clientset
	// The Deployments first (the secretObjects scale-down's): their
	// ReplicaSets would replace the pods deleted below.
	background := metav1.DeletePropagationBackground
	if err := cs.AppsV1().Deployments("default").DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &background}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, in.c, "the examples' ReplicaSets to go", 2*time.Minute, func() bool {
		l, err := cs.AppsV1().ReplicaSets("default").List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0
	})
	if err := cs.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, in.c, "the examples' pods to go", 2*time.Minute, func() bool {
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0
	})
	start := time.Now()
	out := in.coffer(t, "uninstall")
	t.Logf("e2e: coffer uninstall took %s; it printed:\n%s", time.Since(start).Round(time.Second), indent(out, "  "))
	if !strings.Contains(out, "namespace coffer-system was not made by coffer install: it stays") || !strings.Contains(out, "Coffer is uninstalled") {
		t.Errorf("coffer uninstall printed:\n%s", out)
	}

	names := func(list any) []string {
		var out []string
		switch l := list.(type) {
		case *corev1.SecretList:
			for _, o := range l.Items {
				out = append(out, "Secret "+o.Name)
			}
		case *corev1.ConfigMapList:
			for _, o := range l.Items {
				out = append(out, "ConfigMap "+o.Name)
			}
		case *corev1.ServiceAccountList:
			for _, o := range l.Items {
				out = append(out, "ServiceAccount "+o.Name)
			}
		}
		return out
	}
	var left []string
	var secrets corev1.SecretList
	var cms corev1.ConfigMapList
	var sas corev1.ServiceAccountList
	for _, l := range []client.ObjectList{&secrets, &cms, &sas} {
		if err := in.c.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		left = append(left, names(l)...)
	}
	slices.Sort(left)
	if want := []string{"ConfigMap kube-ca", "ConfigMap kube-root-ca.crt", "Secret coffer-etcd-client", "ServiceAccount default"}; !slices.Equal(left, want) {
		t.Errorf("namespace %s holds %v after coffer uninstall, want only the test's own %v", ns, left, want)
	}
	for _, kind := range []struct{ group, version, kind string }{
		{"", "v1", "Pod"}, {"", "v1", "Service"}, {"", "v1", "PersistentVolumeClaim"}, {"apps", "v1", "StatefulSet"}, {"apps", "v1", "DaemonSet"},
		{"apps", "v1", "Deployment"}, {"rbac.authorization.k8s.io", "v1", "Role"}, {"rbac.authorization.k8s.io", "v1", "RoleBinding"},
		{"policy", "v1", "PodDisruptionBudget"},
	} {
		l := &unstructured.UnstructuredList{}
		l.SetAPIVersion(strings.TrimPrefix(kind.group+"/"+kind.version, "/"))
		l.SetKind(kind.kind + "List")
		if err := in.c.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, o := range l.Items {
			t.Errorf("%s %s/%s is left after coffer uninstall", kind.kind, ns, o.GetName())
		}
	}
	for _, kind := range []struct{ group, version, kind string }{
		{"rbac.authorization.k8s.io", "v1", "ClusterRole"}, {"rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"},
		{"storage.k8s.io", "v1", "CSIDriver"}, {"admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"},
		{"apiextensions.k8s.io", "v1", "CustomResourceDefinition"},
	} {
		l := &unstructured.UnstructuredList{}
		l.SetAPIVersion(kind.group + "/" + kind.version)
		l.SetKind(kind.kind + "List")
		if err := in.c.Client.List(ctx, l); err != nil {
			t.Fatal(err)
		}
		for _, o := range l.Items {
			n := o.GetName()
			if n == cluster.DiscoveryRoleBinding {
				continue // the harness's own
			}
			if strings.Contains(n, "coffer") || strings.Contains(n, "secrets-store") || strings.Contains(n, "aadpodidentity") {
				t.Errorf("%s %s is left after coffer uninstall", kind.kind, n)
			}
		}
	}
	eventually(t, in.c, "the kubelet to forget the CSI driver", time.Minute, func() bool {
		n, err := cs.StorageV1().CSINodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
		return err == nil && len(n.Spec.Drivers) == 0
	})
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
