package sync

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Push refresh: with a poll interval of an hour, a change in the vault
// still reaches the Secret, because Coffer's provider holds a read of the
// object and reports the SecretSync when it changes. The time is logged
// (make bench measures it); the test asserts only that the change comes.
func TestPushRefresh(t *testing.T) {
	s := startStack(t)
	s.serviceAccount(t, "default", "app")
	mi := s.workloadIdentity(t, "default", "app", "get")
	s.setSecret(t, "db-password", "v0")
	s.coffersClass(t, "default", "vault", mi.ClientID, "db-password")
	s.secretSync(t, "default", "db", "vault", "app", nil, "db-password")
	c := startController(t, s.controllerOptions())
	s.waitSecret(t, "default", "db", "db-password", "v0", time.Minute)
	s.waitWatched(t, 1)
	for i := 1; i <= 3; i++ {
		value := fmt.Sprintf("v%d, pushed", i)
		start := time.Now()
		s.setSecret(t, "db-password", value)
		s.waitSecret(t, "default", "db", "db-password", value, 20*time.Second)
		t.Logf("change %d reached the Secret %v after the vault acknowledged it", i, time.Since(start).Round(time.Millisecond))
		s.waitCondition(t, "default", "db", syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonValueChangeOrForceUpdateDetected)
		s.waitWatched(t, 1)
	}
	// The metrics are recorded once the sync is done, a moment after the
	// Secret's write.
	eventually(t, 10*time.Second, "3 pushes and 3 push latencies counted", func() bool {
		return sumMetric(t, c.d.Registry, "coffer_sync_pushes_total") >= 3 && sumMetric(t, c.d.Registry, "coffer_sync_push_to_secret_seconds") >= 3
	}, nil)
	// The listener serves them, with controller-runtime's and the
	// process's.
	body, err := httpGet("http://" + c.d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, series := range []string{`coffer_sync_syncs_total{result="updated"}`, "coffer_sync_push_to_secret_seconds_count", "workqueue_depth", "leader_election_master_status", "process_resident_memory_bytes"} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics has no %s", series)
		}
	}
}

// waitWatched waits until the vault holds reads of n objects: the
// provider watches what the last sync read.
func (s *stack) waitWatched(t testing.TB, n int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("the vault to hold reads of %d objects", n), func() bool {
		return s.env.Server.Changes().Watching() == n
	}, func() string { return fmt.Sprintf("it holds %d", s.env.Server.Changes().Watching()) })
}

// forceSynchronization: the upstream fake provider never pushes and the
// poll interval is an hour, so only a change of the field can bring the
// provider's new content to the Secret.
func TestForceSynchronization(t *testing.T) {
	s := startStack(t)
	mock, dir := startFake(t, "fake", map[string]string{"key": "one"})
	s.serviceAccount(t, "default", "app")
	s.apply(t, "default", "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: fake\nspec:\n  provider: fake\n")
	s.secretSync(t, "default", "forced", "fake", "app", nil, "key")
	startController(t, s.controllerOptions(dir))
	s.waitSecret(t, "default", "forced", "key", "one", time.Minute)
	before := s.getSync(t, "default", "forced").Status

	setFakeFiles(mock, map[string]string{"key": "two"})
	s.force(t, "default", "forced", "rotate-1")
	s.waitSecret(t, "default", "forced", "key", "two", time.Minute)
	s.waitCondition(t, "default", "forced", syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonValueChangeOrForceUpdateDetected)
	after := s.getSync(t, "default", "forced").Status
	if after.SyncHash == before.SyncHash {
		t.Error("syncHash did not change")
	}

	// The same content, forced again: a fresh fetch, the Secret as it
	// was, and the hash moves (forceSynchronization is part of it).
	s.force(t, "default", "forced", "rotate-2")
	eventually(t, time.Minute, "the second force to be synced", func() bool {
		return s.getSync(t, "default", "forced").Status.SyncHash != after.SyncHash
	}, nil)
}

// A change of the class resyncs its SecretSyncs at once.
func TestClassChangeResyncs(t *testing.T) {
	s := startStack(t)
	mock, dir := startFake(t, "fake", map[string]string{"key": "one"})
	s.serviceAccount(t, "default", "app")
	s.apply(t, "default", "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: fake\nspec:\n  provider: fake\n  parameters:\n    revision: \"1\"\n")
	s.secretSync(t, "default", "by-class", "fake", "app", nil, "key")
	startController(t, s.controllerOptions(dir))
	s.waitSecret(t, "default", "by-class", "key", "one", time.Minute)

	setFakeFiles(mock, map[string]string{"key": "two"})
	spc := &secretsstorev1.SecretProviderClass{}
	if err := s.kube.Client.Get(context.Background(), key("default", "fake"), spc); err != nil {
		t.Fatal(err)
	}
	spc.Spec.Parameters["revision"] = "2"
	if err := s.kube.Client.Update(context.Background(), spc); err != nil {
		t.Fatal(err)
	}
	s.waitSecret(t, "default", "by-class", "key", "two", time.Minute)
}
