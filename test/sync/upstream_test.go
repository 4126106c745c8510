package sync

import (
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
	"github.com/cofferhq/coffer/internal/sync/controller"
	"github.com/cofferhq/coffer/internal/testing/testpath"
)

// upstreamReadme returns the upstream README's two manifests, with the
// service account substituted as its shell heredoc does.
func upstreamReadme(t testing.TB, serviceAccount string) (spc, secretSync string) {
	t.Helper()
	b, err := os.ReadFile(testpath.Repo(t, "test/sync/testdata/upstream-readme.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(strings.ReplaceAll(string(b), "${SERVICE_ACCOUNT_NAME}", serviceAccount), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("testdata/upstream-readme.yaml has %d documents, want 2", len(docs))
	}
	return docs[0], docs[1]
}

// checkSynced checks what every synced Secret carries: the controller's
// label, the SecretSync as its one controlling owner, and the type.
func checkSynced(t testing.TB, sec *corev1.Secret, ss *syncv1.SecretSync, typ corev1.SecretType) {
	t.Helper()
	if sec.Labels[syncv1.SecretLabel] != ss.Name {
		t.Errorf("labels %v: want %s=%s", sec.Labels, syncv1.SecretLabel, ss.Name)
	}
	o := sec.OwnerReferences
	if len(o) != 1 || o[0].Kind != "SecretSync" || o[0].APIVersion != "secret-sync.x-k8s.io/v1alpha1" || o[0].Name != ss.Name || o[0].UID != ss.UID || o[0].Controller == nil || !*o[0].Controller {
		t.Errorf("owners %+v: want the SecretSync alone, as controller", o)
	}
	if sec.Type != typ {
		t.Errorf("type %s, want %s", sec.Type, typ)
	}
	if len(sec.ManagedFields) == 0 || sec.ManagedFields[0].Manager != controller.FieldManager {
		t.Errorf("managedFields %+v: want the writes named %s", sec.ManagedFields, controller.FieldManager)
	}
}

// The upstream README's SecretProviderClass and SecretSync apply unchanged
// to the real apiserver (with Coffer's CRDs), and, with the upstream
// module's fake provider serving as their e2e-provider, the Secret
// appears: no pod anywhere.
func TestUpstreamReadmeWithUpstreamFakeProvider(t *testing.T) {
	s := startStack(t)
	_, fakeDir := startFake(t, "e2e-provider", map[string]string{"foo": "from the upstream fake provider"})
	s.serviceAccount(t, "default", "sync-sa")
	spc, ss := upstreamReadme(t, "sync-sa")
	s.apply(t, "default", spc)
	s.apply(t, "default", ss)
	o := s.controllerOptions(fakeDir)
	startController(t, o)

	sec := s.waitSecret(t, "default", "sse2esecret", "bar", "from the upstream fake provider", time.Minute)
	synced := s.getSync(t, "default", "sse2esecret")
	checkSynced(t, sec, synced, corev1.SecretTypeOpaque)
	s.waitCondition(t, "default", "sse2esecret", syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded)
	c := s.waitCondition(t, "default", "sse2esecret", syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonNoValueChange)
	if c.ObservedGeneration != synced.Generation {
		t.Errorf("observedGeneration %d, generation %d", c.ObservedGeneration, synced.Generation)
	}
	st := s.getSync(t, "default", "sse2esecret").Status
	if len(st.SyncHash) != 64 || st.LastSuccessfulSyncTime == nil {
		t.Errorf("status %+v", st)
	}
	if msg := s.waitEvent(t, "default", "sse2esecret", syncv1.ReasonCreateSucceeded); !strings.Contains(msg, "default/sse2esecret") {
		t.Errorf("event %q", msg)
	}
}

// The README's SecretSync, unchanged, with a class for Coffer's provider
// (the README's class is its e2e provider's): the live vault's value
// reaches the Secret through workload identity, with the service
// account's TokenRequest token.
func TestUpstreamReadmeSecretSyncWithCoffersProvider(t *testing.T) {
	s := startStack(t)
	s.serviceAccount(t, "default", "sync-sa")
	mi := s.workloadIdentity(t, "default", "sync-sa", "get")
	s.setSecret(t, "foo", "from the vault")
	s.coffersClass(t, "default", "e2e-providerspc", mi.ClientID, "foo")
	_, ss := upstreamReadme(t, "sync-sa")
	s.apply(t, "default", ss)
	startController(t, s.controllerOptions())

	sec := s.waitSecret(t, "default", "sse2esecret", "bar", "from the vault", time.Minute)
	checkSynced(t, sec, s.getSync(t, "default", "sse2esecret"), corev1.SecretTypeOpaque)
	s.waitCondition(t, "default", "sse2esecret", syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded)
}
