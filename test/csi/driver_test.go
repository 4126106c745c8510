package csi

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
)

func objectFor(t testing.TB, kind string) client.Object {
	switch kind {
	case "SecretProviderClass":
		return &secretsstorev1.SecretProviderClass{}
	case "Pod":
		return &corev1.Pod{}
	case "ServiceAccount":
		return &corev1.ServiceAccount{}
	case "Secret":
		return &corev1.Secret{}
	case "Namespace":
		return &corev1.Namespace{}
	case "CSIDriver":
		return &storagev1.CSIDriver{}
	case "AzureIdentity", "AzureIdentityBinding", "AzurePodIdentityException":
		return &unstructured.Unstructured{}
	}
	t.Fatalf("no type for kind %s", kind)
	return nil
}

// Seed 000's SecretProviderClass and pod, verbatim but for the identity
// (workload identity for the namespace's default service account instead
// of a VM managed identity) and the vault and tenant.
const seed000 = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kvname-sys-msi
spec:
  provider: azure
  parameters:
    usePodIdentity: "false"               # Set to true for using PodIdentity 
    useVMManagedIdentity: "false"         # Set to true for using managed identity
    clientID: {{clientID}}                # workload identity instead
    keyvaultName: demo                    # Set to the name of your key vault
    cloudName: ""                         # [OPTIONAL for Azure] if not provided, the Azure environment defaults to AzurePublicCloud
    objects:  |
      array:
        - |
          objectName: secret1
          objectType: secret              # object types: secret, key, or cert
          objectAlias: SECRET_1           # Secret names can only conta alphanumeric characters and dashes. objectAlias mitigates this restriction so you can override the name and stick to your naming conventions.
          objectVersion: ""               # [OPTIONAL] object versions, default to latest if empty
        - |
          objectName: secret2
          objectType: secret
          objectAlias: SECRET_2           # Secret names can only conta alphanumeric characters and dashes. objectAlias mitigates this restriction so you can override the name and stick to your naming conventions.
          objectVersion: ""
    tenantId: {{tenant}}                  # The tenant ID of the key vault
---
kind: Pod
apiVersion: v1
metadata:
  name: busybox-secrets-store-inline-system-msi
spec:
  containers:
    - name: busybox
      image: k8s.gcr.io/e2e-test-images/busybox:1.29-1
      command:
        - "/bin/sleep"
        - "10000"
      volumeMounts:
      - name: secrets-store01-inline
        mountPath: "/mnt/secrets-store"
        readOnly: true
  volumes:
    - name: secrets-store01-inline
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: "azure-kvname-sys-msi"
`

// Seed 004's v1alpha1 SecretProviderClass with secretObjects, and its pod,
// with a service principal (nodePublishSecretRef) instead of pod identity.
const seed004 = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: key-vault-secret
spec:
  provider: azure
  parameters:
    usePodIdentity: "false"
    keyvaultName: "demo"
    objects:  |
      array:
        - |
          objectName: secret-425
          objectType: secret
    tenantId: "{{tenant}}"
  secretObjects:
  - secretName: key-vault-secret
    type: Opaque
    data:
    - objectName: secret-425
      key: secret-content
---
apiVersion: v1
kind: Secret
metadata:
  name: secrets-store-creds
  labels:
    secrets-store.csi.k8s.io/used: "true"
stringData:
  clientid: "{{clientid}}"
  clientsecret: "{{clientsecret}}"
---
apiVersion: v1
kind: Pod
metadata:
  name: csi-demo
  labels:
    aadpodidbinding: access-blob
spec:
  containers:
  - name: nginx
    image: nginx
    env:
      - name: KEYVAULT_SECRET
        valueFrom:
          secretKeyRef:
            name: key-vault-secret
            key: secret-content
    volumeMounts:
      - name: keyvault
        mountPath: /mnt/secrets-store
        readOnly: true
  volumes:
    - name: keyvault
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: key-vault-secret
        nodePublishSecretRef:
          name: secrets-store-creds
`

func fill(manifest string, vars map[string]string) string {
	for k, v := range vars {
		manifest = strings.ReplaceAll(manifest, "{{"+k+"}}", v)
	}
	return manifest
}

// workloadIdentity makes a managed identity that the apiserver's tokens
// for serviceaccount ns/sa can act as, with get on vault demo's secrets.
func (s *stack) workloadIdentity(t *testing.T, ns, sa string) mgmthttp.IdentityOut {
	t.Helper()
	ctx := context.Background()
	var mi mgmthttp.IdentityOut
	if err := s.env.Client.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "mi-" + sa, ResourceGroup: "apps"}, &mi); err != nil {
		t.Fatal(err)
	}
	if err := s.env.Client.Manage(ctx, "PUT", "identities/apps/mi-"+sa+"/federated-credentials/k8s", federation.Credential{
		Issuer: s.kube.Issuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
		t.Fatal(err)
	}
	perms := []string{"get"}
	if err := s.env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &perms}, nil); err != nil {
		t.Fatal(err)
	}
	return mi
}

