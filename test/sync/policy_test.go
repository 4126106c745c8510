package sync

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
	"github.com/cofferhq/coffer/internal/testing/chartrender"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

// installChartPolicies creates the chart's sync-controller identity, RBAC
// and admission policies (rendered with Helm's library, serving namespace
// default), everything but its Deployment: the test runs the controller
// itself, as that service account.
func (s *stack) installChartPolicies(t testing.TB) {
	t.Helper()
	c, err := chartrender.Load(testpath.Repo(t, "deploy/helm/coffer"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := chartrender.Render(c, "coffer", controllerNS, map[string]any{
		"tenantID": "11111111-2222-3333-4444-555555555555", "server": map[string]any{"enabled": false, "dnsSuffix": "vault.example.com"},
		"linux": map[string]any{"enabled": false}, "provider": map[string]any{"enabled": false},
		"nodeAgent": map[string]any{"enabled": false}, "webhook": map[string]any{"enabled": false},
		"syncController": map[string]any{"enabled": true, "namespaces": []any{"default"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			continue
		}
		if err := s.kube.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		if o.GetKind() == "ValidatingAdmissionPolicy" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("the chart has %d admission policies for the sync controller, want 3", n)
	}
	// Policies take effect asynchronously: wait until a labelled Secret
	// from someone else is refused.
	probe := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "probe", Labels: map[string]string{syncv1.SecretLabel: "probe"}}}
	eventually(t, time.Minute, "the admission policies to be enforced", func() bool {
		err := s.kube.Client.Create(context.Background(), probe.DeepCopy())
		if err == nil {
			s.kube.Client.Delete(context.Background(), probe)
			return false
		}
		return strings.Contains(err.Error(), "ValidatingAdmissionPolicy")
	}, nil)
}

// The chart's ValidatingAdmissionPolicies, enforced by the real apiserver,
// with the controller running as the chart's service account under the
// chart's RBAC: nobody else may change a synced Secret; the controller may
// not write a foreign Secret or a refused type, nor mint other tokens;
// and it has no token rights outside the namespaces it serves.
func TestAdmissionPolicies(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	s.namespace(t, "other")
	s.serviceAccount(t, "other", "app")
	s.installChartPolicies(t)
	s.serviceAccount(t, "default", "app")
	mi := s.workloadIdentity(t, "default", "app", "get")
	s.setSecret(t, "db", "from the vault")
	s.coffersClass(t, "default", "vault", mi.ClientID, "db")
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "users-own"}, Data: map[string][]byte{"k": []byte("mine")}}
	if err := s.kube.Client.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	// A SecretSync in a namespace the controller does not serve, there
	// before it starts: it is in the controller's cluster-wide watch of
	// SecretSyncs, and left alone.
	s.coffersClass(t, "other", "vault", mi.ClientID, "db")
	s.secretSync(t, "other", "unserved", "vault", "app", nil, "db")
	controllerConfig := s.saConfig(t, controllerNS, "coffer-sync-controller")
	o := s.controllerOptions()
	o.Kube = controllerConfig
	startController(t, o)

	// Allowed: the controller syncs, under the policies and its RBAC.
	s.secretSync(t, "default", "db", "vault", "app", nil, "db")
	synced := s.waitSecret(t, "default", "db", "db", "from the vault", time.Minute)
	if st := s.getSync(t, "other", "unserved").Status; len(st.Conditions) != 0 || s.secret(t, "other", "unserved") != nil {
		t.Fatalf("a SecretSync of a namespace not served was synced: %+v", st)
	}

	// A user's edit of the synced Secret is refused, even an
	// administrator's (policies bind system:masters too).
	edit := synced.DeepCopy()
	edit.Data["db"] = []byte("edited by hand")
	err := s.kube.Client.Update(ctx, edit)
	if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "only the sync controller may change it") {
		t.Fatalf("a user's edit of a synced Secret: %v", err)
	}
	relabel := synced.DeepCopy()
	delete(relabel.Labels, syncv1.SecretLabel)
	if err := s.kube.Client.Update(ctx, relabel); err == nil {
		t.Fatal("a user removed the controller's label")
	}
	forged := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "forged", Labels: map[string]string{syncv1.SecretLabel: "forged"}}}
	if err := s.kube.Client.Create(ctx, forged); err == nil || !strings.Contains(err.Error(), "only the sync controller creates") {
		t.Fatalf("a user created a labelled Secret: %v", err)
	}
	// Owners may change (the garbage collector removes dangling ones).
	owners := s.secret(t, "default", "db")
	owners.OwnerReferences = append(owners.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "gone", UID: "00000000-0000-0000-0000-000000000001"})
	if err := s.kube.Client.Update(ctx, owners); err != nil {
		t.Fatalf("an owner change: %v", err)
	}
	if got := s.secret(t, "default", "db"); string(got.Data["db"]) != "from the vault" {
		t.Fatal("the synced Secret changed")
	}

	// The controller's own writes: a type outside the allowed list is
	// refused by the policy, and the SecretSync says so.
	s.secretSync(t, "default", "sa-token", "vault", "app", func(ss *syncv1.SecretSync) {
		ss.Spec.SecretObject.Type = string(corev1.SecretTypeServiceAccountToken)
		ss.Spec.SecretObject.Annotations = map[string]string{corev1.ServiceAccountNameKey: "app"}
	}, "db")
	c := s.waitCondition(t, "default", "sa-token", syncv1.ConditionCreate, metav1.ConditionFalse, syncv1.ReasonValidatingAdmissionPolicyCheckFailed)
	if !strings.Contains(c.Message, "kubernetes.io/service-account-token") {
		t.Errorf("condition %q", c.Message)
	}
	if s.secret(t, "default", "sa-token") != nil {
		t.Fatal("a service-account-token Secret was written")
	}
	s.secretSync(t, "default", "custom-type", "vault", "app", typed("example.com/custom"), "db")
	s.waitCondition(t, "default", "custom-type", syncv1.ConditionCreate, metav1.ConditionFalse, syncv1.ReasonValidatingAdmissionPolicyCheckFailed)

	// As the controller, directly: no foreign Secret may be changed, and
	// no Secret created without its label.
	cc, err := client.New(controllerConfig, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	own := &corev1.Secret{}
	if err := s.kube.Client.Get(ctx, key("default", "users-own"), own); err != nil {
		t.Fatal(err)
	}
	own.Data["k"] = []byte("taken over")
	if err := cc.Update(ctx, own); err == nil || !strings.Contains(err.Error(), "does not carry") {
		t.Fatalf("the controller changed a foreign Secret: %v", err)
	}
	own.Labels = map[string]string{syncv1.SecretLabel: "users-own"}
	if err := cc.Update(ctx, own); err == nil {
		t.Fatal("the controller adopted a foreign Secret by labelling it")
	}
	if err := cc.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "unlabelled"}}); err == nil {
		t.Fatal("the controller created an unlabelled Secret")
	}

	// Its tokens: only the configured audience and lifetime, and only in
	// the namespaces it serves (RBAC).
	cs, err := kubernetes.NewForConfig(controllerConfig)
	if err != nil {
		t.Fatal(err)
	}
	token := func(ns string, aud string, seconds int64) error {
		_, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "app", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{aud}, ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
		return err
	}
	if err := token("default", "api://AzureADTokenExchange", 600); err != nil {
		t.Fatalf("the controller's own kind of token: %v", err)
	}
	if err := token("default", "https://kubernetes.default.svc", 600); err == nil || !strings.Contains(err.Error(), "one configured audience") {
		t.Fatalf("another audience: %v", err)
	}
	if err := token("default", "api://AzureADTokenExchange", 86400); err == nil || !strings.Contains(err.Error(), "600 seconds") {
		t.Fatalf("a day's token: %v", err)
	}
	if err := token("other", "api://AzureADTokenExchange", 600); err == nil || !apierrors.IsForbidden(err) {
		t.Fatalf("a token in a namespace it does not serve: %v", err)
	}
}
