package flexvol

import (
	"bytes"
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

// Every converted manifest is accepted by a real kube-apiserver (server
// dry-run, strict field validation, the SecretProviderClass CRD
// installed), so `kubectl apply -f` of the output works as it is.
func TestOutputPassesServerValidation(t *testing.T) {
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{testpath.Repo(t, "deploy/crds")}})
	ctx := context.Background()
	for _, ns := range []string{"team-a", "data"} {
		if err := kube.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"sp-pod", "podidentity-pod", "deployment", "vm-identity"} {
		t.Run(name, func(t *testing.T) {
			out, _ := convert(t, name)
			r := utilyaml.NewYAMLReader(bufioReader(out))
			n := 0
			for {
				doc, err := r.Read()
				if err != nil {
					break
				}
				if len(bytes.TrimSpace(stripComments(doc))) == 0 {
					continue
				}
				u := &unstructured.Unstructured{}
				if err := yaml.Unmarshal(doc, &u.Object); err != nil {
					t.Fatal(err)
				}
				if u.GetNamespace() == "" {
					u.SetNamespace("default")
				}
				if err := kube.Client.Create(ctx, u, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
					t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no objects")
			}
		})
	}
}