func (s *stack) serviceAccount(t testing.TB, ns, name string) {
	t.Helper()
	if err := s.kube.Client.Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatal(err)
	}
}

// Seed 000 end to end: the real apiserver holds the class and the pod; a
// kubelet-equivalent publishes with a real TokenRequest token; the files
// land on a real tmpfs; the status object records the versions; a change
// in the vault reaches the files on republish, swapped atomically.
func TestSeedPodMountsAndRotates(t *testing.T) {
	s := startStack(t, stackOptions{rotation: time.Millisecond})
	ctx := context.Background()
	// The shipped CSIDriver manifest is valid against the real apiserver.
	csiDriver, err := os.ReadFile(repoFile(t, "deploy/csi/csidriver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s.apply(t, string(csiDriver))
	s.serviceAccount(t, "default", "default")
	mi := s.workloadIdentity(t, "default", "default")
	setSecret(t, s.env, "secret1", "one")
	v2 := setSecret(t, s.env, "secret2", "two")
	s.apply(t, fill(seed000, map[string]string{"clientID": mi.ClientID, "tenant": s.env.State.TenantID}))
	pod := s.pod(t, "default", "busybox-secrets-store-inline-system-msi")
	req := s.publishRequest(t, pod, "secrets-store01-inline")

	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	target := req.TargetPath
	if !isMounted(target) {
		t.Fatal("the target is not a mount point")
	}
	if readFile(t, filepath.Join(target, "SECRET_1")) != "one" || readFile(t, filepath.Join(target, "SECRET_2")) != "two" {
		t.Fatal("file contents")
	}
	if fi, _ := os.Stat(filepath.Join(target, "SECRET_1")); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	// The status object: name, node label, owner, versions sorted by id.
	s.driver.Settle()
	st := &secretsstorev1.SecretProviderClassPodStatus{}
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: pod.Name + "-default-azure-kvname-sys-msi"}, st); err != nil {
		t.Fatal(err)
	}
	if st.Labels[secretsstorev1.InternalNodeLabel] != "node-1" || len(st.OwnerReferences) != 1 || st.OwnerReferences[0].UID != pod.UID ||
		!st.Status.Mounted || st.Status.TargetPath != target || st.Status.SecretProviderClassName != "azure-kvname-sys-msi" {
		t.Fatalf("status %+v %+v", st.ObjectMeta, st.Status)
	}
	if len(st.Status.Objects) != 2 || st.Status.Objects[0].ID != "secret/secret1" || st.Status.Objects[1].ID != "secret/secret2" || st.Status.Objects[1].Version != v2 {
		t.Fatalf("status objects %+v", st.Status.Objects)
	}

	// Rotation: readers never see a partial file while the new value lands.
	oldVersion := st.Status.Objects[0].Version
	newVersion := setSecret(t, s.env, "secret1", "one, rotated")
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			b, err := os.ReadFile(filepath.Join(target, "SECRET_1"))
			if err == nil && string(b) != "one" && string(b) != "one, rotated" {
				bad.Store(string(b))
			}
		}
	}()
	time.Sleep(5 * time.Millisecond)
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("republish: %v", err)
	}
	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("a reader saw %q during the swap", v)
	}
	if readFile(t, filepath.Join(target, "SECRET_1")) != "one, rotated" || readFile(t, filepath.Join(target, "SECRET_2")) != "two" {
		t.Fatal("the rotated value is not mounted")
	}
	s.waitEvent(t, "default", pod.Name, "MountRotationComplete")
	s.driver.Settle()
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: st.Name}, st); err != nil {
		t.Fatal(err)
	}
	if got := st.Status.Objects[0].Version; got == oldVersion || got != newVersion {
		t.Fatalf("the status records version %s after rotation, want %s (was %s)", got, newVersion, oldVersion)
	}

	// Unpublish removes the files and the mount.
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if isMounted(target) {
		t.Fatal("still mounted after unpublish")
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatal("the target directory is left behind")
	}
}

// mountedSeed000 starts a stack and publishes seed 000's volume, with
// secret1 = "one" and secret2 = "two", read with workload identity.
func mountedSeed000(t *testing.T, o stackOptions) (*stack, *corev1.Pod, *csi.NodePublishVolumeRequest) {
	t.Helper()
	s := startStack(t, o)
	s.serviceAccount(t, "default", "default")
	mi := s.workloadIdentity(t, "default", "default")
	setSecret(t, s.env, "secret1", "one")
	setSecret(t, s.env, "secret2", "two")
	s.apply(t, fill(seed000, map[string]string{"clientID": mi.ClientID, "tenant": s.env.State.TenantID}))
	pod := s.pod(t, "default", "busybox-secrets-store-inline-system-msi")
	req := s.publishRequest(t, pod, "secrets-store01-inline")
	if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	return s, pod, req
}

