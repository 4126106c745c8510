package nodeagent_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// Desired holds one AzureAssignedIdentity per running or pending pod and
// identity, named and shaped as AAD Pod Identity's.
func TestDesired(t *testing.T) {
	snap := newCluster().snap
	long := strings.Repeat("p", 250)
	for name, c := range map[string]struct {
		pods []corev1.Pod
		want []string // namespace/name of each object
	}{
		"one pod, two identities": {pods: []corev1.Pod{*pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"})},
			want: []string{"team-a/web-team-a-bound", "team-a/web-team-a-second"}},
		"pending pod":     {pods: []corev1.Pod{phase(pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"}), corev1.PodPending)}, want: []string{"team-a/web-team-a-bound", "team-a/web-team-a-second"}},
		"finished pod":    {pods: []corev1.Pod{phase(pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"}), corev1.PodSucceeded)}},
		"failed pod":      {pods: []corev1.Pod{phase(pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"}), corev1.PodFailed)}},
		"unbound pod":     {pods: []corev1.Pod{*pod("team-a", "nolabel", node, "", nil)}},
		"other namespace": {pods: []corev1.Pod{*pod("team-b", "web", node, "", map[string]string{podidentity.BindingLabel: "web"})}},
		"long name is hashed": {pods: []corev1.Pod{*pod("team-a", long, node, "", map[string]string{podidentity.BindingLabel: "web"})},
			want: []string{"team-a/" + long[:200] + "-", "team-a/" + long[:200] + "-"}},
	} {
		t.Run(name, func(t *testing.T) {
			got := nodeagent.Desired(node, c.pods, snap, podidentity.Policy{})
			if len(got) != len(c.want) {
				t.Fatalf("%d objects, want %d", len(got), len(c.want))
			}
			for i, d := range got {
				if n := d.Namespace + "/" + d.Name; !strings.HasPrefix(n, c.want[i]) || len(d.Name) > 253 {
					t.Errorf("object %d is %s, want %s", i, n, c.want[i])
				}
				p := c.pods[0]
				if d.Labels[nodeagent.NodeLabel] != node || d.Spec.NodeName != node || d.Spec.Pod != p.Name || d.Spec.PodNamespace != p.Namespace {
					t.Errorf("object %d: labels %v, spec %+v", i, d.Labels, d.Spec)
				}
				if len(d.OwnerReferences) != 1 || d.OwnerReferences[0].UID != p.UID || d.OwnerReferences[0].Kind != "Pod" {
					t.Errorf("object %d is owned by %v, want the pod", i, d.OwnerReferences)
				}
				if d.Status.Status != nodeagent.AssignedStatus || d.Spec.AzureIdentityRef == nil || d.Spec.AzureBindingRef == nil {
					t.Errorf("object %d: status %q, refs %v %v", i, d.Status.Status, d.Spec.AzureIdentityRef, d.Spec.AzureBindingRef)
				}
			}
			if len(got) == 2 && got[0].Name == got[1].Name {
				t.Error("two identities share a name")
			}
		})
	}
	t.Run("copies, not the snapshot's", func(t *testing.T) {
		got := nodeagent.Desired(node, []corev1.Pod{*pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"})}, snap, podidentity.Policy{})
		got[0].Spec.AzureIdentityRef.Spec.ClientID = "changed"
		if snap.Identities[0].Spec.ClientID != "bound-client" {
			t.Fatal("writing a desired object changed the shared snapshot")
		}
	})
}

func phase(p *corev1.Pod, ph corev1.PodPhase) corev1.Pod {
	p.Status.Phase = ph
	return *p
}

// Current leaves an object that already says what is wanted alone, and
// only then.
func TestCurrent(t *testing.T) {
	want := nodeagent.Desired(node, []corev1.Pod{*pod("team-a", "web", node, "", map[string]string{podidentity.BindingLabel: "web"})}, newCluster().snap, podidentity.Policy{})[0]
	for name, c := range map[string]struct {
		change  func(*podidentity.AzureAssignedIdentity)
		current bool
	}{
		"same":               {change: func(*podidentity.AzureAssignedIdentity) {}, current: true},
		"other metadata":     {change: func(a *podidentity.AzureAssignedIdentity) { a.ResourceVersion = "42"; a.Labels = nil }, current: true},
		"other status":       {change: func(a *podidentity.AzureAssignedIdentity) { a.Status.Status = "Created" }},
		"other identity":     {change: func(a *podidentity.AzureAssignedIdentity) { a.Spec.AzureIdentityRef.Spec.ClientID = "x" }},
		"other node":         {change: func(a *podidentity.AzureAssignedIdentity) { a.Spec.NodeName = "node-2" }},
		"binding re-weighed": {change: func(a *podidentity.AzureAssignedIdentity) { a.Spec.AzureBindingRef.Spec.Weight = 3 }},
	} {
		t.Run(name, func(t *testing.T) {
			have := *want.DeepCopy()
			c.change(&have)
			if got := nodeagent.Current(have, want); got != c.current {
				t.Fatalf("Current = %v, want %v", got, c.current)
			}
		})
	}
}
