// Package chart tests the Helm chart deploy/helm/coffer: rendered with
// Helm's own Go library, every object is validated by a real
// kube-apiserver (server-side dry-run, with the chart's CRDs installed),
// and deploy/manifests is checked to be the chart's output.
package chart

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	cofferimages "github.com/cofferhq/coffer/internal/cli/localcluster/images"
	"github.com/cofferhq/coffer/internal/testing/chartrender"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

var update = flag.Bool("update", false, "rewrite deploy/manifests from the chart")

const namespace = "coffer-system"

func repoFile(t testing.TB, rel string) string { return testpath.Repo(t, rel) }

func load(t testing.TB) *chartv2.Chart {
	t.Helper()
	c, err := chartrender.Load(repoFile(t, "deploy/helm/coffer"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// required are the values a user must give.
func required() map[string]any {
	return map[string]any{
		"tenantID": "11111111-2222-3333-4444-555555555555",
		"server":   map[string]any{"dnsSuffix": "vault.example.com"},
	}
}

func render(t testing.TB, c *chartv2.Chart, vals map[string]any) ([]*unstructured.Unstructured, error) {
	t.Helper()
	return chartrender.Render(c, "coffer", namespace, vals)
}

func merge(dst, src map[string]any) map[string]any { return chartrender.Merge(dst, src) }

func kinds(objs []*unstructured.Unstructured) map[string]int {
	m := map[string]int{}
	for _, o := range objs {
		m[o.GetKind()]++
	}
	return m
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// args returns a container's args.
func args(t testing.TB, o *unstructured.Unstructured) []string {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		t.Fatalf("%s %s has no containers", o.GetKind(), o.GetName())
	}
	var out []string
	for _, a := range cs[0].(map[string]any)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

// etcdValues are an installation on a shared etcd store, with several
// replicas.
func etcdValues(replicas int) map[string]any {
	return merge(required(), map[string]any{"server": map[string]any{
		"replicas": replicas,
		"storage": map[string]any{"type": "etcd", "etcd": map[string]any{
			"endpoints": []any{"https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379", "https://etcd-2.etcd:2379"},
			"prefix":    "/team-a/coffer/",
			"tls":       map[string]any{"secretName": "coffer-etcd-client"},
		}},
	}})
}

// Every object the chart renders is valid for a real kube-apiserver, with
// strict field validation (an unknown or duplicated field is an error,
// not a warning), on the embedded store and on etcd.
func TestChartObjectsPassServerValidation(t *testing.T) {
	c := load(t)
	cases := map[string]struct {
		vals map[string]any
		want map[string]int
	}{
		"defaults (bolt)": {required(), map[string]int{"CSIDriver": 1, "DaemonSet": 3, "Deployment": 2, "Service": 2, "MutatingWebhookConfiguration": 1,
			"PersistentVolumeClaim": 1, "ServiceAccount": 4, "ClusterRole": 4, "ClusterRoleBinding": 3, "Role": 2, "RoleBinding": 2}},
		"etcd, three replicas": {etcdValues(3), map[string]int{"CSIDriver": 1, "DaemonSet": 3, "Deployment": 1, "StatefulSet": 1, "PodDisruptionBudget": 1,
			"Service": 2, "MutatingWebhookConfiguration": 1, "PersistentVolumeClaim": 0, "ServiceAccount": 4, "ClusterRole": 4, "ClusterRoleBinding": 3, "Role": 2, "RoleBinding": 2}},
		"etcd, hard anti-affinity, no persistence, no status listener": {merge(etcdValues(2), map[string]any{"server": map[string]any{
			"podAntiAffinity": "hard", "persistence": map[string]any{"enabled": false}, "metricsAddr": "",
			"podDisruptionBudget": map[string]any{"minAvailable": 1}}}), nil},
		// Seed 001's values for the Azure provider's chart (aliases_test.go).
		"the Azure provider chart's values": {merge(required(), seedValues(t)), map[string]int{"DaemonSet": 3}},
		"pinned by digest":                  {merge(required(), map[string]any{"image": map[string]any{"digest": digest}}), nil},
	}
	if len(c.CRDObjects()) != 7 {
		t.Errorf("the chart has %d CRDs, want 7", len(c.CRDObjects()))
	}
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/helm/coffer/crds")}})
	ctx := context.Background()
	if err := kube.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		t.Fatal(err)
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			objs, err := render(t, c, tc.vals)
			if err != nil {
				t.Fatal(err)
			}
			got := kinds(objs)
			for k, n := range tc.want {
				if got[k] != n {
					t.Errorf("%d %s, want %d (all: %v)", got[k], k, n, got)
				}
			}
			for _, o := range objs {
				if err := kube.Client.Create(ctx, o.DeepCopy(), client.DryRunAll, client.FieldValidation("Strict")); err != nil {
					t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
				}
			}
		})
	}
}

func TestChartRequiredValuesAndLimits(t *testing.T) {
	c := load(t)
	cases := map[string]struct {
		vals map[string]any
		want string
	}{
		"no dnsSuffix": {map[string]any{"tenantID": "t"}, "server.dnsSuffix is required"},
		"no tenantID":  {map[string]any{"server": map[string]any{"dnsSuffix": "v.example.com"}}, "tenantID is required"},
		"two replicas on bolt": {merge(required(), map[string]any{"server": map[string]any{"replicas": 2}}),
			"server.replicas is 2, but server.storage.type bolt (the embedded store) has one writer: use 1 replica, or server.storage.type etcd for several"},
		"an unknown engine": {merge(required(), map[string]any{"server": map[string]any{"storage": map[string]any{"type": "consul"}}}), `server.storage.type "consul" is not an engine`},
		"etcd without endpoints": {merge(required(), map[string]any{"server": map[string]any{"storage": map[string]any{"type": "etcd"}}}),
			"server.storage.etcd.endpoints is required with server.storage.type etcd"},
		"an unknown anti-affinity": {merge(etcdValues(2), map[string]any{"server": map[string]any{"podAntiAffinity": "sometimes"}}), `server.podAntiAffinity "sometimes": use soft, hard or none`},
		"three replicas on etcd":   {etcdValues(3), ""},
		"no agent, no tenant":      {map[string]any{"server": map[string]any{"dnsSuffix": "v.example.com"}, "nodeAgent": map[string]any{"enabled": false}, "webhook": map[string]any{"enabled": false}}, ""},
		"sync controller without namespaces": {merge(required(), map[string]any{"syncController": map[string]any{"enabled": true}}),
			"syncController.namespaces is required unless syncController.clusterWide=true"},
		"a quantity for a byte count": {merge(etcdValues(3), map[string]any{"server": map[string]any{"storage": map[string]any{"etcd": map[string]any{"viewBytes": "64Mi"}}}}),
			`server.storage.etcd.viewBytes is "64Mi": give a whole number`},
		"a fraction":            {merge(required(), map[string]any{"maxCallRecvMsgSize": 4.5}), "maxCallRecvMsgSize is 4.5: give a whole number"},
		"a negative number":     {merge(required(), map[string]any{"maxCallRecvMsgSize": -1}), "maxCallRecvMsgSize is -1: give a whole number"},
		"replicas in words":     {merge(required(), map[string]any{"server": map[string]any{"replicas": "two"}}), `server.replicas is "two": give a whole number`},
		"a port with a typo":    {merge(required(), map[string]any{"linux": map[string]any{"metricsAddr": ":80a5"}}), `linux.metricsAddr's port is "80a5"`},
		"an octal-looking port": {merge(required(), map[string]any{"provider": map[string]any{"metricsAddr": ":0809"}}), `provider.metricsAddr's port is "0809"`},
		"sync controller, namespaces and cluster-wide": {merge(required(), map[string]any{"syncController": map[string]any{"enabled": true, "clusterWide": true, "namespaces": []any{"a"}}}),
			"exclude each other"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, c, tc.vals)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
		})
	}
}

