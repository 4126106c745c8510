// Package sync tests `coffer sync-controller` on a real kube-apiserver and
// etcd, with no pod anywhere: a live Coffer server and Coffer's provider
// on a unix socket, the upstream fake provider on its own, the upstream
// controller's example manifests, the chart's admission policies, and a
// real garbage collector (kube-controller-manager) where owner references
// matter.
package sync

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/fake"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/node/provider"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
	"github.com/cofferhq/coffer/internal/sync/controller"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/providertest"
	"github.com/cofferhq/coffer/internal/testing/testpath"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// controllerNS is where the controller's Lease lives.
const controllerNS = "coffer-system"

// stack is a real apiserver with Coffer's CRDs, a Coffer server, and
// Coffer's provider on a socket named azure.sock.
type stack struct {
	kube     *kubetest.Env
	env      *testserver.Env
	provider *runningProvider
}

func startStack(t testing.TB) *stack {
	t.Helper()
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{testpath.Repo(t, "deploy/crds")}})
	for _, add := range []func(*runtime.Scheme) error{secretsstorev1.AddToScheme, syncv1.AddToScheme} {
		if err := add(kube.Scheme); err != nil {
			t.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
	s := &stack{kube: kube, env: env}
	s.provider = startProvider(t, env, "azure")
	s.namespace(t, controllerNS)
	return s
}

// runningProvider is Coffer's provider on a unix socket in a temp dir,
// built by the provider daemon's own entry point.
type runningProvider = providertest.Provider

func startProvider(t testing.TB, env *testserver.Env, name string) *runningProvider {
	t.Helper()
	return providertest.Start(t, name, provider.Options{VaultSuffix: env.Endpoints.Apex(), CAFile: env.Admin.CAFile})
}

// startFake runs the upstream module's fake provider on {dir}/{name}.sock
// with files, and returns it and its directory.
func startFake(t testing.TB, name string, files map[string]string) (*fake.MockCSIProviderServer, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fake")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mock, err := fake.NewMocKCSIProviderServer(filepath.Join(dir, name+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	setFakeFiles(mock, files)
	if err := mock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mock.Stop)
	return mock, dir
}

func setFakeFiles(mock *fake.MockCSIProviderServer, files map[string]string) {
	var fs []*v1alpha1.File
	versions := map[string]string{}
	for path, content := range files {
		fs = append(fs, &v1alpha1.File{Path: path, Mode: 0o644, Contents: []byte(content)})
		versions["secret/"+path] = "v1"
	}
	mock.SetFiles(fs)
	mock.SetObjects(versions)
}

// runningController is a sync controller built by its daemon's entry
// point.
type runningController struct {
	d    *controller.Daemon
	stop func()
}

// controllerOptions are the options the tests start from: the stack's
// provider, workload identity's audience, namespace "default", leader
// election with short leases.
func (s *stack) controllerOptions(dirs ...string) controller.Options {
	return controller.Options{
		ProviderDirs: append(dirs, s.provider.Dir), TokenAudiences: []string{federation.DefaultAudience},
		Namespaces: []string{"default"}, Push: true, RotationPollInterval: time.Hour,
		LeaderElection: true, LeaderElectionNamespace: controllerNS,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		MetricsAddr: "127.0.0.1:0", Kube: s.kube.Config, Log: slog.New(slog.DiscardHandler),
	}
}

func startController(t testing.TB, o controller.Options) *runningController {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := controller.NewDaemon(ctx, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once gosync.Once
	rc := &runningController{d: d}
	rc.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("sync controller: %v", err)
			}
		})
	}
	t.Cleanup(rc.stop)
	return rc
}

// writes counts the controller's writes to the apiserver.
func (c *runningController) writes(t testing.TB) float64 {
	t.Helper()
	return sumMetric(t, c.d.Registry, "coffer_sync_api_writes_total")
}

// sumMetric adds up every series of a counter family, with the given
// label values if any (name=value pairs).
func sumMetric(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if m.GetCounter() != nil {
				total += m.GetCounter().GetValue()
			} else if m.GetHistogram() != nil {
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

func (s *stack) namespace(t testing.TB, name string) {
	t.Helper()
	err := s.kube.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func (s *stack) serviceAccount(t testing.TB, ns, name string) {
	t.Helper()
	if err := s.kube.Client.Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}); err != nil {
		t.Fatal(err)
	}
}

// workloadIdentity makes a managed identity that the apiserver's tokens
// for service account ns/sa can act as, with the given secret permissions
// on vault demo (none: it may read nothing).
func (s *stack) workloadIdentity(t testing.TB, ns, sa string, perms ...string) mgmthttp.IdentityOut {
	t.Helper()
	ctx := context.Background()
	var mi mgmthttp.IdentityOut
	name := "mi-" + ns + "-" + sa
	if err := s.env.Client.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: name, ResourceGroup: "apps"}, &mi); err != nil {
		t.Fatal(err)
	}
	if err := s.env.Client.Manage(ctx, "PUT", "identities/apps/"+name+"/federated-credentials/k8s", federation.Credential{
		Issuer: s.kube.Issuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
		t.Fatal(err)
	}
	if len(perms) > 0 {
		if err := s.env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &perms}, nil); err != nil {
			t.Fatal(err)
		}
	}
	return mi
}

// setSecret stores a secret in vault demo.
func (s *stack) setSecret(t testing.TB, name, value string) {
	t.Helper()
	sc, err := s.env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.SetSecret(context.Background(), name, azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil); err != nil {
		t.Fatal(err)
	}
}

