// Package chart tests the Helm chart deploy/helm/coffer: rendered with
// Helm's own Go library, every object is validated by a real
// kube-apiserver (server-side dry-run, with the chart's CRDs installed),
// and deploy/manifests is checked to be the chart's output.
package chart

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

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

// Every object the chart renders is valid for a real kube-apiserver.
func TestChartObjectsPassServerValidation(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, required())
	if err != nil {
		t.Fatal(err)
	}
	got := kinds(objs)
	want := map[string]int{"CSIDriver": 1, "DaemonSet": 3, "Deployment": 2, "Service": 2, "MutatingWebhookConfiguration": 1,
		"PersistentVolumeClaim": 1, "ServiceAccount": 4, "ClusterRole": 4, "ClusterRoleBinding": 3, "Role": 2, "RoleBinding": 2}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%d %s, want %d (all: %v)", got[k], k, n, got)
		}
	}
	if len(c.CRDObjects()) != 6 {
		t.Errorf("the chart has %d CRDs, want 6", len(c.CRDObjects()))
	}
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/helm/coffer/crds")}})
	ctx := context.Background()
	if err := kube.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := kube.Client.Create(ctx, o.DeepCopy(), client.DryRunAll); err != nil {
			t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
}

func TestChartRequiredValuesAndLimits(t *testing.T) {
	c := load(t)
	cases := map[string]struct {
		vals map[string]any
		want string
	}{
		"no dnsSuffix":        {map[string]any{"tenantID": "t"}, "server.dnsSuffix is required"},
		"no tenantID":         {map[string]any{"server": map[string]any{"dnsSuffix": "v.example.com"}}, "tenantID is required"},
		"two replicas":        {merge(required(), map[string]any{"server": map[string]any{"replicas": 2}}), "server.replicas must be 1"},
		"no agent, no tenant": {map[string]any{"server": map[string]any{"dnsSuffix": "v.example.com"}, "nodeAgent": map[string]any{"enabled": false}, "webhook": map[string]any{"enabled": false}}, ""},
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