// Values with upstream names change what they say.
func TestChartValues(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, merge(required(), map[string]any{
		"enableSecretRotation": true, "rotationPollInterval": "30s", "syncSecret": map[string]any{"enabled": true},
		"linux":     map[string]any{"kubeletRootDir": "/var/lib/k", "tolerations": []any{map[string]any{"operator": "Exists"}}},
		"server":    map[string]any{"persistence": map[string]any{"enabled": false}},
		"nodeAgent": map[string]any{"enabled": false},
		"provider":  map[string]any{"name": "coffer"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	driver := find(objs, "DaemonSet", "coffer-csi-driver")
	a := strings.Join(args(t, driver), " ")
	for _, w := range []string{"--enable-secret-rotation", "--rotation-poll-interval=30s", "--endpoint=unix:///var/lib/k/plugins/csi-secrets-store/csi.sock", "--registration-dir=/var/lib/k/plugins_registry"} {
		if !strings.Contains(a, w) {
			t.Errorf("driver args lack %s: %s", w, a)
		}
	}
	if !strings.Contains(a, "--max-call-recv-msg-size=4194304") {
		t.Errorf("a number must render as an integer, not in float notation: %s", a)
	}
	if tol, _, _ := unstructured.NestedSlice(driver.Object, "spec", "template", "spec", "tolerations"); len(tol) != 1 {
		t.Errorf("linux.tolerations: %v", tol)
	}
	role, _ := yaml.Marshal(find(objs, "ClusterRole", "coffer-csi-driver").Object)
	if !bytes.Contains(role, []byte("secrets")) {
		t.Error("syncSecret.enabled did not grant the driver Secrets")
	}
	if find(objs, "DaemonSet", "coffer-node-agent") != nil {
		t.Error("nodeAgent.enabled=false still renders the node agent")
	}
	pa := strings.Join(args(t, find(objs, "DaemonSet", "coffer-provider")), " ")
	if !strings.Contains(pa, "--node-agent-socket= ") && !strings.HasSuffix(pa, "--node-agent-socket=") || !strings.Contains(pa, "/coffer.sock") {
		t.Errorf("provider args: %s", pa)
	}
	if find(objs, "PersistentVolumeClaim", "coffer-server-data") != nil {
		t.Error("persistence.enabled=false still renders a claim")
	}
}

// deploy/manifests is the chart rendered with the values in
// deploy/manifests/values.yaml, and the chart's CRDs are deploy/crds.
func TestManifestsAreTheChartsOutput(t *testing.T) {
	c := load(t)
	vb, err := os.ReadFile(repoFile(t, "deploy/manifests/values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(vb, &vals); err != nil {
		t.Fatal(err)
	}
	objs, err := render(t, c, vals)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("# Generated from deploy/helm/coffer with deploy/manifests/values.yaml by\n# `go test ./test/chart -run Manifests -update`. Do not edit.\n")
	for _, o := range objs {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	path := repoFile(t, "deploy/manifests/coffer.yaml")
	if *update {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(have, b.Bytes()) {
		t.Fatalf("deploy/manifests/coffer.yaml is not the chart's output (%v): run go test ./test/chart -run Manifests -update", err)
	}
	// The chart ships the CRDs the tests install.
	crds, _ := filepath.Glob(repoFile(t, "deploy/crds/*.yaml"))
	sort.Strings(crds)
	for _, f := range crds {
		a, _ := os.ReadFile(f)
		b, err := os.ReadFile(repoFile(t, "deploy/helm/coffer/crds/"+filepath.Base(f)))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("deploy/helm/coffer/crds/%s differs from deploy/crds (scripts/gen-crds.sh copies them)", filepath.Base(f))
		}
	}
}

// podContainer returns the container named name of a workload's pod
// template, among its containers or its init containers.
func podContainer(t testing.TB, o *unstructured.Unstructured, field, name string) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
	for _, c := range cs {
		if m := c.(map[string]any); m["name"] == name {
			return m
		}
	}
	t.Fatalf("%s %s has no %s %q", o.GetKind(), o.GetName(), field, name)
	return nil
}

func containerArgs(c map[string]any) []string {
	var out []string
	for _, a := range c["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

// mounts maps a container's volume mounts' paths to their volumes.
func mounts(c map[string]any) map[string]string {
	out := map[string]string{}
	ms, _ := c["volumeMounts"].([]any)
	for _, m := range ms {
		mm := m.(map[string]any)
		out[mm["mountPath"].(string)] = mm["name"].(string)
	}
	return out
}

func volumeNamed(t testing.TB, o *unstructured.Unstructured, name string) map[string]any {
	t.Helper()
	vs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
	for _, v := range vs {
		if m := v.(map[string]any); m["name"] == name {
			return m
		}
	}
	return nil
}

// The server on etcd: every replica and its init container open the
// shared store with the TLS Secret's files, replicas are a StatefulSet with
// a claim each for the audit log, spread over nodes, covered by a
// disruption budget, and ready only while their store answers.
func TestChartServerOnEtcd(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, etcdValues(3))
	if err != nil {
		t.Fatal(err)
	}
	if find(objs, "Deployment", "coffer-server") != nil {
		t.Fatal("a server Deployment is rendered for etcd")
	}
	sts := find(objs, "StatefulSet", "coffer-server")
	if sts == nil {
		t.Fatal("no server StatefulSet")
	}
	if n := sts.Object["spec"].(map[string]any)["replicas"]; fmt.Sprint(n) != "3" {
		t.Errorf("replicas %v, want 3", n)
	}
	if p, _, _ := unstructured.NestedString(sts.Object, "spec", "podManagementPolicy"); p != "Parallel" {
		t.Errorf("podManagementPolicy %q", p)
	}
	storage := []string{"--storage=etcd", "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379,https://etcd-2.etcd:2379",
		"--etcd-prefix=/team-a/coffer/", "--etcd-ca-file=/etc/coffer/etcd/ca.crt", "--etcd-cert-file=/etc/coffer/etcd/tls.crt",
		"--etcd-key-file=/etc/coffer/etcd/tls.key"}
	for _, name := range []string{"initContainers/init", "containers/server"} {
		field, cname, _ := strings.Cut(name, "/")
		ctr := podContainer(t, sts, field, cname)
		a := containerArgs(ctr)
		for _, w := range storage {
			if !slices.Contains(a, w) {
				t.Errorf("%s lacks %s: %v", name, w, a)
			}
		}
		if m := mounts(ctr); m["/etc/coffer/etcd"] != "etcd-tls" {
			t.Errorf("%s does not mount the etcd TLS Secret: %v", name, m)
		}
	}
	if a := containerArgs(podContainer(t, sts, "initContainers", "init")); slices.Contains(a, "--data-dir=/data") || !slices.Contains(a, "--skip-if-initialised") {
		t.Errorf("init on etcd: %v", a)
	}
	if a := strings.Join(containerArgs(podContainer(t, sts, "containers", "server")), " "); strings.Contains(a, "--etcd-view-bytes") || strings.Contains(a, "--etcd-max-") {
		t.Errorf("the engine's bounds are given although no value sets them: %s", a)
	}
	tuned, err := render(t, c, merge(etcdValues(3), map[string]any{"server": map[string]any{"storage": map[string]any{"etcd": map[string]any{
		"viewBytes": 268435456, "maxTxnOps": 1024, "maxRequestBytes": 10485760}}}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initContainers/init", "containers/server"} {
		field, cname, _ := strings.Cut(name, "/")
		a := containerArgs(podContainer(t, find(tuned, "StatefulSet", "coffer-server"), field, cname))
		for _, w := range []string{"--etcd-view-bytes=268435456", "--etcd-max-txn-ops=1024", "--etcd-max-request-bytes=10485760"} {
			if !slices.Contains(a, w) {
				t.Errorf("%s lacks %s: %v", name, w, a)
			}
		}
	}
	if a := containerArgs(podContainer(t, sts, "containers", "server")); !slices.Contains(a, "--data-dir=/data") || !slices.Contains(a, "--metrics-addr=:9464") {
		t.Errorf("the server keeps its audit log in /data and serves its status: %v", a)
	}
	tlsVol := volumeNamed(t, sts, "etcd-tls")
	if name, _, _ := unstructured.NestedString(tlsVol, "secret", "secretName"); name != "coffer-etcd-client" {
		t.Errorf("etcd-tls volume: %v", tlsVol)
	}
	if items, _, _ := unstructured.NestedSlice(tlsVol, "secret", "items"); len(items) != 3 {
		t.Errorf("etcd-tls items: %v", items)
	}
	// The audit log: a claim per replica, not the one claim of bolt.
	if volumeNamed(t, sts, "data") != nil {
		t.Error("the StatefulSet's pods have a data volume besides their claim")
	}
	claims, _, _ := unstructured.NestedSlice(sts.Object, "spec", "volumeClaimTemplates")
	if len(claims) != 1 || claims[0].(map[string]any)["metadata"].(map[string]any)["name"] != "data" {
		t.Errorf("volumeClaimTemplates: %v", claims)
	}
	if find(objs, "PersistentVolumeClaim", "coffer-server-data") != nil {
		t.Error("the shared claim of bolt is rendered for etcd")
	}

	pdb := find(objs, "PodDisruptionBudget", "coffer-server")
	if pdb == nil {
		t.Fatal("no PodDisruptionBudget with three replicas")
	}
	if n := pdb.Object["spec"].(map[string]any)["maxUnavailable"]; fmt.Sprint(n) != "1" {
		t.Errorf("PodDisruptionBudget: %v", pdb.Object["spec"])
	}
	sel, _, _ := unstructured.NestedStringMap(pdb.Object, "spec", "selector", "matchLabels")
	podLabels, _, _ := unstructured.NestedStringMap(sts.Object, "spec", "template", "metadata", "labels")
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("the budget selects %s=%s; the pods have %v", k, v, podLabels)
		}
	}
	soft, _, _ := unstructured.NestedSlice(sts.Object, "spec", "template", "spec", "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution")
	if len(soft) != 1 {
		t.Fatalf("no preferred anti-affinity: %v", sts.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["affinity"])
	}
	if key, _, _ := unstructured.NestedString(soft[0].(map[string]any), "podAffinityTerm", "topologyKey"); key != "kubernetes.io/hostname" {
		t.Errorf("topologyKey %q", key)
	}
	if sel, _, _ := unstructured.NestedStringMap(soft[0].(map[string]any), "podAffinityTerm", "labelSelector", "matchLabels"); sel["app.kubernetes.io/component"] != "server" || sel["app.kubernetes.io/instance"] != "coffer" {
		t.Errorf("the anti-affinity selects %v", sel)
	}

	server := podContainer(t, sts, "containers", "server")
	ready, _, _ := unstructured.NestedMap(server, "readinessProbe", "httpGet")
	if ready["path"] != "/healthz" || fmt.Sprint(ready["port"]) != "9464" || ready["scheme"] != nil {
		t.Errorf("readiness: %v", ready)
	}
	live, _, _ := unstructured.NestedMap(server, "livenessProbe", "httpGet")
	if live["path"] != "/healthz" || live["port"] != "https" || live["scheme"] != "HTTPS" {
		t.Errorf("liveness: %v", live)
	}
}

// What the etcd installation's values change, and what the bolt one keeps.
func TestChartServerVariants(t *testing.T) {
	c := load(t)
	affinity := func(o *unstructured.Unstructured) map[string]any {
		a, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec", "affinity")
		return a
	}
	t.Run("bolt: one Deployment, recreated, on its claim, unspread", func(t *testing.T) {
		objs, err := render(t, c, required())
		if err != nil {
			t.Fatal(err)
		}
		d := find(objs, "Deployment", "coffer-server")
		if d == nil || find(objs, "StatefulSet", "coffer-server") != nil || find(objs, "PodDisruptionBudget", "coffer-server") != nil {
			t.Fatalf("bolt renders %v", kinds(objs))
		}
		if s, _, _ := unstructured.NestedString(d.Object, "spec", "strategy", "type"); s != "Recreate" {
			t.Errorf("strategy %q", s)
		}
		if claim, _, _ := unstructured.NestedString(volumeNamed(t, d, "data"), "persistentVolumeClaim", "claimName"); claim != "coffer-server-data" {
			t.Errorf("data volume: %v", volumeNamed(t, d, "data"))
		}
		if a := affinity(d); a != nil {
			t.Errorf("one replica has an affinity: %v", a)
		}
		init := podContainer(t, d, "initContainers", "init")
		if a := containerArgs(init); !slices.Contains(a, "--storage=bolt") || !slices.Contains(a, "--data-dir=/data") || mounts(init)["/data"] != "data" {
			t.Errorf("init on bolt: %v %v", a, mounts(init))
		}
	})
	t.Run("etcd: hard anti-affinity, minAvailable, no status listener, no TLS, no persistence", func(t *testing.T) {
		vals := etcdValues(2)
		merge(vals, map[string]any{"server": map[string]any{"podAntiAffinity": "hard", "podAntiAffinityTopologyKey": "topology.kubernetes.io/zone",
			"podDisruptionBudget": map[string]any{"minAvailable": 1}, "metricsAddr": "", "persistence": map[string]any{"enabled": false},
			"storage": map[string]any{"etcd": map[string]any{"tls": map[string]any{"secretName": ""}}}}})
		objs, err := render(t, c, vals)
		if err != nil {
			t.Fatal(err)
		}
		sts := find(objs, "StatefulSet", "coffer-server")
		hard, _, _ := unstructured.NestedSlice(affinity(sts), "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution")
		if len(hard) != 1 || hard[0].(map[string]any)["topologyKey"] != "topology.kubernetes.io/zone" {
			t.Errorf("required anti-affinity: %v", affinity(sts))
		}
		pdb := find(objs, "PodDisruptionBudget", "coffer-server")
		if spec, _ := pdb.Object["spec"].(map[string]any); fmt.Sprint(spec["minAvailable"]) != "1" || spec["maxUnavailable"] != nil {
			t.Errorf("PodDisruptionBudget: %v", spec)
		}
		server := podContainer(t, sts, "containers", "server")
		ready, _, _ := unstructured.NestedMap(server, "readinessProbe", "httpGet")
		if ready["path"] != "/readyz" || ready["port"] != "https" || ready["scheme"] != "HTTPS" {
			t.Errorf("readiness without the status listener: %v", ready)
		}
		a := strings.Join(containerArgs(server), " ")
		if strings.Contains(a, "--etcd-ca-file") || strings.Contains(a, "--etcd-cert-file") || volumeNamed(t, sts, "etcd-tls") != nil {
			t.Errorf("TLS flags or volume without a TLS Secret: %s", a)
		}
		if v := volumeNamed(t, sts, "data"); v == nil || v["emptyDir"] == nil {
			t.Errorf("data volume without persistence: %v", v)
		}
		if _, ok, _ := unstructured.NestedSlice(sts.Object, "spec", "volumeClaimTemplates"); ok {
			t.Error("claims without persistence")
		}
	})
	t.Run("etcd: one replica, no budget, no spreading; an affinity of one's own", func(t *testing.T) {
		objs, err := render(t, c, etcdValues(1))
		if err != nil {
			t.Fatal(err)
		}
		if find(objs, "PodDisruptionBudget", "coffer-server") != nil || affinity(find(objs, "StatefulSet", "coffer-server")) != nil {
			t.Error("one replica has a budget or an anti-affinity")
		}
		own := map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
			"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "pool", "operator": "In", "values": []any{"vault"}}}}}}}}
		objs, err = render(t, c, merge(etcdValues(2), map[string]any{"server": map[string]any{"affinity": own}}))
		if err != nil {
			t.Fatal(err)
		}
		if a := affinity(find(objs, "StatefulSet", "coffer-server")); a["podAntiAffinity"] != nil || a["nodeAffinity"] == nil {
			t.Errorf("server.affinity does not replace the spreading: %v", a)
		}
	})
}

// The chart README's values table names every value in values.yaml, and
// nothing else.
func TestReadmeNamesEveryValue(t *testing.T) {
	vb, err := os.ReadFile(repoFile(t, "deploy/helm/coffer/values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(vb, &vals); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
				walk(prefix+k+".", sub)
				continue
			}
			want[prefix+k] = true
		}
	}
	walk("", vals)

	readme, err := os.ReadFile(repoFile(t, "deploy/helm/coffer/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "\n## Values\n")
	if !ok {
		t.Fatal("the chart README has no Values section")
	}
	named := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		// A row names full keys, or keys beside the previous one: `a.b.c`, `d`.
		parent := ""
		for _, k := range strings.Split(strings.Split(line, "|")[1], ",") {
			k = strings.Trim(strings.TrimSpace(k), "`")
			if i := strings.LastIndex(k, "."); i >= 0 {
				parent = k[:i+1]
			} else {
				k = parent + k
			}
			named[k] = true
		}
	}
	for k := range want {
		if !named[k] {
			t.Errorf("the README's values table lacks %s", k)
		}
	}
	for k := range named {
		if !want[k] {
			t.Errorf("the README's values table names %s, which values.yaml has not", k)
		}
	}
}

// The sync controller's objects pass the real apiserver's validation, and
// its RBAC follows the namespaces it serves: RoleBindings there, or a
// ClusterRoleBinding only when clusterWide is asked for.
func TestChartSyncController(t *testing.T) {
	c := load(t)
	served, err := render(t, c, merge(required(), map[string]any{"syncController": map[string]any{"enabled": true, "namespaces": []any{"team-a", "team-b"}}}))
	if err != nil {
		t.Fatal(err)
	}
	clusterWide, err := render(t, c, merge(required(), map[string]any{"syncController": map[string]any{"enabled": true, "clusterWide": true,
		"tokenRequests": []any{map[string]any{"audience": "a1"}, map[string]any{"audience": "a2"}}}}))
	if err != nil {
		t.Fatal(err)
	}
	base, err := render(t, c, required())
	if err != nil {
		t.Fatal(err)
	}
	added := func(objs []*unstructured.Unstructured) map[string]int {
		got, was := kinds(objs), kinds(base)
		for k, n := range was {
			got[k] -= n
			if got[k] == 0 {
				delete(got, k)
			}
		}
		return got
	}
	for name, tc := range map[string]struct {
		objs []*unstructured.Unstructured
		want map[string]int
	}{
		"namespaces": {served, map[string]int{"ServiceAccount": 1, "ClusterRole": 2, "ClusterRoleBinding": 1, "RoleBinding": 3, "Role": 1, "Deployment": 1,
			"ValidatingAdmissionPolicy": 3, "ValidatingAdmissionPolicyBinding": 3}},
		"cluster-wide": {clusterWide, map[string]int{"ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "RoleBinding": 1, "Role": 1, "Deployment": 1,
			"ValidatingAdmissionPolicy": 3, "ValidatingAdmissionPolicyBinding": 3}},
	} {
		if got := added(tc.objs); !equalCounts(got, tc.want) {
			t.Errorf("%s: the sync controller adds %v, want %v", name, got, tc.want)
		}
	}
	for _, ns := range []string{"team-a", "team-b"} {
		if rb := findIn(served, "RoleBinding", "coffer-sync-controller", ns); rb == nil {
			t.Errorf("no RoleBinding in %s", ns)
		}
	}
	a := strings.Join(args(t, find(served, "Deployment", "coffer-sync-controller")), " ")
	for _, w := range []string{"sync-controller", "--namespaces=team-a,team-b", "--leader-elect", "--leader-election-namespace=coffer-system", "--token-request-audience=api://AzureADTokenExchange", "--token-expiration=600s"} {
		if !strings.Contains(a, w) {
			t.Errorf("args lack %s: %s", w, a)
		}
	}
	if a := strings.Join(args(t, find(clusterWide, "Deployment", "coffer-sync-controller")), " "); !strings.Contains(a, "--cluster-wide") || !strings.Contains(a, "--token-request-audience=a1,a2") || strings.Contains(a, "--namespaces") {
		t.Errorf("cluster-wide args: %s", a)
	}

	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/helm/coffer/crds")}})
	ctx := context.Background()
	for _, ns := range []string{namespace, "team-a", "team-b"} {
		if err := kube.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, objs := range [][]*unstructured.Unstructured{served, clusterWide} {
		for _, o := range objs {
			if err := kube.Client.Create(ctx, o.DeepCopy(), client.DryRunAll); err != nil {
				t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, n := range a {
		if b[k] != n {
			return false
		}
	}
	return true
}

func findIn(objs []*unstructured.Unstructured, kind, name, ns string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name && o.GetNamespace() == ns {
			return o
		}
	}
	return nil
}

// TestChartCommandsAreInTheImage checks that every container of the chart
// runs a binary the coffer image holds (images.CofferVariants, which the
// e2e image and `coffer dev --kubernetes` build), and that each node
// DaemonSet runs the smallest build that has its subcommand.
func TestChartCommandsAreInTheImage(t *testing.T) {
	in := map[string]bool{"/coffer": true}
	for name := range cofferimages.CofferVariants {
		in["/"+name] = true
	}
	objs, err := render(t, load(t), merge(required(), map[string]any{"syncController": map[string]any{"enabled": true, "namespaces": []any{"apps"}}}))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, o := range objs {
		for _, field := range []string{"containers", "initContainers"} {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				m := c.(map[string]any)
				cmd, _ := m["command"].([]any)
				if len(cmd) == 0 {
					continue
				}
				seen++
				if bin, _ := cmd[0].(string); !in[bin] {
					t.Errorf("%s %s container %s runs %v, which the coffer image does not hold (it holds %v)", o.GetKind(), o.GetName(), m["name"], cmd[0], in)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("no container of the chart names a command")
	}
	for ds, want := range map[string]string{"coffer-csi-driver": "/coffer-node", "coffer-node-agent": "/coffer-node", "coffer-provider": "/coffer-provider"} {
		o := find(objs, "DaemonSet", ds)
		if o == nil {
			t.Fatalf("no DaemonSet %s", ds)
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		found := false
		for _, c := range cs {
			cmd, _ := c.(map[string]any)["command"].([]any)
			found = found || len(cmd) > 0 && cmd[0] == want
		}
		if !found {
			t.Errorf("DaemonSet %s does not run %s", ds, want)
		}
	}
}

// A Terraform `set` block passes numbers as strings: they render as the
// numbers they spell, in every place a number goes.
func TestChartNumbersGivenAsStrings(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, merge(etcdValues(3), map[string]any{"maxCallRecvMsgSize": "8388608", "linux": map[string]any{"metricsAddr": ":9095"},
		"server": map[string]any{"replicas": "3", "storage": map[string]any{"etcd": map[string]any{"maxTxnOps": "1024"}}}}))
	if err != nil {
		t.Fatal(err)
	}
	if a := strings.Join(args(t, find(objs, "DaemonSet", "coffer-csi-driver")), " "); !strings.Contains(a, "--max-call-recv-msg-size=8388608") {
		t.Errorf("driver args: %s", a)
	}
	sts := find(objs, "StatefulSet", "coffer-server")
	if a := containerArgs(podContainer(t, sts, "containers", "server")); !slices.Contains(a, "--etcd-max-txn-ops=1024") {
		t.Errorf("server args: %v", a)
	}
	if n := sts.Object["spec"].(map[string]any)["replicas"]; fmt.Sprint(n) != "3" {
		t.Errorf("replicas %v, want 3", n)
	}
	ds, _ := yaml.Marshal(find(objs, "DaemonSet", "coffer-csi-driver").Object)
	if !bytes.Contains(ds, []byte("port: 9095")) {
		t.Errorf("the driver's probe does not use port 9095:\n%s", ds)
	}
}