// apply creates the objects of a multi-document manifest as written (as
// unstructured objects: no Go type drops or fills a field), in namespace
// ns for those that name none.
func (s *stack) apply(t testing.TB, ns, manifest string) {
	t.Helper()
	for _, doc := range strings.Split(manifest, "\n---\n") {
		if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")) == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("manifest: %v\n%s", err, doc)
		}
		if u.GetNamespace() == "" {
			u.SetNamespace(ns)
		}
		if err := s.kube.Client.Create(context.Background(), u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// coffersClass is a SecretProviderClass for Coffer's provider (socket
// azure) reading the given secrets of vault demo with workload identity
// clientID.
func (s *stack) coffersClass(t testing.TB, ns, name, clientID string, secrets ...string) {
	t.Helper()
	var objs strings.Builder
	objs.WriteString("array:\n")
	for _, sec := range secrets {
		objs.WriteString("  - |\n    objectName: " + sec + "\n    objectType: secret\n")
	}
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: secretsstorev1.SecretProviderClassSpec{
		Provider: "azure", Parameters: map[string]string{"keyvaultName": "demo", "tenantId": s.env.State.TenantID, "clientID": clientID, "objects": objs.String()}}}
	if err := s.kube.Client.Create(context.Background(), spc); err != nil {
		t.Fatal(err)
	}
}

// secretSync creates a SecretSync of class spc as service account sa,
// mapping each file to a key of the same name.
func (s *stack) secretSync(t testing.TB, ns, name, spc, sa string, mod func(*syncv1.SecretSync), files ...string) *syncv1.SecretSync {
	t.Helper()
	ss := &syncv1.SecretSync{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: syncv1.SecretSyncSpec{SecretProviderClassName: spc, ServiceAccountName: sa, SecretObject: syncv1.SecretObject{Type: "Opaque"}}}
	for _, f := range files {
		ss.Spec.SecretObject.Data = append(ss.Spec.SecretObject.Data, syncv1.SecretObjectData{SourcePath: f, TargetKey: f})
	}
	if mod != nil {
		mod(ss)
	}
	if err := s.kube.Client.Create(context.Background(), ss); err != nil {
		t.Fatal(err)
	}
	return ss
}

func (s *stack) getSync(t testing.TB, ns, name string) *syncv1.SecretSync {
	t.Helper()
	ss := &syncv1.SecretSync{}
	if err := s.kube.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, ss); err != nil {
		t.Fatal(err)
	}
	return ss
}

// secret returns a Secret, or nil if there is none.
func (s *stack) secret(t testing.TB, ns, name string) *corev1.Secret {
	t.Helper()
	sec := &corev1.Secret{}
	err := s.kube.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, sec)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// waitSecret waits until Secret ns/name has data[key] == want.
func (s *stack) waitSecret(t testing.TB, ns, name, key, want string, within time.Duration) *corev1.Secret {
	t.Helper()
	var last *corev1.Secret
	eventually(t, within, "Secret "+ns+"/"+name+" to hold "+key+"="+want, func() bool {
		last = s.secret(t, ns, name)
		return last != nil && string(last.Data[key]) == want
	}, func() string { return s.describe(t, ns, name) })
	return last
}

// waitCondition waits until the SecretSync's condition typ has status and
// reason, and returns it.
func (s *stack) waitCondition(t testing.TB, ns, name, typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	var got metav1.Condition
	eventually(t, time.Minute, "SecretSync "+ns+"/"+name+" condition "+typ+"="+string(status)+" ("+reason+")", func() bool {
		c := meta.FindStatusCondition(s.getSync(t, ns, name).Status.Conditions, typ)
		if c != nil && c.Status == status && c.Reason == reason {
			got = *c
			return true
		}
		return false
	}, func() string { return s.describe(t, ns, name) })
	return got
}

// waitEvent waits for an event of reason on the SecretSync, and returns
// its message.
func (s *stack) waitEvent(t testing.TB, ns, name, reason string) string {
	t.Helper()
	var msg string
	eventually(t, time.Minute, "event "+reason+" on SecretSync "+name, func() bool {
		list, err := s.kube.Clientset.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Reason == reason && e.InvolvedObject.Kind == "SecretSync" {
				msg = e.Message
				return true
			}
		}
		return false
	}, func() string { return s.describe(t, ns, name) })
	return msg
}

// describe is a SecretSync's status and its Secret's metadata, for
// failure messages (no values).
func (s *stack) describe(t testing.TB, ns, name string) string {
	ss := &syncv1.SecretSync{}
	if err := s.kube.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, ss); err != nil {
		return "no SecretSync: " + err.Error()
	}
	b, _ := yaml.Marshal(ss.Status)
	out := "status:\n" + string(b)
	if sec := s.secret(t, ns, name); sec != nil {
		keys := make([]string, 0, len(sec.Data))
		for k := range sec.Data {
			keys = append(keys, k)
		}
		out += "secret labels " + labelsOf(sec) + "; keys " + strings.Join(keys, ",")
	}
	return out
}

func labelsOf(s *corev1.Secret) string {
	var parts []string
	for k, v := range s.Labels {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// eventually polls cond until it holds, or fails after within with why's
// account.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			msg := "timed out waiting for " + what
			if why != nil {
				msg += "\n" + why()
			}
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// saConfig is a client configuration that authenticates as service
// account ns/name with a TokenRequest token, for RBAC and admission tests.
func (s *stack) saConfig(t testing.TB, ns, name string) *rest.Config {
	t.Helper()
	exp := int64(3600)
	tr, err := s.kube.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := rest.AnonymousClientConfig(s.kube.Config)
	c.BearerToken = tr.Status.Token
	return c
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// force sets a SecretSync's forceSynchronization, retrying on conflicts
// with the controller's status writes.
func (s *stack) force(t testing.TB, ns, name, value string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ss := s.getSync(t, ns, name)
		ss.Spec.ForceSynchronization = value
		return s.kube.Client.Update(context.Background(), ss)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// httpGet returns the body of a GET.
func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
