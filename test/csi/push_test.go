package csi

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// waitWatched waits until the vault holds reads of n objects.
func (s *stack) waitWatched(t testing.TB, n int, why string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.env.Server.Changes().Watching() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the vault holds reads of %d objects, want %d", why, s.env.Server.Changes().Watching(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Push rotation: with a rotation interval of an hour, a changed secret
// still reaches the mounted file at once, because the provider holds a
// read of each mounted object on the vault and reports the volume to the
// driver when one changes. Unpublishing ends the held reads.
func TestPushRotation(t *testing.T) {
	s := startStack(t, stackOptions{rotation: time.Hour, push: true})
	ctx := context.Background()
	s.serviceAccount(t, "default", "default")
	mi := s.workloadIdentity(t, "default", "default")
	setSecret(t, s.env, "secret1", "one")
	setSecret(t, s.env, "secret2", "two")
	s.apply(t, fill(seed000, map[string]string{"clientID": mi.ClientID, "tenant": s.env.State.TenantID}))
	pod := s.pod(t, "default", "busybox-secrets-store-inline-system-msi")
	req := s.publishRequest(t, pod, "secrets-store01-inline")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	s.waitWatched(t, 2, "after the mount")
	file := filepath.Join(req.TargetPath, "SECRET_1")
	for i, value := range []string{"one, pushed", "one, pushed again"} {
		start := time.Now()
		setSecret(t, s.env, "secret1", value)
		deadline := time.Now().Add(20 * time.Second)
		for readFile(t, file) != value {
			if time.Now().After(deadline) {
				t.Fatalf("change %d did not reach the volume; its interval is an hour, so only a push could have", i+1)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("change %d reached the mounted file %v after the vault acknowledged it", i+1, time.Since(start).Round(time.Millisecond))
		// The remount re-registers the volume: both objects stay watched.
		s.waitWatched(t, 2, "after the push")
	}
	if got := readFile(t, filepath.Join(req.TargetPath, "SECRET_2")); got != "two" {
		t.Fatalf("SECRET_2 = %q", got)
	}
	s.waitEvent(t, "default", pod.Name, "MountRotationComplete")
	if n := testutil.ToFloat64(metricVec(t, s.provider.Reg, "coffer_provider_pushes_total")); n < 2 {
		t.Fatalf("the provider counted %v pushes, want 2", n)
	}

	// A restarted provider knows no volume: the driver reconnects and
	// checks its volumes, which registers them again, and a change made
	// meanwhile is not lost.
	s.provider.restart()
	setSecret(t, s.env, "secret1", "one, while the provider restarted")
	deadline := time.Now().Add(30 * time.Second)
	for readFile(t, file) != "one, while the provider restarted" {
		if time.Now().After(deadline) {
			t.Fatal("the driver did not check its volumes after the provider restarted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.waitWatched(t, 2, "after the provider restarted")
	setSecret(t, s.env, "secret1", "one, pushed after the restart")
	deadline = time.Now().Add(20 * time.Second)
	for readFile(t, file) != "one, pushed after the restart" {
		if time.Now().After(deadline) {
			t.Fatal("no push after the provider restarted")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
	s.waitWatched(t, 0, "after the unpublish")
}
