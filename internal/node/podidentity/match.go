package podidentity

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Policy is the cluster operator's part of the matching rules.
type Policy struct {
	// AllowClusterWide honours bindings annotated coffer.dev/cluster-wide.
	AllowClusterWide bool
}

// Snapshot is the pod-identity objects a decision is made from.
type Snapshot struct {
	Identities []AzureIdentity
	Bindings   []AzureIdentityBinding
	Exceptions []AzurePodIdentityException
}

// Assignment is an identity a pod holds, and the binding that gave it.
type Assignment struct {
	Identity AzureIdentity
	Binding  AzureIdentityBinding
}

// Key names the assignment's identity as {namespace}/{name}.
func (a Assignment) Key() string { return a.Identity.Namespace + "/" + a.Identity.Name }

// Assignments returns the identities pod holds, highest binding weight
// first (then by name, so the order never depends on list order). A binding
// applies to pods of its own namespace whose aadpodidbinding label equals
// its selector, and names an AzureIdentity of its own namespace; a binding
// marked cluster-wide applies in every namespace, if the policy allows it.
func (s Snapshot) Assignments(pod *corev1.Pod, p Policy) []Assignment {
	label, ok := pod.Labels[BindingLabel]
	if !ok || label == "" {
		return nil
	}
	var all []Assignment
	for _, b := range s.Bindings {
		if b.Spec.Selector != label || b.Spec.AzureIdentity == "" {
			continue
		}
		if b.Namespace != pod.Namespace && !(p.AllowClusterWide && b.Annotations[ClusterWideAnnotation] == "true") {
			continue
		}
		i := slices.IndexFunc(s.Identities, func(id AzureIdentity) bool {
			return id.Namespace == b.Namespace && id.Name == b.Spec.AzureIdentity
		})
		if i >= 0 {
			all = append(all, Assignment{Identity: s.Identities[i], Binding: b})
		}
	}
	// Sorted before duplicates go, so which binding names an identity
	// held twice never depends on list order.
	slices.SortFunc(all, func(x, y Assignment) int {
		return cmp.Or(cmp.Compare(y.Binding.Spec.Weight, x.Binding.Spec.Weight), strings.Compare(x.Key(), y.Key()),
			strings.Compare(x.Binding.Namespace+"/"+x.Binding.Name, y.Binding.Namespace+"/"+y.Binding.Name))
	})
	var out []Assignment
	seen := map[string]bool{}
	for _, a := range all {
		if !seen[a.Key()] {
			seen[a.Key()] = true
			out = append(out, a)
		}
	}
	return out
}

// Excepted reports whether an AzurePodIdentityException of the pod's
// namespace matches it: every one of its labels is on the pod.
func (s Snapshot) Excepted(pod *corev1.Pod) bool {
	for _, e := range s.Exceptions {
		if e.Namespace != pod.Namespace || len(e.Spec.PodLabels) == 0 {
			continue
		}
		all := true
		for k, v := range e.Spec.PodLabels {
			if pod.Labels[k] != v {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// Validate checks an AzureIdentity's spec for what its type needs.
func (id *AzureIdentity) Validate() error {
	name := id.Namespace + "/" + id.Name
	switch id.Spec.Type {
	case UserAssignedMSI:
		if id.Spec.ClientID == "" && id.Spec.ResourceID == "" {
			return fmt.Errorf("AzureIdentity %s (type 0, user-assigned) needs clientID or resourceID", name)
		}
	case ServicePrincipal, ServicePrincipalCertificate:
		if id.Spec.ClientID == "" || id.Spec.TenantID == "" || id.Spec.ClientPassword.Name == "" {
			return fmt.Errorf("AzureIdentity %s (type %d, %s) needs clientID, tenantID and clientPassword", name, id.Spec.Type, id.Spec.Type)
		}
	default:
		return fmt.Errorf("AzureIdentity %s has type %d: use 0 (user-assigned identity), 1 (service principal) or 2 (service principal with certificate)", name, id.Spec.Type)
	}
	return nil
}

// FromUnstructured decodes an object read without a schema into out. Field
// names match without regard to case, as AAD Pod Identity's readers did,
// so a manifest that says ResourceID or ClientID still works.
func FromUnstructured(u *unstructured.Unstructured, out any) error {
	b, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}
