package chart

import (
	"bufio"
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/strvals"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// seedValues are seed 001's Terraform `set` names turned into a values
// file (testdata/seed001-values.yaml). The file is checked against the set
// lines, parsed as Helm (and so the Terraform Helm provider) parses --set.
func seedValues(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/seed001-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file map[string]any
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	sets, err := os.ReadFile("testdata/seed001-terraform-set.txt")
	if err != nil {
		t.Fatal(err)
	}
	fromSet := map[string]any{}
	sc := bufio.NewScanner(bytes.NewReader(sets))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := strvals.ParseInto(line, fromSet); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
	}
	// Compare through YAML: --set gives int64 and the file float64 for
	// numbers; neither has a number here, but the round trip keeps the
	// check honest if one is added.
	a, _ := yaml.Marshal(file)
	c, _ := yaml.Marshal(fromSet)
	var x, y map[string]any
	_ = yaml.Unmarshal(a, &x)
	_ = yaml.Unmarshal(c, &y)
	if !reflect.DeepEqual(x, y) {
		t.Fatalf("testdata/seed001-values.yaml is not the set lines:\nfile: %s\nset:  %s", a, c)
	}
	return file
}

// Seed 001's values, written for the Azure provider's chart, do what they
// said there: rotation every minute, Secrets synced, the toleration on the
// driver. (The same values pass the real apiserver's validation in
// TestChartObjectsPassServerValidation.)
func TestChartAzureProviderChartValues(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, merge(required(), seedValues(t)))
	if err != nil {
		t.Fatal(err)
	}
	driver := find(objs, "DaemonSet", "coffer-csi-driver")
	if driver == nil {
		t.Fatal("secrets-store-csi-driver.install=true rendered no driver")
	}
	a := strings.Join(args(t, driver), " ")
	for _, w := range []string{"--enable-secret-rotation", "--rotation-poll-interval=1m"} {
		if !strings.Contains(a, w) {
			t.Errorf("driver args lack %s: %s", w, a)
		}
	}
	tol, _, _ := unstructured.NestedSlice(driver.Object, "spec", "template", "spec", "tolerations")
	if len(tol) != 1 || tol[0].(map[string]any)["key"] != "CriticalAddonsOnly" {
		t.Errorf("driver tolerations: %v", tol)
	}
	role, _ := yaml.Marshal(find(objs, "ClusterRole", "coffer-csi-driver").Object)
	if !bytes.Contains(role, []byte("secrets")) {
		t.Error("syncSecret.enabled did not grant the driver Secrets")
	}

	// Without any of them, the defaults hold (values.yaml leaves the
	// aliased values null; the chart fills them in).
	objs, err = render(t, c, required())
	if err != nil {
		t.Fatal(err)
	}
	a = strings.Join(args(t, find(objs, "DaemonSet", "coffer-csi-driver")), " ")
	if strings.Contains(a, "--enable-secret-rotation") || !strings.Contains(a, "--endpoint=unix:///var/lib/kubelet/plugins/csi-secrets-store/csi.sock") ||
		!strings.Contains(a, "--metrics-addr=:8095") || !strings.Contains(a, "--v=0") {
		t.Errorf("default driver args: %s", a)
	}

	// More Azure names, each onto Coffer's value.
	objs, err = render(t, c, merge(required(), map[string]any{"secrets-store-csi-driver": map[string]any{
		"linux": map[string]any{"kubeletRootDir": "/var/lib/k", "driver": map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "64Mi"}}}},
		// A Terraform set with type = "string" gives strings.
		"enableSecretRotation": "true", "logVerbosity": 3,
		"tokenRequests": []any{map[string]any{"audience": "api://custom"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	driver = find(objs, "DaemonSet", "coffer-csi-driver")
	a = strings.Join(args(t, driver), " ")
	for _, w := range []string{"--enable-secret-rotation", "--rotation-poll-interval=2m", "--endpoint=unix:///var/lib/k/plugins/csi-secrets-store/csi.sock", "--v=3"} {
		if !strings.Contains(a, w) {
			t.Errorf("driver args lack %s: %s", w, a)
		}
	}
	if mem, _, _ := unstructured.NestedString(podContainer(t, driver, "containers", "csi-driver"), "resources", "limits", "memory"); mem != "64Mi" {
		t.Errorf("linux.driver.resources: limits.memory %q", mem)
	}
	aud, _, _ := unstructured.NestedSlice(find(objs, "CSIDriver", "secrets-store.csi.k8s.io").Object, "spec", "tokenRequests")
	if len(aud) != 1 || aud[0].(map[string]any)["audience"] != "api://custom" {
		t.Errorf("CSIDriver tokenRequests: %v", aud)
	}

	// install=false: the user keeps a driver of their own; Coffer's
	// provider still serves it.
	objs, err = render(t, c, merge(required(), map[string]any{"secrets-store-csi-driver": map[string]any{"install": false}}))
	if err != nil {
		t.Fatal(err)
	}
	if find(objs, "DaemonSet", "coffer-csi-driver") != nil || find(objs, "DaemonSet", "coffer-provider") == nil {
		t.Error("secrets-store-csi-driver.install=false: want the provider without the driver")
	}
}

// An Azure name and Coffer's name set to different values are refused,
// naming both; the same value under both is fine.
func TestChartAliasConflicts(t *testing.T) {
	c := load(t)
	up := func(m map[string]any) map[string]any { return map[string]any{"secrets-store-csi-driver": m} }
	for name, tc := range map[string]struct {
		vals map[string]any
		want string
	}{
		"rotation": {merge(up(map[string]any{"enableSecretRotation": true}), map[string]any{"enableSecretRotation": false}),
			"secrets-store-csi-driver.enableSecretRotation (true, the Azure provider chart's name) and enableSecretRotation (false) disagree: set only one of them"},
		"poll interval": {merge(up(map[string]any{"rotationPollInterval": "1m"}), map[string]any{"rotationPollInterval": "2m"}),
			`secrets-store-csi-driver.rotationPollInterval ("1m", the Azure provider chart's name) and rotationPollInterval ("2m") disagree`},
		"an explicit default still conflicts": {merge(up(map[string]any{"syncSecret": map[string]any{"enabled": true}}), map[string]any{"syncSecret": map[string]any{"enabled": false}}),
			"secrets-store-csi-driver.syncSecret.enabled (true, the Azure provider chart's name) and syncSecret.enabled (false) disagree"},
		"tolerations": {merge(up(map[string]any{"linux": map[string]any{"tolerations": []any{map[string]any{"operator": "Exists"}}}}),
			map[string]any{"linux": map[string]any{"tolerations": []any{map[string]any{"key": "a", "operator": "Exists"}}}}),
			"secrets-store-csi-driver.linux.tolerations"},
		"two Azure names for the driver": {up(map[string]any{"install": false, "linux": map[string]any{"enabled": true}}),
			"secrets-store-csi-driver.linux.enabled (true, the Azure provider chart's name) and secrets-store-csi-driver.install (false) disagree"},
		"not a switch":  {up(map[string]any{"enableSecretRotation": "yes"}), `secrets-store-csi-driver.enableSecretRotation is "yes": use true or false`},
		"windows":       {up(map[string]any{"windows": map[string]any{"enabled": true}}), "Coffer's chart has no Windows node components"},
		"Azure windows": {map[string]any{"windows": map[string]any{"enabled": "true"}}, "Coffer's chart has no Windows node components"},
		"the same value twice": {merge(up(map[string]any{"enableSecretRotation": true, "logVerbosity": 2}),
			map[string]any{"enableSecretRotation": true, "logVerbosity": 2}), ""},
		"windows off": {up(map[string]any{"windows": map[string]any{"enabled": false}}), ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, c, merge(required(), tc.vals))
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

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// images are every container's and init container's image.
func images(objs []*unstructured.Unstructured) map[string]bool {
	out := map[string]bool{}
	for _, o := range objs {
		for _, field := range []string{"containers", "initContainers"} {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				out[c.(map[string]any)["image"].(string)] = true
			}
		}
	}
	return out
}

// image.digest pins every image; a value that is not a digest is refused.
func TestChartImageDigest(t *testing.T) {
	c := load(t)
	all := func(vals map[string]any) map[string]any {
		return merge(merge(required(), vals), map[string]any{"syncController": map[string]any{"enabled": true, "namespaces": []any{"a"}}})
	}
	objs, err := render(t, c, all(map[string]any{"image": map[string]any{"repository": "registry.example/coffer", "tag": "v9", "digest": digest}}))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"registry.example/coffer@" + digest: true}
	if got := images(objs); !reflect.DeepEqual(got, want) {
		t.Errorf("images %v, want only %v", got, want)
	}
	objs, err = render(t, c, all(map[string]any{"image": map[string]any{"repository": "registry.example/coffer", "tag": "v9"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := images(objs); !reflect.DeepEqual(got, map[string]bool{"registry.example/coffer:v9": true}) {
		t.Errorf("images without a digest: %v", got)
	}
	for _, bad := range []string{
		// Seed 003's example digest, which lost three of its 64 digits.
		"sha256:3317b3802ab12578b11e5af6be8901738b9790068044f45d6e2a277168085",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
		"v1.2.3",
	} {
		_, err := render(t, c, all(map[string]any{"image": map[string]any{"digest": bad}}))
		if err == nil || !strings.Contains(err.Error(), "is not an image digest: want sha256: and 64 lowercase hex digits") {
			t.Errorf("digest %q: got %v", bad, err)
		}
	}
}

// Every workload is pinned to Linux nodes, its own nodeSelector added to
// that: the image is built for Linux only, and the node components need
// Linux mounts and network namespaces (README: "Windows nodes"). A
// selector of the user's that names kubernetes.io/os too neither writes
// the key twice nor moves a workload off Linux.
func TestChartLinuxNodesOnly(t *testing.T) {
	c := load(t)
	objs, err := render(t, c, merge(required(), map[string]any{
		"syncController": map[string]any{"enabled": true, "namespaces": []any{"a"}, "nodeSelector": map[string]any{"pool": "sync"}},
		"server":         map[string]any{"nodeSelector": map[string]any{"pool": "vault", "kubernetes.io/os": "linux"}},
		"linux":          map[string]any{"nodeSelector": map[string]any{"kubernetes.io/os": "windows"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment", "StatefulSet", "DaemonSet":
		default:
			continue
		}
		n++
		sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "spec", "nodeSelector")
		if sel["kubernetes.io/os"] != "linux" {
			t.Errorf("%s %s: nodeSelector %v", o.GetKind(), o.GetName(), sel)
		}
		if name := o.GetName(); (name == "coffer-server" || name == "coffer-sync-controller") && sel["pool"] == "" {
			t.Errorf("%s lost its own nodeSelector: %v", name, sel)
		}
	}
	if n != 6 {
		t.Errorf("%d workloads, want 6", n)
	}
}
