package csi

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// AAD Pod Identity's flow with the CSI driver: classes with
// usePodIdentity and useVMManagedIdentity, as the Azure provider reads
// them, mounted through Coffer's driver and provider, which asks the node
// agent for the pod's (or the node's) identity.
const podIdentityManifest = `apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: web-identity
spec:
  type: 0
  ResourceID: {{boundID}}
  ClientID: {{boundClient}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: web-identity-binding
spec:
  azureIdentity: web-identity
  selector: web
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: pod-identity
spec:
  provider: azure
  parameters:
    usePodIdentity: "true"
    keyvaultName: demo
    objects: |
      array:
        - |
          objectName: password
          objectType: secret
    tenantId: "{{tenant}}"
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: vm-identity
spec:
  provider: azure
  parameters:
    useVMManagedIdentity: "true"
    userAssignedIdentityID: "{{vmClient}}"
    keyvaultName: demo
    objects: |
      array:
        - |
          objectName: password
          objectType: secret
    tenantId: "{{tenant}}"
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: vm-stranger
spec:
  provider: azure
  parameters:
    useVMManagedIdentity: "true"
    userAssignedIdentityID: "{{strangerClient}}"
    keyvaultName: demo
    objects: |
      array:
        - |
          objectName: password
          objectType: secret
    tenantId: "{{tenant}}"
`

const podIdentityPod = `apiVersion: v1
kind: Pod
metadata:
  name: {{name}}
  labels: {{labels}}
spec:
  nodeName: node-1
  containers:
  - name: app
    image: busybox
    volumeMounts:
    - name: secrets
      mountPath: /mnt/secrets-store
      readOnly: true
  volumes:
  - name: secrets
    csi:
      driver: secrets-store.csi.k8s.io
      readOnly: true
      volumeAttributes:
        secretProviderClass: {{class}}
`

func TestPodAndVMIdentityMounts(t *testing.T) {
	s := startStack(t, stackOptions{nodeAgent: true})
	s.serviceAccount(t, "default", "default")
	setSecret(t, s.env, "password", "pod-identity-value")
	s.apply(t, fill(podIdentityManifest, map[string]string{
		"boundID": s.ids.Bound.ID, "boundClient": s.ids.Bound.ClientID, "tenant": s.env.State.TenantID, "vmClient": s.ids.Attached.ClientID,
		"strangerClient": s.ids.Stranger.ClientID,
	}))
	// The manifest's capitalised fields survived the apiserver, as they did
	// for AAD Pod Identity.
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(podidentity.GroupVersion.WithKind("AzureIdentity"))
	if err := s.kube.Client.Get(context.Background(), types.NamespacedName{Namespace: "default", Name: "web-identity"}, u); err != nil {
		t.Fatal(err)
	}
	var id podidentity.AzureIdentity
	if err := podidentity.FromUnstructured(u, &id); err != nil || id.Spec.ClientID != s.ids.Bound.ClientID || id.Spec.ResourceID != s.ids.Bound.ID {
		t.Fatalf("AzureIdentity as stored: %+v %v", id.Spec, err)
	}
	pods := map[string][2]string{
		"labelled":   {`{"aadpodidbinding": "web"}`, "pod-identity"},
		"unlabelled": {`{}`, "pod-identity"},
		"vm":         {`{}`, "vm-identity"},
		"stranger":   {`{}`, "vm-stranger"},
	}
	for name, p := range pods {
		s.apply(t, fill(podIdentityPod, map[string]string{"name": name, "labels": p[0], "class": p[1]}))
	}
	mount := func(name string) (string, error) {
		t.Helper()
		pod := s.pod(t, "default", name)
		eventually(t, "the node agent sees pod "+name, func() bool {
			_, err := s.agent.Cluster.Pod("default", name)
			return err == nil
		})
		req := s.publishRequest(t, pod, "secrets")
		_, err := s.node.NodePublishVolume(context.Background(), req)
		return req.TargetPath, err
	}

	t.Run("bound pod mounts with its identity", func(t *testing.T) {
		target, err := mount("labelled")
		if err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(target, "password")); got != "pod-identity-value" {
			t.Fatalf("file holds %q", got)
		}
	})
	t.Run("pod without the label is refused", func(t *testing.T) {
		target, err := mount("unlabelled")
		if err == nil {
			t.Fatal("mounted without an identity")
		}
		msg := status.Convert(err).Message()
		if !strings.Contains(msg, "Identity not assigned") || !strings.Contains(msg, "default/unlabelled") {
			t.Fatalf("error does not explain itself: %s", msg)
		}
		if isMounted(target) {
			t.Fatal("a failed first mount left its tmpfs behind")
		}
	})
	t.Run("VM identity attached to the node", func(t *testing.T) {
		target, err := mount("vm")
		if err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(target, "password")); got != "pod-identity-value" {
			t.Fatalf("file holds %q", got)
		}
	})
	t.Run("VM identity not attached to the node is refused", func(t *testing.T) {
		_, err := mount("stranger")
		if err == nil {
			t.Fatal("mounted with an identity the node does not have")
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "is not one of this node's") {
			t.Fatalf("error does not explain itself: %s", msg)
		}
	})
}
