package csi

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

// The upstream driver's issue #2051: Secrets synced from secretObjects
// were deleted by the garbage collector while a Deployment scaled down.
// Here the real garbage collector, Deployment and ReplicaSet controllers
// run (kube-controller-manager); a Deployment of 3 mounts a class with
// secretObjects, scales to 1, and its Secret must stay, with the same
// UID, while a pod still uses it. Deleting the Deployment then deletes the
// Secret, which shows the collector did run.
func TestSecretObjectsSurviveScaleDown(t *testing.T) {
	s := startStack(t, stackOptions{rotation: time.Millisecond})
	s.kube.StartControllers(t, "garbagecollector", "deployment", "replicaset")
	ctx := context.Background()
	s.serviceAccount(t, "default", "default")
	sp := servicePrincipal(t, s.env, "scale", []string{"get"}, nil, nil)
	setSecret(t, s.env, "secret-425", "content")
	s.apply(t, fill(seed004, map[string]string{"tenant": s.env.State.TenantID, "clientid": sp.AppID, "clientsecret": sp.Password}))
	if err := s.kube.Client.Delete(ctx, s.pod(t, "default", "csi-demo")); err != nil {
		t.Fatal(err) // seed 004's bare pod is not part of this test
	}
	replicas := int32(3)
	labels := map[string]string{"app": "web"}
	ro := true
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}, Spec: appsv1.DeploymentSpec{
		Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			ServiceAccountName: "default",
			Containers:         []corev1.Container{{Name: "app", Image: "app"}},
			Volumes: []corev1.Volume{{Name: "keyvault", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver: "secrets-store.csi.k8s.io", ReadOnly: &ro, VolumeAttributes: map[string]string{"secretProviderClass": "key-vault-secret"},
				NodePublishSecretRef: &corev1.LocalObjectReference{Name: "secrets-store-creds"}}}}},
		}}}}
	if err := s.kube.Client.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	pods := s.waitPods(t, labels, 3)
	// What the kubelet does for each: publish the volume.
	reqs := map[string]*csi.NodePublishVolumeRequest{}
	for _, p := range pods {
		req := s.publishRequest(t, &p, "keyvault")
		if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("NodePublishVolume for %s: %v", p.Name, err)
		}
		reqs[p.Name] = req
	}
	s.driver.Settle()
	synced := &corev1.Secret{}
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, synced); err != nil {
		t.Fatal(err)
	}
	if len(synced.OwnerReferences) != 1 || synced.OwnerReferences[0].Kind != "ReplicaSet" {
		t.Fatalf("owners %+v: want the pods' ReplicaSet", synced.OwnerReferences)
	}
	s.waitStatuses(t, 3)

	// Scale down to 1, as an autoscaler would.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &appsv1.Deployment{}
		if err := s.kube.Client.Get(ctx, client.ObjectKeyFromObject(dep), d); err != nil {
			return err
		}
		one := int32(1)
		d.Spec.Replicas = &one
		return s.kube.Client.Update(ctx, d)
	}); err != nil {
		t.Fatal(err)
	}
	left := s.waitPods(t, labels, 1)
	for name, req := range reqs {
		if name == left[0].Name {
			continue
		}
		if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
			t.Fatal(err)
		}
	}
	// The collector deletes the gone pods' status objects (they own
	// them): by then it has judged the Secret too.
	s.waitStatuses(t, 1)
	// And the remaining pod's republish writes the Secret again.
	if _, err := s.node.NodePublishVolume(ctx, reqs[left[0].Name]); err != nil {
		t.Fatal(err)
	}
	s.driver.Settle()
	after := &corev1.Secret{}
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, after); err != nil {
		t.Fatalf("the synced Secret is gone after the scale-down: %v", err)
	}
	if after.UID != synced.UID || string(after.Data["secret-content"]) != "content" {
		t.Fatal("the synced Secret was deleted and written again during the scale-down")
	}

	if err := s.kube.Client.Delete(ctx, dep, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Secret to go with the Deployment", func() bool {
		err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, &corev1.Secret{})
		return apierrors.IsNotFound(err)
	})
}

// waitPods waits until exactly n pods match labels, none of them being
// deleted, and returns them.
func (s *stack) waitPods(t testing.TB, labels map[string]string, n int) []corev1.Pod {
	t.Helper()
	var live []corev1.Pod
	eventually(t, "the Deployment's pods", func() bool {
		list := &corev1.PodList{}
		if err := s.kube.Client.List(context.Background(), list, client.InNamespace("default"), client.MatchingLabels(labels)); err != nil {
			t.Fatal(err)
		}
		live = live[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				live = append(live, p)
			}
		}
		return len(list.Items) == n && len(live) == n
	})
	return live
}

// waitStatuses waits until n SecretProviderClassPodStatuses exist.
func (s *stack) waitStatuses(t testing.TB, n int) {
	t.Helper()
	eventually(t, "the pods' status objects", func() bool {
		list := &secretsstorev1.SecretProviderClassPodStatusList{}
		if err := s.kube.Client.List(context.Background(), list, client.InNamespace("default")); err != nil {
			t.Fatal(err)
		}
		return len(list.Items) == n
	})
}
