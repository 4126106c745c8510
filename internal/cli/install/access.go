package install

import (
	"context"
	"fmt"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// installNeeds is what Install does in the cluster: its own objects, the
// chart's (cluster-wide ones included), the CRDs, and the port forward to
// the server for the management calls.
func installNeeds(ns string) []Permission {
	var out []Permission
	add := func(group, resource, namespace string, verbs ...string) {
		for _, v := range verbs {
			out = append(out, Permission{Verb: v, Group: group, Resource: resource, Namespace: namespace})
		}
	}
	add("", "namespaces", "", "get", "create")
	add("apiextensions.k8s.io", "customresourcedefinitions", "", "get", "create")
	add("", "secrets", ns, "get", "list", "create", "update", "patch", "delete")
	add("", "configmaps", ns, "get", "create", "update", "patch", "delete")
	add("", "serviceaccounts", ns, "get", "create", "patch")
	add("", "services", ns, "get", "create", "patch")
	add("", "persistentvolumeclaims", ns, "get", "create", "patch")
	add("apps", "deployments", ns, "get", "list", "create", "patch")
	add("apps", "statefulsets", ns, "get", "list", "create", "patch")
	add("apps", "daemonsets", ns, "get", "list", "create", "patch")
	add("policy", "poddisruptionbudgets", ns, "get", "create", "patch")
	add("rbac.authorization.k8s.io", "roles", ns, "get", "create", "patch")
	add("rbac.authorization.k8s.io", "rolebindings", ns, "get", "create", "patch")
	add("rbac.authorization.k8s.io", "clusterroles", "", "get", "create", "patch")
	add("rbac.authorization.k8s.io", "clusterrolebindings", "", "get", "create", "patch")
	add("storage.k8s.io", "csidrivers", "", "get", "create", "patch")
	add("storage.k8s.io", "csinodes", "", "get")
	add("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "get", "create", "patch")
	add("", "pods", ns, "get", "list")
	out = append(out, Permission{Verb: "create", Resource: "pods", Subresource: "portforward", Namespace: ns})
	return out
}

// uninstallNeeds is what Uninstall does.
func uninstallNeeds(ns string) []Permission {
	var out []Permission
	for _, p := range installNeeds(ns) {
		if p.Verb == "get" || p.Verb == "list" {
			out = append(out, p)
		}
	}
	for _, r := range []struct{ group, resource, ns string }{
		{"", "namespaces", ""}, {"apiextensions.k8s.io", "customresourcedefinitions", ""}, {"", "secrets", ns}, {"", "configmaps", ns},
		{"", "persistentvolumeclaims", ns}, {"apps", "deployments", ns}, {"apps", "statefulsets", ns}, {"apps", "daemonsets", ns},
		{"rbac.authorization.k8s.io", "clusterroles", ""}, {"rbac.authorization.k8s.io", "clusterrolebindings", ""},
		{"storage.k8s.io", "csidrivers", ""}, {"admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""},
	} {
		out = append(out, Permission{Verb: "delete", Group: r.group, Resource: r.resource, Namespace: r.ns})
	}
	return out
}

// checkAccess asks the apiserver, with SelfSubjectAccessReviews, whether
// the caller may do all of needs, and lists every one it may not.
func (c *cluster) checkAccess(ctx context.Context, needs []Permission) error {
	var missing []Permission
	for _, p := range needs {
		r, err := c.cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: p.Verb, Group: p.Group, Resource: p.Resource, Subresource: p.Subresource, Namespace: p.Namespace,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("checking access (SelfSubjectAccessReview): %w", err)
		}
		if !r.Status.Allowed {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	e := &MissingRBACError{Missing: missing}
	if rv, err := c.cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil {
		e.User = rv.Status.UserInfo.Username
	}
	return e
}
