package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
)

// syncCases are the real node's checks of Secrets that outlive or need no
// pod: a SecretSync's Secret read as an env var by a pod that mounts
// nothing, and a secretObjects Secret through a Deployment's scale-down.
func syncCases(t *testing.T, in *installation) {
	ctx := context.Background()
	t.Run("SecretSync: a Secret with no mount, an env var of a pod that mounts nothing", func(t *testing.T) {
		var mi mgmthttp.IdentityOut
		if err := in.admin.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "sync-app", ResourceGroup: "apps"}, &mi); err != nil {
			t.Fatal(err)
		}
		if err := in.admin.Manage(ctx, "PUT", "identities/apps/sync-app/federated-credentials/k8s", federation.Credential{
			Issuer: in.c.Issuer, Subject: "system:serviceaccount:default:sync-sa", Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
			t.Fatal(err)
		}
		in.allowGet(t, mi.PrincipalID)
		in.setSecret(t, "sync-db", "synced with no pod")
		in.create(t, example(t, "secret-sync", map[string]string{"CLIENT_ID": mi.ClientID, "TENANT_ID": in.env.TenantID}))
		if got := in.exec(t, "env-reader", "app", "printenv", "PASSWORD"); got != "synced with no pod\n" {
			t.Fatalf("PASSWORD = %q", got)
		}
		p, err := in.c.Clientset.CoreV1().Pods("default").Get(ctx, "env-reader", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range p.Spec.Volumes {
			if v.CSI != nil {
				t.Fatalf("the reader mounts a CSI volume: %s", v.Name)
			}
		}
		s, err := in.c.Clientset.CoreV1().Secrets("default").Get(ctx, "sync-db", metav1.GetOptions{})
		if err != nil || s.Labels["secrets-store.sync.x-k8s.io/secretsync"] != "sync-db" || len(s.OwnerReferences) != 1 || s.OwnerReferences[0].Kind != "SecretSync" {
			t.Fatalf("the synced Secret: %v %+v", err, s.ObjectMeta)
		}
	})

	t.Run("secretObjects: a Deployment scaled from 3 to 1 keeps its synced Secret", func(t *testing.T) {
		in.setSecret(t, "scaled", "kept through the scale-down")
		in.allowGet(t, in.pool.SystemAssigned.PrincipalID)
		in.create(t, strings.ReplaceAll(scaled, "{{tenant}}", in.env.TenantID))
		in.c.WaitPodsOf("default", "app=scaled", 3, 3*time.Minute)
		var first *corev1.Secret
		eventually(t, in.c, "the synced Secret", time.Minute, func() bool {
			s, err := in.c.Clientset.CoreV1().Secrets("default").Get(ctx, "scaled-secret", metav1.GetOptions{})
			first = s
			return err == nil && string(s.Data["value"]) == "kept through the scale-down"
		})
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d, err := in.c.Clientset.AppsV1().Deployments("default").Get(ctx, "scaled", metav1.GetOptions{})
			if err != nil {
				return err
			}
			one := int32(1)
			d.Spec.Replicas = &one
			_, err = in.c.Clientset.AppsV1().Deployments("default").Update(ctx, d, metav1.UpdateOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		// The gone pods' volumes are unpublished and their status objects
		// collected: the garbage collector has judged the Secret.
		eventually(t, in.c, "two pods and their status objects to go", 3*time.Minute, func() bool {
			pods, err := in.c.Clientset.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=scaled"})
			if err != nil || len(pods.Items) != 1 {
				return false
			}
			list := &unstructured.UnstructuredList{}
			list.SetAPIVersion("secrets-store.csi.x-k8s.io/v1")
			list.SetKind("SecretProviderClassPodStatusList")
			if err := in.c.Client.List(ctx, list, client.InNamespace("default")); err != nil {
				return false
			}
			n := 0
			for _, it := range list.Items {
				if class, _, _ := unstructured.NestedString(it.Object, "status", "secretProviderClassName"); class == "scaled" {
					n++
				}
			}
			return n == 1
		})
		s, err := in.c.Clientset.CoreV1().Secrets("default").Get(ctx, "scaled-secret", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			t.Fatal("the synced Secret was deleted by the scale-down")
		}
		if err != nil || s.UID != first.UID {
			t.Fatalf("the synced Secret was replaced during the scale-down: %v", err)
		}
	})
}

// scaled is a Deployment of 3 whose pods mount a class with
// secretObjects, with the node's identity.
const scaled = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: scaled
spec:
  provider: azure
  parameters:
    useVMManagedIdentity: "true"
    keyvaultName: demo
    tenantId: "{{tenant}}"
    objects: |
      array:
        - |
          objectName: scaled
          objectType: secret
  secretObjects:
  - secretName: scaled-secret
    type: Opaque
    data:
    - objectName: scaled
      key: value
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: scaled
spec:
  replicas: 3
  selector:
    matchLabels: {app: scaled}
  template:
    metadata:
      labels: {app: scaled}
    spec:
      containers:
        - name: app
          image: coffer.local/app:e2e
          imagePullPolicy: Never
          command: ["/bin/sleep", "10000"]
          volumeMounts:
            - {name: store, mountPath: /mnt/secrets-store, readOnly: true}
      volumes:
        - name: store
          csi:
            driver: secrets-store.csi.k8s.io
            readOnly: true
            volumeAttributes:
              secretProviderClass: scaled
`
