package security

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/mount-utils"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/node/csidriver"
	"github.com/cofferhq/coffer/internal/node/provider"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// csiWorld is a server, a real apiserver, Coffer's provider and Coffer's
// driver, wired as on a node; the test plays the kubelet.
type csiWorld struct {
	env  *testserver.Env
	kube *kubetest.Env
	node csi.NodeClient
	root string
}

func startCSI(t *testing.T) *csiWorld {
	t.Helper()
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{testpath.Repo(t, "deploy/crds")}})
	if err := secretsstorev1.AddToScheme(kube.Scheme); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
	// Unix socket paths are limited to 108 bytes: short temp dirs.
	provDir, err := os.MkdirTemp("", "prov")
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	pd, err := provider.NewDaemon(provider.Options{Endpoint: "unix://" + filepath.Join(provDir, "azure.sock"), Name: "azure",
		VaultSuffix: env.Endpoints.Apex(), CAFile: env.Admin.CAFile, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	provDone := make(chan error, 1)
	go func() { provDone <- pd.Run(ctx) }()
	endpoint := "unix://" + filepath.Join(sockDir, "csi.sock")
	dd, err := csidriver.NewDaemon(ctx, csidriver.Options{
		Settings: csidriver.Settings{NodeID: "node-1", Endpoint: endpoint, ProviderDirs: []string{provDir}},
		Kube:     kube.Config, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	drvDone := make(chan error, 1)
	go func() { drvDone <- dd.Run(ctx) }()
	conn, err := grpc.NewClient("unix:"+filepath.Join(sockDir, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	w := &csiWorld{env: env, kube: kube, node: csi.NewNodeClient(conn), root: t.TempDir()}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-drvDone
		<-provDone
		os.RemoveAll(sockDir)
		os.RemoveAll(provDir)
		// A failed test may leave a mount: unmount what is under root.
		m := mount.New("")
		if mps, err := m.List(); err == nil {
			for _, mp := range mps {
				if strings.HasPrefix(mp.Path, w.root) {
					m.Unmount(mp.Path)
				}
			}
		}
	})
	return w
}

// class creates a SecretProviderClass in ns for vault demo's secret
// "password", with workload identity clientID.
func (w *csiWorld) class(t *testing.T, ns, name, clientID string) {
	t.Helper()
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: secretsstorev1.SecretProviderClassSpec{Provider: "azure", Parameters: map[string]string{
			"keyvaultName": "demo", "tenantId": w.env.State.TenantID, "clientID": clientID,
			"objects": "array:\n  - |\n    objectName: password\n    objectType: secret\n"}}}
	if err := w.kube.Client.Create(context.Background(), spc); err != nil {
		t.Fatal(err)
	}
}

// pod creates a pod in ns (service account "default") whose
// secrets-store volume names class.
func (w *csiWorld) pod(t *testing.T, ns, name, class string) *corev1.Pod {
	t.Helper()
	ro := true
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{ServiceAccountName: "default",
		Containers: []corev1.Container{{Name: "app", Image: "app"}},
		Volumes: []corev1.Volume{{Name: "secrets", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: "secrets-store.csi.k8s.io", ReadOnly: &ro, VolumeAttributes: map[string]string{"secretProviderClass": class}}}}}}}
	if err := w.kube.Client.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// publish is what the kubelet sends for pod's volume, with a real
// TokenRequest token bound to tokenPod (normally pod itself); ns and name
// are the pod info the volume context claims.
func (w *csiWorld) publish(t *testing.T, pod, tokenPod *corev1.Pod, ns, name string) (*csi.NodePublishVolumeRequest, error) {
	t.Helper()
	exp := int64(3600)
	tr, err := w.kube.Clientset.CoreV1().ServiceAccounts(tokenPod.Namespace).CreateToken(context.Background(), "default", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{federation.DefaultAudience}, ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: tokenPod.Name, UID: tokenPod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	tokens, _ := json.Marshal(map[string]map[string]string{federation.DefaultAudience: {"token": tr.Status.Token,
		"expirationTimestamp": tr.Status.ExpirationTimestamp.Format(time.RFC3339)}})
	vc := map[string]string{"csi.storage.k8s.io/pod.name": name, "csi.storage.k8s.io/pod.namespace": ns,
		"csi.storage.k8s.io/pod.uid": string(pod.UID), "csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/serviceAccount.tokens": string(tokens)}
	for k, v := range pod.Spec.Volumes[0].CSI.VolumeAttributes {
		vc[k] = v
	}
	req := &csi.NodePublishVolumeRequest{VolumeId: "csi-" + string(pod.UID), Readonly: true,
		TargetPath: filepath.Join(w.root, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", "secrets", "mount"),
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}},
		VolumeContext: vc}
	_, err = w.node.NodePublishVolume(context.Background(), req)
	return req, err
}

