package csi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
)

// waitFile waits until path holds want (it may not exist yet), or fails
// with why.
func waitFile(t testing.TB, path, want string, within time.Duration, why string) {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(path)
		if err == nil && string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s holds %q (%v)", why, filepath.Base(path), b, err)
		}
	}
}

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
	s, pod, req := mountedSeed000(t, stackOptions{rotation: time.Hour, push: true})
	ctx := context.Background()
	s.waitWatched(t, 2, "after the mount")
	file := filepath.Join(req.TargetPath, "SECRET_1")
	for i, value := range []string{"one, pushed", "one, pushed again"} {
		start := time.Now()
		setSecret(t, s.env, "secret1", value)
		waitFile(t, file, value, 20*time.Second, fmt.Sprintf("change %d did not reach the volume; its interval is an hour, so only a push could have", i+1))
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
	waitFile(t, file, "one, while the provider restarted", 30*time.Second, "the driver did not check its volumes after the provider restarted")
	s.waitWatched(t, 2, "after the provider restarted")
	setSecret(t, s.env, "secret1", "one, pushed after the restart")
	waitFile(t, file, "one, pushed after the restart", 20*time.Second, "no push after the provider restarted")
	if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
	s.waitWatched(t, 0, "after the unpublish")
}

// pushStack starts a stack with push rotation and an hour's interval, and
// a class "push" that mounts secret "pushed" (= "v0") with a service
// principal, used by the given pods.
func pushStack(t testing.TB, pods ...string) *stack {
	t.Helper()
	return pushStackWith(t, stackOptions{rotation: time.Hour, push: true}, pods...)
}

// pushStackWith is pushStack with other options.
func pushStackWith(t testing.TB, o stackOptions, pods ...string) *stack {
	t.Helper()
	s := startStack(t, o)
	setSecret(t, s.env, "pushed", "v0")
	s.spClass(t, "push", []string{"objectName: pushed\nobjectType: secret"}, pods...)
	return s
}

// spClass creates a class of objs, read by a service principal allowed to
// get secrets (its credentials in Secret creds), and pods that use it.
func (s *stack) spClass(t testing.TB, class string, objs []string, pods ...string) {
	t.Helper()
	s.serviceAccount(t, "default", "default")
	sp := servicePrincipal(t, s.env, "sp-"+class, []string{"get"}, nil, nil)
	creds := &corev1.Secret{ObjectMeta: objectMeta("default", "creds"), StringData: map[string]string{"clientid": sp.AppID, "clientsecret": sp.Password}}
	if err := s.kube.Client.Create(context.Background(), creds); err != nil {
		t.Fatal(err)
	}
	for i, pod := range pods {
		manifest := fill(podWithVolume, map[string]string{"pod": pod, "usesClass": class}) + "      nodePublishSecretRef:\n        name: creds\n"
		if i == 0 {
			manifest = fill(classAndPod, map[string]string{"class": class, "usesClass": class, "pod": pod, "vault": "demo",
				"tenant": s.env.State.TenantID, "objects": indent(objects(objs...), "      ")})
		}
		s.apply(t, manifest)
	}
}

// The first mounts through a provider, made at once (a node or driver
// start), are all watched and pushed, end to end. That none goes ahead
// before the provider listens is shown deterministically by
// internal/csidriver's TestCallsWaitForTheProviderToListen: here, the
// provider listens within milliseconds, so this test would rarely see it.
func TestPushWatchesConcurrentFirstMounts(t *testing.T) {
	pods := []string{"first-a", "first-b", "first-c"}
	s := pushStack(t, pods...)
	reqs := make([]*csi.NodePublishVolumeRequest, len(pods))
	errs := make(chan error, len(pods))
	for i, pod := range pods {
		reqs[i] = s.publishRequest(t, s.pod(t, "default", pod), "secrets")
		go func() {
			_, err := s.node.NodePublishVolume(context.Background(), reqs[i])
			errs <- err
		}()
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
	}
	s.waitWatched(t, 1, "after the mounts")
	setSecret(t, s.env, "pushed", "v1")
	for i, req := range reqs {
		waitFile(t, filepath.Join(req.TargetPath, "pushed"), "v1", 20*time.Second, pods[i]+" was not pushed")
	}
}

// With no rotation tick (rotation on the kubelet's republishes only), a
// driver that reconnects to a restarted provider still refreshes its
// volumes at once, which registers them again.
func TestPushAfterProviderRestartWithoutTicks(t *testing.T) {
	s := pushStackWith(t, stackOptions{rotation: time.Hour, push: true, rotationTick: -1}, "solo")
	req := s.publishRequest(t, s.pod(t, "default", "solo"), "secrets")
	if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	s.waitWatched(t, 1, "after the mount")
	s.provider.restart()
	setSecret(t, s.env, "pushed", "while restarting")
	waitFile(t, filepath.Join(req.TargetPath, "pushed"), "while restarting", 30*time.Second, "the volume was not refreshed after the provider restarted")
	s.waitWatched(t, 1, "after the refresh")
}
