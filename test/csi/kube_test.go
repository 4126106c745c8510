package csi

import (
	"bufio"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/mount-utils"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/node/csidriver"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

func repoFile(t testing.TB, rel string) string { return testpath.Repo(t, rel) }

// stack is a Coffer server, a real kube-apiserver, Coffer's provider and
// Coffer's driver, wired as on a node.
type stack struct {
	env      *testserver.Env
	kube     *kubetest.Env
	provider *runningProvider
	driver   *csidriver.Driver
	node     csi.NodeClient
	root     string // the kubelet root of the test's pods
	agent    *agenttest.Agent
	ids      agenttest.Node // with stackOptions.nodeAgent
}

type stackOptions struct {
	providerName string
	maxRecv      int
	rotation     time.Duration // 0: rotation off
	// rotationTick is the driver's RotationTick: 0 its default, negative
	// rotation on the kubelet's (the test's) republishes only.
	rotationTick time.Duration
	// moreProviders are more directories of provider sockets.
	moreProviders []string
	// nodeAgent runs a node agent for node-1 (with agenttest's node pool
	// and identities) and lets the provider use it.
	nodeAgent bool
	// push turns on push rotation (with rotation).
	push bool
	// noVaultWatch starts a server without the vault watch, as one from
	// before it: the provider falls back to held reads.
	noVaultWatch bool
}

func startStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the driver tests mount tmpfs and must run as root")
	}
	// The CRDs Coffer ships, generated from the upstream types.
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/crds")}})
	if err := secretsstorev1.AddToScheme(kube.Scheme); err != nil {
		t.Fatal(err)
	}
	// The authority trusts the apiserver's service-account issuer.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1, NoVaultWatch: o.noVaultWatch})
	if o.providerName == "" {
		o.providerName = "azure"
	}
	var agent *agenttest.Agent
	var node agenttest.Node
	var agentSocket string
	if o.nodeAgent {
		node = agenttest.SetupNode(t, env)
		agent = agenttest.Start(t, env, kube, node, agenttest.Options{})
		agentSocket = agent.Socket
	}
	p := startProviderWith(t, env, o.providerName, env.Endpoints.Apex(), agentSocket)

	sockDir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "unix://" + filepath.Join(sockDir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	d, err := csidriver.NewDaemon(ctx, csidriver.Options{
		Settings: csidriver.Settings{
			NodeID: "node-1", Endpoint: endpoint, ProviderDirs: append(o.moreProviders, p.Dir), MaxCallRecvMsgSize: o.maxRecv,
			RotationEnabled: o.rotation > 0, RotationInterval: o.rotation, RotationTick: o.rotationTick, Push: o.push,
		},
		Kube: kube.Config, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	conn, err := grpc.NewClient(strings.Replace(endpoint, "unix://", "unix:", 1), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
		os.RemoveAll(sockDir)
		unmountAll(t, root) // even when the test failed half-way
	})
	return &stack{env: env, kube: kube, provider: p, driver: d.Driver, node: csi.NewNodeClient(conn), root: root, agent: agent, ids: node}
}

// unmountAll unmounts every mount under root.
func unmountAll(t testing.TB, root string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], root) {
			mounts = append(mounts, fields[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := mount.New("").Unmount(mounts[i]); err != nil {
			t.Errorf("cleanup: unmount %s: %v", mounts[i], err)
		}
	}
}

// isMounted reports whether path is a mount point, from mountinfo.
func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// apply creates the objects of a multi-document YAML manifest, as kubectl
// apply would for new objects.
func (s *stack) apply(t testing.TB, manifest string) {
	s.applyIn(t, "default", manifest)
}

// applyIn is apply with namespace ns for objects that name none.
func (s *stack) applyIn(t testing.TB, ns, manifest string) {
	t.Helper()
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		obj := objectFor(t, meta.Kind)
		if u, ok := obj.(*unstructured.Unstructured); ok {
			// Kinds whose users write fields the schema does not name
			// (AAD Pod Identity's ResourceID), sent as written.
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("manifest %s: %v", meta.Kind, err)
			}
		} else if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("manifest %s: %v", meta.Kind, err)
		}
		if obj.GetNamespace() == "" && meta.Kind != "Namespace" && meta.Kind != "CSIDriver" {
			obj.SetNamespace(ns)
		}
		// What the ServiceAccount admission plugin does in a full cluster;
		// envtest's apiserver runs without it.
		if pod, ok := obj.(*corev1.Pod); ok && pod.Spec.ServiceAccountName == "" {
			pod.Spec.ServiceAccountName = "default"
		}
		if err := s.kube.Client.Create(context.Background(), obj); err != nil {
			t.Fatalf("create %s: %v", meta.Kind, err)
		}
	}
}

// pod returns a created pod.
func (s *stack) pod(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{}
	if err := s.kube.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// publishRequest is what kubelet sends for a pod's secrets-store volume:
// the volume context with podInfoOnMount keys and, when the CSIDriver has
// tokenRequests, a service-account token from the real TokenRequest API,
// bound to the pod; and the nodePublishSecretRef Secret's data.
func (s *stack) publishRequest(t testing.TB, pod *corev1.Pod, volume string) *csi.NodePublishVolumeRequest {
	t.Helper()
	ctx := context.Background()
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == volume {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.CSI == nil {
		t.Fatalf("pod %s has no csi volume %s", pod.Name, volume)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	tr, err := s.kube.Clientset.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{federation.DefaultAudience}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	tokens := mustJSON(map[string]map[string]string{federation.DefaultAudience: {"token": tr.Status.Token, "expirationTimestamp": tr.Status.ExpirationTimestamp.Format(time.RFC3339)}})
	vc := map[string]string{
		"csi.storage.k8s.io/pod.name": pod.Name, "csi.storage.k8s.io/pod.namespace": pod.Namespace,
		"csi.storage.k8s.io/pod.uid": string(pod.UID), "csi.storage.k8s.io/serviceAccount.name": sa,
		"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/serviceAccount.tokens": tokens,
	}
	for k, v := range vol.CSI.VolumeAttributes {
		vc[k] = v
	}
	var secrets map[string]string
	if ref := vol.CSI.NodePublishSecretRef; ref != nil {
		sec, err := s.kube.Clientset.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("nodePublishSecretRef %s: %v", ref.Name, err)
		}
		secrets = map[string]string{}
		for k, v := range sec.Data {
			secrets[k] = string(v)
		}
	}
	target := filepath.Join(s.root, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", volume, "mount")
	return &csi.NodePublishVolumeRequest{
		VolumeId: "csi-" + string(pod.UID), TargetPath: target, Readonly: vol.CSI.ReadOnly != nil && *vol.CSI.ReadOnly,
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}},
		VolumeContext: vc, Secrets: secrets,
	}
}

// events returns the pod's events as "Type Reason: message" lines.
func (s *stack) events(t *testing.T, ns, pod string) []string {
	t.Helper()
	list, err := s.kube.Clientset.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Type+" "+e.Reason+": "+e.Message)
	}
	return out
}

// waitEvent waits for an event of reason on the pod and returns it.
func (s *stack) waitEvent(t *testing.T, ns, pod, reason string) string {
	t.Helper()
	var found string
	eventually(t, "event "+reason+" on pod "+pod, func() bool {
		for _, e := range s.events(t, ns, pod) {
			if strings.Contains(e, " "+reason+": ") {
				found = e
				return true
			}
		}
		return false
	})
	return found
}
