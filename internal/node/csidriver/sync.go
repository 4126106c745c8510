package csidriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/node/atomicdir"
)

// ManagedLabel marks the Secrets the driver creates and keeps up to date.
const ManagedLabel = "secrets-store.csi.k8s.io/managed"

// syncSecrets creates or updates the Kubernetes Secrets the class's
// secretObjects describe, from the files just written. A failure is an
// event on the pod, never a failed mount: the files are there. On a
// republish, a Secret whose data changed gets a SecretRotationComplete
// event.
func (d *Driver) syncSecrets(ctx context.Context, p *publication, spc *secretsstorev1.SecretProviderClass, files []atomicdir.File, rotation bool) {
	if len(spc.Spec.SecretObjects) == 0 {
		return
	}
	start := time.Now()
	if files == nil { // a provider that wrote the files itself
		var err error
		if files, err = atomicdir.Current(p.target); err != nil {
			d.event(p, corev1.EventTypeWarning, ReasonFailedToSyncSecret, "Reading the mounted files to sync Secrets failed: %v", err)
			return
		}
	}
	byPath := make(map[string][]byte, len(files))
	for _, f := range files {
		byPath[f.Path] = f.Contents
	}
	owners, err := d.secretOwners(ctx, p)
	if err != nil {
		d.event(p, corev1.EventTypeWarning, ReasonFailedToSyncSecret, "Finding the owners for synced Secrets failed: %v", err)
		return
	}
	for _, so := range spc.Spec.SecretObjects {
		changed, err := d.syncSecret(ctx, p, spc, so, byPath, owners)
		name := ""
		if so != nil {
			name = strings.TrimSpace(so.SecretName)
		}
		switch {
		case err != nil:
			d.event(p, corev1.EventTypeWarning, ReasonFailedToSyncSecret, "Syncing Secret %s/%s from SecretProviderClass %s failed: %v", p.podNS, name, spc.Name, err)
		case changed && rotation:
			d.event(p, corev1.EventTypeNormal, "SecretRotationComplete", "Rotated Secret %s/%s from SecretProviderClass %s", p.podNS, name, spc.Name)
		}
	}
	d.cfg.Metrics.synced(string(spc.Spec.Provider), time.Since(start).Seconds())
}

// secretData builds a Secret's data from the mounted files; for
// kubernetes.io/tls it splits a PEM (or PKCS#12) bundle into tls.crt (the
// certificates, in order) and tls.key (the key, PKCS#1 for RSA and SEC 1
// for EC, as kubectl writes them).
func secretData(so *secretsstorev1.SecretObject, files map[string][]byte) (map[string][]byte, corev1.SecretType, error) {
	if so == nil || strings.TrimSpace(so.SecretName) == "" {
		return nil, "", errors.New("secretObjects[].secretName is empty")
	}
	typ := corev1.SecretType(strings.TrimSpace(so.Type))
	if typ == "" {
		return nil, "", errors.New("secretObjects[].type is empty: use Opaque or kubernetes.io/tls")
	}
	if len(so.Data) == 0 {
		return nil, "", errors.New("secretObjects[].data is empty")
	}
	out := map[string][]byte{}
	for _, dd := range so.Data {
		if dd == nil || strings.TrimSpace(dd.ObjectName) == "" {
			return nil, "", errors.New("an entry of secretObjects[].data has no objectName")
		}
		if strings.TrimSpace(dd.Key) == "" {
			return nil, "", fmt.Errorf("the secretObjects[].data entry for %s has no key", dd.ObjectName)
		}
		content, ok := files[strings.TrimSpace(dd.ObjectName)]
		if !ok {
			return nil, "", fmt.Errorf("no mounted file matches objectName %s: it must be an object's file name (its objectAlias, if it has one)", dd.ObjectName)
		}
		key := strings.TrimSpace(dd.Key)
		if typ != corev1.SecretTypeTLS {
			out[key] = content
			continue
		}
		var err error
		out[key], err = certfmt.TLSSecretValue(key, content)
		if err != nil {
			return nil, "", fmt.Errorf("objectName %s: %w", dd.ObjectName, err)
		}
	}
	return out, typ, nil
}

