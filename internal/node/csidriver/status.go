package csidriver

import (
	"context"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

// statusName is the upstream SecretProviderClassPodStatus name.
func statusName(p *publication) string { return p.podName + "-" + p.podNS + "-" + p.spcName }

// recordStatus creates or updates the volume's SecretProviderClassPodStatus:
// this node's label, the Pod as owner (so it is collected with the pod),
// and the object versions sorted by id. An existing status (a StatefulSet
// pod of the same name, moved from another node) is taken over.
func (d *Driver) recordStatus(ctx context.Context, p *publication, versions map[string]string) error {
	objects := make([]secretsstorev1.SecretProviderClassObject, 0, len(versions))
	for id, v := range versions {
		objects = append(objects, secretsstorev1.SecretProviderClassObject{ID: id, Version: v})
	}
	sort.Slice(objects, func(i, j int) bool { return objects[i].ID < objects[j].ID })
	want := secretsstorev1.SecretProviderClassPodStatus{
		ObjectMeta: metav1.ObjectMeta{
			Name: statusName(p), Namespace: p.podNS,
			Labels:          map[string]string{secretsstorev1.InternalNodeLabel: d.cfg.NodeID},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: p.podName, UID: types.UID(p.podUID)}},
		},
		Status: secretsstorev1.SecretProviderClassPodStatusStatus{
			PodName: p.podName, SecretProviderClassName: p.spcName, Mounted: true, TargetPath: p.target, Objects: objects,
		},
	}
	obj := want.DeepCopy()
	err := d.cfg.Kube.Create(ctx, obj)
	if !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return fmt.Errorf("create SecretProviderClassPodStatus %s/%s: %w", p.podNS, want.Name, err)
		}
		return nil
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &secretsstorev1.SecretProviderClassPodStatus{}
		if err := d.cfg.Kube.Get(ctx, types.NamespacedName{Namespace: p.podNS, Name: want.Name}, cur); err != nil {
			return err
		}
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[secretsstorev1.InternalNodeLabel] = d.cfg.NodeID
		cur.OwnerReferences = want.OwnerReferences
		cur.Status = want.Status
		return d.cfg.Kube.Update(ctx, cur)
	})
	if err != nil {
		return fmt.Errorf("update SecretProviderClassPodStatus %s/%s: %w", p.podNS, want.Name, err)
	}
	return nil
}

// currentVersions are the object versions last recorded for the volume.
func (d *Driver) currentVersions(ctx context.Context, p *publication) (map[string]string, error) {
	cur := &secretsstorev1.SecretProviderClassPodStatus{}
	if err := d.cfg.Kube.Get(ctx, types.NamespacedName{Namespace: p.podNS, Name: statusName(p)}, cur); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(cur.Status.Objects))
	for _, o := range cur.Status.Objects {
		out[o.ID] = o.Version
	}
	return out, nil
}