// With rotation on, a changed secret reaches a mounted volume within the
// rotation interval although the kubelet does not republish it (its own
// period is a minute by default): the driver rotates by itself, with the
// kubelet's last request. A volume whose tokens are about to expire waits
// for the kubelet's next republish, which brings fresh ones.
func TestRotationBetweenRepublishes(t *testing.T) {
	s, pod, req := mountedSeed000(t, stackOptions{rotation: 200 * time.Millisecond})
	ctx := context.Background()
	file := filepath.Join(req.TargetPath, "SECRET_1")
	setSecret(t, s.env, "secret1", "one, rotated")
	waitFile(t, file, "one, rotated", 20*time.Second, "the changed secret did not reach the volume without a republish")
	s.waitEvent(t, "default", pod.Name, "MountRotationComplete")

	// The kubelet's last request says its token expires in 10 s: the
	// driver no longer uses it, and the volume keeps its files until the
	// kubelet republishes.
	var tokens map[string]map[string]string
	if err := json.Unmarshal([]byte(req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]), &tokens); err != nil {
		t.Fatal(err)
	}
	fresh := req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]
	for aud := range tokens {
		tokens[aud]["expirationTimestamp"] = time.Now().Add(10 * time.Second).UTC().Format(time.RFC3339)
	}
	expiring := proto.Clone(req).(*csi.NodePublishVolumeRequest)
	expiring.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = mustJSON(tokens)
	if _, err := s.node.NodePublishVolume(ctx, expiring); err != nil {
		t.Fatalf("republish: %v", err)
	}
	setSecret(t, s.env, "secret1", "one, rotated twice")
	// Eight ticks of the driver's loop, each of which would have rotated.
	time.Sleep(2 * time.Second)
	if got := readFile(t, file); got != "one, rotated" {
		t.Fatalf("the driver rotated with a token about to expire: %q", got)
	}
	req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = fresh
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("republish: %v", err)
	}
	waitFile(t, file, "one, rotated twice", 20*time.Second, "the volume did not rotate once the kubelet brought a fresh token")
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
}

// Seed 004: a v1alpha1 class with secretObjects syncs a Kubernetes Secret,
// kept up to date on republish.
func TestSeedSecretSync(t *testing.T) {
	s := startStack(t, stackOptions{rotation: time.Millisecond})
	ctx := context.Background()
	s.serviceAccount(t, "default", "default")
	sp := servicePrincipal(t, s.env, "seed004", []string{"get"}, nil, nil)
	setSecret(t, s.env, "secret-425", "content v1")
	s.apply(t, fill(seed004, map[string]string{"tenant": s.env.State.TenantID, "clientid": sp.AppID, "clientsecret": sp.Password}))
	pod := s.pod(t, "default", "csi-demo")
	req := s.publishRequest(t, pod, "keyvault")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	if readFile(t, filepath.Join(req.TargetPath, "secret-425")) != "content v1" {
		t.Fatal("file")
	}
	s.driver.Settle()
	sec := &corev1.Secret{}
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, sec); err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["secret-content"]) != "content v1" || sec.Labels["secrets-store.csi.k8s.io/managed"] != "true" || sec.Type != corev1.SecretTypeOpaque {
		t.Fatalf("synced secret %+v", sec)
	}
	// A bare pod: the Secret is owned by the pod's status object.
	if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].Kind != "SecretProviderClassPodStatus" {
		t.Fatalf("owners %+v", sec.OwnerReferences)
	}
	setSecret(t, s.env, "secret-425", "content v2")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	s.driver.Settle()
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, sec); err != nil || string(sec.Data["secret-content"]) != "content v2" {
		t.Fatalf("the synced Secret was not updated: %v", err)
	}
	s.waitEvent(t, "default", "csi-demo", "SecretRotationComplete")
	// The class also reads through v1alpha1, the version seed 004 wrote.
	for _, v := range []string{"v1", "v1alpha1"} {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("secrets-store.csi.x-k8s.io/" + v)
		u.SetKind("SecretProviderClass")
		if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "key-vault-secret"}, u); err != nil {
			t.Fatalf("read the class as %s: %v", v, err)
		}
		if objs, _, _ := unstructured.NestedString(u.Object, "spec", "parameters", "objects"); !strings.Contains(objs, "secret-425") {
			t.Fatalf("the class as %s lost its objects", v)
		}
	}
}