// secretOwners are the owners a synced Secret gets: the pod's own owners
// (its ReplicaSet, StatefulSet...), so the Secret outlives pod restarts
// and goes with the workload; for a bare pod, its status object.
func (d *Driver) secretOwners(ctx context.Context, p *publication) ([]metav1.OwnerReference, error) {
	pod := &corev1.Pod{}
	if err := d.cfg.Kube.Get(ctx, types.NamespacedName{Namespace: p.podNS, Name: p.podName}, pod); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", p.podNS, p.podName, err)
	}
	var out []metav1.OwnerReference
	for _, o := range pod.OwnerReferences {
		out = append(out, metav1.OwnerReference{APIVersion: o.APIVersion, Kind: o.Kind, Name: o.Name, UID: o.UID})
	}
	if len(out) > 0 {
		return out, nil
	}
	st := &secretsstorev1.SecretProviderClassPodStatus{}
	if err := d.cfg.Kube.Get(ctx, types.NamespacedName{Namespace: p.podNS, Name: statusName(p)}, st); err != nil {
		return nil, fmt.Errorf("get SecretProviderClassPodStatus %s/%s: %w", p.podNS, statusName(p), err)
	}
	return []metav1.OwnerReference{{APIVersion: secretsstorev1.GroupVersion.String(), Kind: "SecretProviderClassPodStatus", Name: st.Name, UID: st.UID}}, nil
}

// syncSecret creates or updates one Secret and reports whether its data
// changed. A Secret of that name that the driver does not manage is left
// alone: overwriting a user's Secret would destroy data.
func (d *Driver) syncSecret(ctx context.Context, p *publication, spc *secretsstorev1.SecretProviderClass, so *secretsstorev1.SecretObject, files map[string][]byte, owners []metav1.OwnerReference) (bool, error) {
	data, typ, err := secretData(so, files)
	if err != nil {
		return false, err
	}
	name := strings.TrimSpace(so.SecretName)
	labels := maps.Clone(so.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[ManagedLabel] = "true"
	changed := false
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &corev1.Secret{}
		err := d.cfg.Kube.Get(ctx, types.NamespacedName{Namespace: p.podNS, Name: name}, cur)
		if apierrors.IsNotFound(err) {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.podNS, Labels: labels, Annotations: so.Annotations, OwnerReferences: owners},
				Type: typ, Data: data}
			changed = true
			return d.cfg.Kube.Create(ctx, s)
		}
		if err != nil {
			return err
		}
		if cur.Labels[ManagedLabel] != "true" {
			return fmt.Errorf("the Secret %s/%s exists and is not managed by the driver (no %s=true label); rename secretName or delete that Secret", p.podNS, name, ManagedLabel)
		}
		if cur.Type != typ {
			return fmt.Errorf("the Secret %s/%s has type %s, but secretObjects asks for %s; delete it so it can be recreated", p.podNS, name, cur.Type, typ)
		}
		next := cur.DeepCopy()
		changed = !maps.EqualFunc(cur.Data, data, bytes.Equal)
		next.Data = data
		maps.Copy(next.Labels, labels)
		if len(so.Annotations) > 0 && next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		maps.Copy(next.Annotations, so.Annotations)
		for _, o := range owners {
			if !hasOwner(next.OwnerReferences, o.UID) {
				next.OwnerReferences = append(next.OwnerReferences, o)
			}
		}
		if !changed && maps.Equal(cur.Labels, next.Labels) && maps.Equal(cur.Annotations, next.Annotations) && len(cur.OwnerReferences) == len(next.OwnerReferences) {
			return nil // nothing to write
		}
		return d.cfg.Kube.Update(ctx, next)
	})
	return changed, err
}

func hasOwner(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.UID == uid {
			return true
		}
	}
	return false
}
