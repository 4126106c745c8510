package sync

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Deleting a SecretSync deletes its Secret (the garbage collector, which
// runs here, follows the owner reference); with
// coffer.dev/deletion-policy=Retain the Secret stays, as an ordinary
// Secret. A Secret is never collected while its SecretSync exists.
func TestDeletionWithAndWithoutRetain(t *testing.T) {
	s := startStack(t)
	s.kube.StartControllers(t, "garbagecollector")
	_, dir := startFake(t, "fake", map[string]string{"key": "v"})
	s.serviceAccount(t, "default", "app")
	s.apply(t, "default", "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: fake\nspec:\n  provider: fake\n")
	s.secretSync(t, "default", "goes", "fake", "app", nil, "key")
	s.secretSync(t, "default", "stays", "fake", "app", nil, "key")
	s.secretSync(t, "default", "kept", "fake", "app", func(ss *syncv1.SecretSync) {
		ss.Annotations = map[string]string{syncv1.DeletionPolicyAnnotation: syncv1.DeletionPolicyRetain}
	}, "key")
	startController(t, s.controllerOptions(dir))
	for _, n := range []string{"goes", "stays", "kept"} {
		s.waitSecret(t, "default", n, "key", "v", time.Minute)
	}
	stays := s.secret(t, "default", "stays")
	eventually(t, time.Minute, "the retain finalizer", func() bool {
		return controllerutil.ContainsFinalizer(s.getSync(t, "default", "kept"), syncv1.RetainFinalizer)
	}, nil)

	ctx := context.Background()
	if err := s.kube.Client.Delete(ctx, s.getSync(t, "default", "goes")); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the garbage collector to delete the Secret of the deleted SecretSync", func() bool {
		return s.secret(t, "default", "goes") == nil
	}, nil)
	if err := s.kube.Client.Delete(ctx, s.getSync(t, "default", "kept")); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the retained SecretSync to go", func() bool {
		err := s.kube.Client.Get(ctx, key("default", "kept"), &syncv1.SecretSync{})
		return err != nil
	}, nil)
	kept := s.secret(t, "default", "kept")
	if kept == nil {
		t.Fatal("the Secret of a SecretSync deleted with Retain is gone")
	}
	if _, ok := kept.Labels[syncv1.SecretLabel]; ok || len(kept.OwnerReferences) != 0 || string(kept.Data["key"]) != "v" {
		t.Fatalf("the retained Secret is still managed: labels %v owners %v", kept.Labels, kept.OwnerReferences)
	}
	s.waitEvent(t, "default", "kept", "SecretRetained")

	// By now the collector has processed the deletions around it: the
	// Secret of the SecretSync that stays is the one it was.
	if got := s.secret(t, "default", "stays"); got == nil || got.UID != stays.UID {
		t.Fatal("the Secret of a live SecretSync was collected")
	}
}

// Two replicas: one holds the Lease and writes; the other writes nothing
// while it waits; when the leader stops it gives the Lease up and the
// other takes over.
func TestTwoReplicasNeverBothWrite(t *testing.T) {
	s := startStack(t)
	mock, dir := startFake(t, "fake", map[string]string{"key": "v0"})
	s.serviceAccount(t, "default", "app")
	s.apply(t, "default", "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: fake\nspec:\n  provider: fake\n")
	s.secretSync(t, "default", "replicated", "fake", "app", nil, "key")
	a := startController(t, s.controllerOptions(dir))
	s.waitSecret(t, "default", "replicated", "key", "v0", time.Minute)
	holderA := s.leaseHolder(t)
	b := startController(t, s.controllerOptions(dir))
	for i := 1; i <= 3; i++ {
		v := fmt.Sprintf("v%d", i)
		setFakeFiles(mock, map[string]string{"key": v})
		s.force(t, "default", "replicated", v)
		s.waitSecret(t, "default", "replicated", "key", v, time.Minute)
	}
	if w := b.writes(t); w != 0 {
		t.Fatalf("the replica that is not the leader wrote %v times", w)
	}
	if a.writes(t) < 4 {
		t.Fatalf("the leader wrote %v times", a.writes(t))
	}
	if s.leaseHolder(t) != holderA {
		t.Fatal("the lease changed hands while the leader ran")
	}

	a.stop()
	aWrites := a.writes(t)
	eventually(t, time.Minute, "the other replica to take the lease", func() bool {
		h := s.leaseHolder(t)
		return h != "" && h != holderA
	}, nil)
	setFakeFiles(mock, map[string]string{"key": "after"})
	s.force(t, "default", "replicated", "after")
	s.waitSecret(t, "default", "replicated", "key", "after", time.Minute)
	if b.writes(t) == 0 || a.writes(t) != aWrites {
		t.Fatalf("after the handover: new leader %v writes, old %v (was %v)", b.writes(t), a.writes(t), aWrites)
	}
}

// leaseHolder is the controller's Lease's holder, or "".
func (s *stack) leaseHolder(t testing.TB) string {
	t.Helper()
	l := &coordinationv1.Lease{}
	if err := s.kube.Client.Get(context.Background(), key(controllerNS, "coffer-sync-controller"), l); err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}
