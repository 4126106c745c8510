package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// NodeLabel marks the AzureAssignedIdentities a node's agent owns.
const NodeLabel = "coffer.dev/node"

// AssignedStatus is the status of an identity the agent serves to a pod.
const AssignedStatus = "Assigned"

// Desired returns the AzureAssignedIdentities that say which pods of node
// hold which identities: one per running or pending pod and identity.
func Desired(node string, pods []corev1.Pod, snap podidentity.Snapshot, p podidentity.Policy) []podidentity.AzureAssignedIdentity {
	var out []podidentity.AzureAssignedIdentity
	for i := range pods {
		pod := &pods[i]
		if pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending {
			continue
		}
		for _, a := range snap.Assignments(pod, p) {
			out = append(out, podidentity.AzureAssignedIdentity{
				TypeMeta: metav1.TypeMeta{APIVersion: podidentity.GroupVersion.String(), Kind: "AzureAssignedIdentity"},
				ObjectMeta: metav1.ObjectMeta{
					Name: assignedName(pod.Name, pod.Namespace, a.Identity.Name), Namespace: pod.Namespace,
					Labels:          map[string]string{NodeLabel: node},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
				},
				Spec: podidentity.AzureAssignedIdentitySpec{
					Pod: pod.Name, PodNamespace: pod.Namespace, NodeName: node,
					AzureIdentityRef: &podidentity.AzureIdentity{
						TypeMeta:   metav1.TypeMeta{APIVersion: podidentity.GroupVersion.String(), Kind: "AzureIdentity"},
						ObjectMeta: metav1.ObjectMeta{Name: a.Identity.Name, Namespace: a.Identity.Namespace},
						// Copies: the snapshot is shared with the IMDS handlers,
						// and decoding the apiserver's answer writes into these.
						Spec: *a.Identity.Spec.DeepCopy(),
					},
					AzureBindingRef: &podidentity.AzureIdentityBinding{
						TypeMeta:   metav1.TypeMeta{APIVersion: podidentity.GroupVersion.String(), Kind: "AzureIdentityBinding"},
						ObjectMeta: metav1.ObjectMeta{Name: a.Binding.Name, Namespace: a.Binding.Namespace},
						Spec:       *a.Binding.Spec.DeepCopy(),
					},
				},
				Status: podidentity.AzureAssignedIdentityStatus{Status: AssignedStatus},
			})
		}
	}
	return out
}

// Current reports whether have, as read from the apiserver, already says
// what want says, so the writer leaves it alone: without that, every
// reconcile would rewrite every object.
func Current(have, want podidentity.AzureAssignedIdentity) bool {
	return equality.Semantic.DeepEqual(have.Spec, want.Spec) && have.Status == want.Status
}

// assignedName is AAD Pod Identity's {pod}-{namespace}-{identity}, hashed
// down when it would pass the 253-character limit.
func assignedName(pod, ns, identity string) string {
	n := pod + "-" + ns + "-" + identity
	if len(n) <= 253 {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	return n[:200] + "-" + hex.EncodeToString(sum[:8])
}

// StatusWriter keeps the node's AzureAssignedIdentities equal to Desired.
type StatusWriter struct {
	Node    string
	Kube    client.Client // with podidentity's types in its scheme
	Cluster *KubeCluster
	Policy  podidentity.Policy
	Log     *slog.Logger

	kick chan struct{}
}

// Kick asks for a reconcile soon; it never blocks.
func (s *StatusWriter) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// NewStatusWriter returns a writer; call Run to start it.
func NewStatusWriter(node string, kube client.Client, log *slog.Logger, p podidentity.Policy) *StatusWriter {
	return &StatusWriter{Node: node, Kube: kube, Policy: p, Log: log, kick: make(chan struct{}, 1)}
}

// Run reconciles on every kick (batched over 200 ms) and every minute,
// until ctx ends; a failure is retried with a backoff from 1 s to 1 min.
func (s *StatusWriter) Run(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	var retry *time.Timer
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return
			}
		case <-tick.C:
		}
		if s.Cluster == nil || !s.Cluster.Synced() {
			continue
		}
		if err := s.reconcile(ctx); err != nil {
			s.Log.Warn("updating AzureAssignedIdentities failed; retrying", "error", err, "in", backoff)
			if retry != nil {
				retry.Stop()
			}
			retry = time.AfterFunc(backoff, s.Kick)
			backoff = min(backoff*2, time.Minute)
		} else {
			backoff = time.Second
		}
	}
}

func (s *StatusWriter) reconcile(ctx context.Context) error {
	pods, err := s.Cluster.Pods()
	if err != nil {
		return err
	}
	snap, err := s.Cluster.Snapshot()
	if err != nil {
		return err
	}
	want := map[string]podidentity.AzureAssignedIdentity{}
	for _, d := range Desired(s.Node, pods, snap, s.Policy) {
		want[d.Namespace+"/"+d.Name] = d
	}
	var have podidentity.AzureAssignedIdentityList
	if err := s.Kube.List(ctx, &have, client.MatchingLabels{NodeLabel: s.Node}); err != nil {
		return err
	}
	for i := range have.Items {
		h := &have.Items[i]
		d, ok := want[h.Namespace+"/"+h.Name]
		if !ok {
			if err := s.Kube.Delete(ctx, h); client.IgnoreNotFound(err) != nil {
				return err
			}
			continue
		}
		delete(want, h.Namespace+"/"+h.Name)
		if !Current(*h, d) {
			h.Spec, h.Status = d.Spec, d.Status
			if err := s.Kube.Update(ctx, h); err != nil {
				return err
			}
		}
	}
	for _, d := range want {
		if err := s.Kube.Create(ctx, &d); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}
