package csi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/testserver"
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
	s.provider.Restart()
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
// get secrets (its credentials in Secret creds), and pods that use it; it
// returns the service principal.
func (s *stack) spClass(t testing.TB, class string, objs []string, pods ...string) mgmthttp.SPOut {
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
	return sp
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
	s.provider.Restart()
	setSecret(t, s.env, "pushed", "while restarting")
	waitFile(t, filepath.Join(req.TargetPath, "pushed"), "while restarting", 30*time.Second, "the volume was not refreshed after the provider restarted")
	s.waitWatched(t, 1, "after the refresh")
}

// Push rotation moves a changed value over the network once. With the
// vault watch, the watch's record carries no value; the pushed volume's
// mount reads the object (a conditional read, answered with the new
// value), and nothing else reads it. With held reads (a server without
// the watch), the held read's answer carries the value, and the driver's
// follow-up mount is a conditional read, which the vault still
// authenticates and authorizes for the volume's identity, answered 304.
// Counted on the vault's side, in its audit log: before the held read's
// answer was kept, each change cost two answers with the value.
func TestPushRotationTransfersEachValueOnce(t *testing.T) {
	tests := map[string]struct {
		noVaultWatch    bool
		wantConditional func(int) bool
		want            string
	}{
		"vault watch": {wantConditional: func(n int) bool { return n == 0 }, want: "no other read"},
		"held reads":  {noVaultWatch: true, wantConditional: func(n int) bool { return n >= 1 }, want: "the mount's read answered 304"},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			s := pushStackWith(t, stackOptions{rotation: time.Hour, push: true, noVaultWatch: test.noVaultWatch}, "once")
			req := s.publishRequest(t, s.pod(t, "default", "once"), "secrets")
			if _, err := s.node.NodePublishVolume(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			s.waitWatched(t, 1, "after the mount")
			file := filepath.Join(req.TargetPath, "pushed")
			prev := auditedReads(t, s.env, "secrets/pushed")
			for i := range 3 {
				value := fmt.Sprintf("v%d", i+1)
				setSecret(t, s.env, "pushed", value)
				waitFile(t, file, value, 20*time.Second, "change "+value+" did not arrive")
				// Every read of this change ended before the file was written.
				now := auditedReads(t, s.env, "secrets/pushed")
				transfers, conditional := now.transfers-prev.transfers, now.conditional-prev.conditional
				prev = now
				if transfers != 1 || !test.wantConditional(conditional) {
					t.Fatalf("change %s: the vault sent the value %d times and answered %d conditional reads 304; want once, and %s", value, transfers, conditional, test.want)
				}
				t.Logf("change %s: %d value transfer, %d conditional read answered 304", value, transfers, conditional)
			}
		})
	}
}

// reads counts the vault's answers to reads of an object.
type reads struct {
	transfers   int // 200s: each carried the value
	conditional int // 304s: authorized, without the value
}

// auditedReads counts, in the vault's audit log, the reads of object
// ("secrets/name") at its latest version answered so far. The log is
// written asynchronously, in the order requests end: a read of another
// object, made now, marks how far it must have been written.
func auditedReads(t testing.TB, env *testserver.Env, object string) reads {
	t.Helper()
	sc, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("audit-marker-%d", time.Now().UnixNano())
	if _, err := sc.GetSecret(context.Background(), marker, "", nil); err == nil {
		t.Fatalf("secret %s exists", marker)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, ok := readsBefore(t, env, object, "secrets/"+marker); ok {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("the audit log does not record a read made 20 s ago")
		}
	}
}

// readsBefore counts the reads of object in the audit log before the
// line of marker, and reports whether that line is there.
func readsBefore(t testing.TB, env *testserver.Env, object, marker string) (reads, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var c reads
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e struct {
			Vault, Object, Version, Method, Decision string
			Status                                   int
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // a line being written
		}
		switch {
		case e.Vault != "demo" || e.Version != "" || e.Method != http.MethodGet:
		case e.Object == marker:
			return c, true
		case e.Object != object || e.Decision != "allow":
		case e.Status == http.StatusOK:
			c.transfers++
		case e.Status == http.StatusNotModified:
			c.conditional++
		}
	}
	return c, false
}
