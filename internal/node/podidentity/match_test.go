package podidentity

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func identity(ns, name, client string) AzureIdentity {
	return AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: AzureIdentitySpec{ClientID: client}}
}

func binding(ns, name, id, selector string, weight int, wide bool) AzureIdentityBinding {
	b := AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: AzureIdentityBindingSpec{AzureIdentity: id, Selector: selector, Weight: weight}}
	if wide {
		b.Annotations = map[string]string{ClusterWideAnnotation: "true"}
	}
	return b
}

func pod(ns string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p", Labels: labels}}
}

func TestAssignments(t *testing.T) {
	snap := Snapshot{
		Identities: []AzureIdentity{identity("a", "web", "c-web"), identity("a", "batch", "c-batch"), identity("b", "web", "c-b-web"), identity("ops", "shared", "c-shared")},
		Bindings: []AzureIdentityBinding{
			binding("a", "web", "web", "web", 0, false),
			binding("a", "batch", "batch", "web", 5, false), // higher weight: first
			binding("a", "dangling", "missing", "dangling", 0, false),
			binding("b", "web", "web", "b-web", 0, false),
			binding("ops", "shared", "shared", "shared", 0, true),
			binding("ops", "private", "shared", "private", 0, false),
		},
	}
	cases := map[string]struct {
		pod    *corev1.Pod
		policy Policy
		want   []string
	}{
		"no label":                          {pod("a", nil), Policy{}, nil},
		"empty label":                       {pod("a", map[string]string{BindingLabel: ""}), Policy{}, nil},
		"two bindings, by weight":           {pod("a", map[string]string{BindingLabel: "web"}), Policy{}, []string{"a/batch", "a/web"}},
		"same label, other namespace":       {pod("b", map[string]string{BindingLabel: "web"}), Policy{}, nil},
		"own namespace's binding":           {pod("b", map[string]string{BindingLabel: "b-web"}), Policy{}, []string{"b/web"}},
		"binding to a missing identity":     {pod("a", map[string]string{BindingLabel: "dangling"}), Policy{}, nil},
		"cluster-wide without the policy":   {pod("a", map[string]string{BindingLabel: "shared"}), Policy{}, nil},
		"cluster-wide with the policy":      {pod("a", map[string]string{BindingLabel: "shared"}), Policy{AllowClusterWide: true}, []string{"ops/shared"}},
		"policy alone opens nothing":        {pod("a", map[string]string{BindingLabel: "private"}), Policy{AllowClusterWide: true}, nil},
		"cluster-wide in its own namespace": {pod("ops", map[string]string{BindingLabel: "shared"}), Policy{}, []string{"ops/shared"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, a := range snap.Assignments(c.pod, c.policy) {
				got = append(got, a.Key())
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestExcepted(t *testing.T) {
	snap := Snapshot{Exceptions: []AzurePodIdentityException{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "dns"}, Spec: AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "dns", "tier": "infra"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "empty"}},
	}}
	cases := map[string]struct {
		pod  *corev1.Pod
		want bool
	}{
		"all labels":          {pod("kube-system", map[string]string{"app": "dns", "tier": "infra", "x": "y"}), true},
		"some labels":         {pod("kube-system", map[string]string{"app": "dns"}), false},
		"other namespace":     {pod("default", map[string]string{"app": "dns", "tier": "infra"}), false},
		"no labels, no match": {pod("kube-system", nil), false},
	}
	for name, c := range cases {
		if got := snap.Excepted(c.pod); got != c.want {
			t.Errorf("%s: got %v", name, got)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := map[string]struct {
		spec AzureIdentitySpec
		want string
	}{
		"user-assigned by client id":   {AzureIdentitySpec{ClientID: "c"}, ""},
		"user-assigned by resource id": {AzureIdentitySpec{ResourceID: "/subscriptions/s"}, ""},
		"user-assigned with nothing":   {AzureIdentitySpec{}, "needs clientID or resourceID"},
		"service principal":            {AzureIdentitySpec{Type: ServicePrincipal, ClientID: "c", TenantID: "t", ClientPassword: corev1.SecretReference{Name: "s"}}, ""},
		"service principal no secret":  {AzureIdentitySpec{Type: ServicePrincipal, ClientID: "c", TenantID: "t"}, "needs clientID, tenantID and clientPassword"},
		"certificate no tenant":        {AzureIdentitySpec{Type: ServicePrincipalCertificate, ClientID: "c", ClientPassword: corev1.SecretReference{Name: "s"}}, "needs clientID, tenantID"},
		"unknown type":                 {AzureIdentitySpec{Type: 7, ClientID: "c"}, "has type 7"},
	}
	for name, c := range cases {
		id := AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "x"}, Spec: c.spec}
		err := id.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// AAD Pod Identity's readers matched field names without regard to case,
// and its users rely on it.
func TestFromUnstructuredIgnoresCase(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
		"metadata": map[string]any{"name": "x", "namespace": "a"},
		"spec":     map[string]any{"type": int64(0), "ResourceID": "/subscriptions/s", "ClientID": "c"},
	}}
	var id AzureIdentity
	if err := FromUnstructured(u, &id); err != nil {
		t.Fatal(err)
	}
	if id.Spec.ResourceID != "/subscriptions/s" || id.Spec.ClientID != "c" || id.Namespace != "a" {
		t.Fatalf("%+v", id)
	}
}