// refused fails unless the publish failed and left neither a mount nor
// the secret's value at the target, in the error or in the pod's events.
func (w *csiWorld) refused(t *testing.T, req *csi.NodePublishVolumeRequest, err error, value string, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("the mount succeeded")
	}
	t.Logf("refused: %v", err)
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("the error %q does not mention %q", err, m)
		}
	}
	if strings.Contains(err.Error(), value) {
		t.Error("the secret's value is in the error")
	}
	if b, rerr := os.ReadFile(filepath.Join(req.TargetPath, "password")); rerr == nil {
		t.Errorf("the target holds the secret (%d bytes)", len(b))
	}
	if mounted, _ := mount.New("").IsMountPoint(req.TargetPath); mounted {
		t.Error("a tmpfs is left at the target")
	}
	list, lerr := w.kube.Clientset.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if lerr != nil {
		t.Fatal(lerr)
	}
	for _, e := range list.Items {
		if strings.Contains(e.Message, value) {
			t.Errorf("the secret's value is in event %s/%s", e.Namespace, e.Name)
		}
	}
}

// Cross-namespace SecretProviderClass access (the Secrets Store driver's
// tenancy boundary is the namespace): a pod's volume reads only its own
// namespace's classes, and a class is only as strong as the identity the
// pod can prove, so copying another namespace's class or naming another
// namespace's pod gets nothing.
func TestCrossNamespaceSecretProviderClass(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the driver mounts tmpfs: run as root")
	}
	w := startCSI(t)
	ctx := context.Background()
	const value = "team-a-only-s3cr3t"
	sc, err := w.env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.SetSecret(ctx, "password", azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"team-a", "team-b"} {
		if err := w.kube.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		if err := w.kube.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}); err != nil {
			t.Fatal(err)
		}
	}
	// team-a's workload identity: team-a's default service account may act
	// as it, and it may read the secret.
	var mi mgmthttp.IdentityOut
	manage(t, w.env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "team-a", ResourceGroup: "apps"}, &mi)
	manage(t, w.env, "PUT", "identities/apps/team-a/federated-credentials/k8s", federation.Credential{
		Issuer: w.kube.Issuer, Subject: "system:serviceaccount:team-a:default", Audiences: []string{federation.DefaultAudience}}, nil)
	manage(t, w.env, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &[]string{"get"}}, nil)
	w.class(t, "team-a", "shared", mi.ClientID)
	owner := w.pod(t, "team-a", "owner", "shared")

	// The control: team-a's own pod mounts its class, so the refusals below
	// are the boundary, not a broken setup.
	req, err := w.publish(t, owner, owner, "team-a", "owner")
	if err != nil {
		t.Fatalf("team-a's own mount: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(req.TargetPath, "password")); err != nil || string(b) != value {
		t.Fatalf("team-a's own mount holds %q, %v", b, err)
	}
	if _, err := w.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}

	t.Run("cross-namespace SecretProviderClass: a pod names a class that exists only in another namespace", func(t *testing.T) {
		p := w.pod(t, "team-b", "borrower", "shared")
		req, err := w.publish(t, p, p, "team-b", "borrower")
		w.refused(t, req, err, value, "team-b/shared")
	})
	t.Run("cross-namespace SecretProviderClass: a class copying another namespace's workload identity", func(t *testing.T) {
		w.class(t, "team-b", "copied", mi.ClientID)
		p := w.pod(t, "team-b", "copier", "copied")
		req, err := w.publish(t, p, p, "team-b", "copier")
		w.refused(t, req, err, value, "AADSTS70021")
	})
	t.Run("cross-namespace SecretProviderClass: pod info naming another namespace's pod, with this pod's token", func(t *testing.T) {
		p := w.pod(t, "team-b", "liar", "shared")
		req, err := w.publish(t, p, p, "team-a", "owner")
		w.refused(t, req, err, value, "AADSTS70021")
	})
}
