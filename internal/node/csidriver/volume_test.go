package csidriver

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/mount-utils"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/push"
)

// testProvider names the fake provider, and its socket.
const testProvider = "fake"

// t0 is the fake clock's start.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fakeProvider mounts one file per object, holding the object's version,
// and records the volumes it is told to forget. Its Push service sends
// nothing: the tests push by calling the driver.
type fakeProvider struct {
	v1alpha1.UnimplementedCSIDriverProviderServer

	mu       sync.Mutex
	versions map[string]string // by object id
	fail     bool
	mounts   int
	// mounting, when set, is called at the start of each Mount, outside mu.
	mounting func()

	forgot chan string
}

func (f *fakeProvider) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: testProvider, RuntimeVersion: "test"}, nil
}

func (f *fakeProvider) Mount(context.Context, *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	f.mu.Lock()
	hook := f.mounting
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts++
	if f.fail {
		return nil, status.Error(codes.Unavailable, "the vault is down")
	}
	resp := &v1alpha1.MountResponse{ObjectVersion: []*v1alpha1.ObjectVersion{}}
	for _, id := range slices.Sorted(maps.Keys(f.versions)) {
		resp.ObjectVersion = append(resp.ObjectVersion, &v1alpha1.ObjectVersion{Id: id, Version: f.versions[id]})
		resp.Files = append(resp.Files, &v1alpha1.File{Path: id, Mode: 0o644, Contents: []byte(f.versions[id])})
	}
	return resp, nil
}

func (f *fakeProvider) Watch(ctx context.Context, send func(string) error) error {
	if err := send(""); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func (f *fakeProvider) Forget(target string) {
	select {
	case f.forgot <- target:
	default:
	}
}

func (f *fakeProvider) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounts
}

// harness is a driver (push on, rotation every minute, a fake clock and
// mounter) and a fake provider on a unix socket, for one volume.
type harness struct {
	t        *testing.T
	cfg      Config
	d        *Driver
	provider *fakeProvider
	target   string
	requests int // NodePublishVolume calls so far, to tell requests apart

	clockMu sync.Mutex
	now     time.Time
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	sockets := filepath.Join(dir, "providers")
	if err := os.Mkdir(sockets, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(sockets, testProvider+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, now: t0, target: filepath.Join(dir, "pods", "uid", "volumes", "mount"),
		provider: &fakeProvider{versions: map[string]string{"a": "1"}, forgot: make(chan string, 16)}}
	srv := grpc.NewServer()
	v1alpha1.RegisterCSIDriverProviderServer(srv, h.provider)
	push.Register(srv, h.provider)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := secretsstorev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Name: "spc", Namespace: "default"},
		Spec: secretsstorev1.SecretProviderClassSpec{Provider: testProvider, Parameters: map[string]string{"objects": "a"}}}
	h.cfg = Config{Settings: Settings{NodeID: "node", ProviderDirs: []string{sockets}, RotationEnabled: true, RotationInterval: time.Minute, Push: true},
		Kube: fake.NewClientBuilder().WithScheme(scheme).WithObjects(spc).Build(), Mounter: mount.NewFakeMounter(nil),
		Log: slog.New(slog.DiscardHandler), Now: h.clock}
	h.start()
	return h
}

func (h *harness) clock() time.Time {
	h.clockMu.Lock()
	defer h.clockMu.Unlock()
	return h.now
}

// start makes a driver; it is stopped with the test.
func (h *harness) start() {
	d, err := New(h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.d = d
	h.t.Cleanup(func() {
		d.pushCancel()
		d.pushWG.Wait()
		d.providers.Close()
	})
}

// A step is one thing that happens to the volume.
type step func(h *harness) error

func steps(s ...step) step {
	return func(h *harness) error {
		for _, one := range s {
			if err := one(h); err != nil {
				return err
			}
		}
		return nil
	}
}

// publish is the kubelet's NodePublishVolume; each request names a new
// service account, so the test can tell which one the driver kept.
func publish(h *harness) error {
	h.requests++
	_, err := node{d: h.d}.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: "vol", TargetPath: h.target, Readonly: true, VolumeCapability: &csi.VolumeCapability{},
		VolumeContext: map[string]string{ctxSPC: "spc", ctxPodName: "pod", ctxPodNS: "default", ctxPodUID: "uid", ctxSAName: fmt.Sprint("sa-", h.requests)},
	})
	return err
}

func unpublish(h *harness) error {
	_, err := node{d: h.d}.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: h.target})
	return err
}

// answer makes the provider mount these object versions from now on.
func answer(versions map[string]string) step {
	return func(h *harness) error {
		h.provider.mu.Lock()
		h.provider.versions, h.provider.fail = versions, false
		h.provider.mu.Unlock()
		return nil
	}
}

// failing makes the provider's mounts fail from now on.
func failing(h *harness) error {
	h.provider.mu.Lock()
	h.provider.fail = true
	h.provider.mu.Unlock()
	return nil
}

func wait(d time.Duration) step {
	return func(h *harness) error {
		h.clockMu.Lock()
		h.now = h.now.Add(d)
		h.clockMu.Unlock()
		return nil
	}
}

// restart replaces the driver with a new one, which knows no volume; the
// mounts stay.
func restart(h *harness) error {
	h.start()
	return nil
}

// connected dials the provider, as any call to it does: a driver tells
// only the providers it is connected to to forget a volume, and a
// provider that pushes is connected.
func connected(h *harness) error {
	_, err := h.d.providers.Get(testProvider)
	return err
}

// caughtUp stands for the recorder having done every job so far.
func caughtUp(h *harness) error {
	h.d.recorder.forget(h.target)
	return nil
}

// pushBy is a push of the volume by provider.
func pushBy(provider string) step {
	return func(h *harness) error {
		h.d.pushed(provider, h.target)
		return nil
	}
}

// rotatePushes runs the rotation loop's handling of each queued push.
func rotatePushes(h *harness) error {
	for len(h.d.pushes) > 0 {
		h.d.rotatePushed(context.Background(), <-h.d.pushes)
	}
	return nil
}

// tick is the rotation loop's pass over the volume.
func tick(h *harness) error {
	h.d.rotateOne(context.Background(), h.target, false)
	return nil
}

// providerRestarted is what the push listener does when a provider's
// stream comes back.
func providerRestarted(h *harness) error {
	h.d.recheckAll()
	return nil
}

// forgotten waits for the provider to be told to forget the volume.
func forgotten(h *harness) error {
	select {
	case got := <-h.provider.forgot:
		if got != h.target {
			return fmt.Errorf("the provider was told to forget %s", got)
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("the provider was not told to forget the volume")
	}
}

// books is the recorder's pending job for the volume.
type books struct{ writeStatus, sync, rotation bool }

// state is what the driver holds for the volume.
type state struct {
	tracked   bool // in Driver.volumes at all
	published bool
	request   string // the service account of the request kept
	versions  map[string]string
	provider  string
	checked   time.Time
	synced    time.Time
}

func (h *harness) state() state {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	v, ok := h.d.volumes[h.target]
	if !ok {
		return state{}
	}
	s := state{tracked: true, published: v.req != nil, versions: v.versions, provider: v.provider, checked: v.lastCheck, synced: v.lastSync}
	if v.req != nil {
		s.request = v.req.serviceAccount
	}
	return s
}

func (h *harness) books() *books {
	h.d.recorder.mu.Lock()
	defer h.d.recorder.mu.Unlock()
	b, ok := h.d.recorder.pending[h.target]
	if !ok {
		return nil
	}
	return &books{writeStatus: b.writeStatus, sync: b.sync, rotation: b.rotation}
}

// files are the volume's files by name, nil if its directory is gone.
func (h *harness) files() map[string]string {
	current, err := os.ReadDir(h.target)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, e := range current {
		if e.Name()[0] == '.' {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.target, e.Name()))
		if err != nil {
			h.t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func at(d time.Duration) time.Time { return t0.Add(d) }

var (
	v1 = map[string]string{"a": "1"}
	v2 = map[string]string{"a": "2"}
)

// Each transition of a volume's state: the given steps bring the volume
// to a state, the step under test moves it, and the driver's state, the
// provider calls, the push queue, the recorder's job and the files are
// what they must be after it.
func TestVolumeTransitions(t *testing.T) {
	published := func(request string, versions map[string]string, checked, synced time.Time) state {
		return state{tracked: true, published: true, request: request, versions: versions, provider: testProvider, checked: checked, synced: synced}
	}
	for name, c := range map[string]struct {
		given []step
		when  step

		wantErr    bool
		want       state
		wantMounts int // the provider's Mount calls in the step
		wantQueued int
		wantBooks  *books
		wantFiles  map[string]string
		wantForget bool
	}{
		"a first publish publishes the volume": {
			when: publish, want: published("sa-1", v1, t0, t0), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true}, wantFiles: v1,
		},
		"a failed first publish leaves nothing": {
			given: []step{failing}, when: publish,
			wantErr: true, want: state{}, wantMounts: 1,
		},
		"a republish before the interval keeps the newest request only": {
			given: []step{publish, caughtUp, wait(30 * time.Second)}, when: publish,
			want: published("sa-2", v1, t0, t0), wantFiles: v1,
		},
		"a due republish with changed objects rotates and records": {
			given: []step{publish, caughtUp, wait(time.Minute), answer(v2)}, when: publish,
			want: published("sa-2", v2, at(time.Minute), at(time.Minute)), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true, rotation: true}, wantFiles: v2,
		},
		"a due republish with unchanged objects records nothing before the resync": {
			given: []step{publish, caughtUp, wait(time.Minute)}, when: publish,
			want: published("sa-2", v1, at(time.Minute), t0), wantMounts: 1, wantFiles: v1,
		},
		"a due republish after the resync interval syncs the Secrets only": {
			given: []step{publish, caughtUp, wait(resyncInterval)}, when: publish,
			want: published("sa-2", v1, at(resyncInterval), at(resyncInterval)), wantMounts: 1,
			wantBooks: &books{sync: true, rotation: true}, wantFiles: v1,
		},
		"a failed republish keeps the old files and state but the newest request": {
			given: []step{publish, caughtUp, wait(time.Minute), failing}, when: publish,
			want: published("sa-2", v1, at(time.Minute), t0), wantMounts: 1, wantFiles: v1,
		},
		"the first republish after a driver restart publishes and records": {
			given: []step{publish, caughtUp, restart, answer(v2)}, when: publish,
			want: published("sa-2", v2, t0, t0), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true, rotation: true}, wantFiles: v2,
		},
		"a restarted driver knows no volume until the kubelet republishes": {
			given: []step{publish}, when: restart, want: state{}, wantFiles: v1,
		},
		"an unpublish forgets the volume and its pending job": {
			given: []step{publish}, when: unpublish, want: state{}, wantForget: true,
		},
		"an unpublish of a volume the driver does not know": {
			given: []step{publish, restart, connected}, when: unpublish, want: state{}, wantForget: true,
		},
		"a publish after an unpublish starts afresh": {
			given: []step{publish, unpublish, forgotten, wait(30 * time.Second)}, when: publish,
			want: published("sa-2", v1, at(30*time.Second), at(30*time.Second)), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true}, wantFiles: v1,
		},
		"a tick before the interval leaves the volume": {
			given: []step{publish, caughtUp, wait(30 * time.Second)}, when: tick,
			want: published("sa-1", v1, t0, t0), wantFiles: v1,
		},
		"a tick after the interval refreshes with the kept request": {
			given: []step{publish, caughtUp, wait(time.Minute), answer(v2)}, when: tick,
			want: published("sa-1", v2, at(time.Minute), at(time.Minute)), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true, rotation: true}, wantFiles: v2,
		},
		"a push by the volume's provider refreshes it before the interval": {
			given: []step{publish, caughtUp, wait(10 * time.Second), answer(v2), pushBy(testProvider)}, when: rotatePushes,
			want: published("sa-1", v2, at(10*time.Second), at(10*time.Second)), wantMounts: 1,
			wantBooks: &books{writeStatus: true, sync: true, rotation: true}, wantFiles: v2,
		},
		"a push by another provider is refused": {
			given: []step{publish, caughtUp}, when: pushBy("rogue"),
			want: published("sa-1", v1, t0, t0), wantFiles: v1,
		},
		"pushes of a queued volume merge": {
			given: []step{publish, caughtUp}, when: steps(pushBy(testProvider), pushBy(testProvider)),
			want: published("sa-1", v1, t0, t0), wantQueued: 1, wantFiles: v1,
		},
		"a push of an unknown volume is forgotten": {
			given: []step{connected}, when: steps(pushBy(testProvider), rotatePushes), want: state{}, wantForget: true,
		},
		"a push of an unpublished volume is forgotten": {
			given: []step{publish, unpublish, forgotten}, when: steps(pushBy(testProvider), rotatePushes),
			want: state{}, wantForget: true,
		},
		"a provider's reconnection makes every volume due": {
			given: []step{publish, caughtUp, wait(10 * time.Second)}, when: providerRestarted,
			want: published("sa-1", v1, time.Time{}, t0), wantFiles: v1,
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			for i, s := range c.given {
				if err := s(h); err != nil {
					t.Fatalf("given step %d: %v", i, err)
				}
			}
			before := h.provider.calls()
			err := c.when(h)
			if (err != nil) != c.wantErr {
				t.Fatalf("error %v, want an error: %v", err, c.wantErr)
			}
			if got := h.state(); !sameState(got, c.want) {
				t.Errorf("state\n got %+v\nwant %+v", got, c.want)
			}
			if got := h.provider.calls() - before; got != c.wantMounts {
				t.Errorf("%d provider mounts, want %d", got, c.wantMounts)
			}
			if got := len(h.d.pushes); got != c.wantQueued {
				t.Errorf("%d pushes queued, want %d", got, c.wantQueued)
			}
			if got := h.books(); (got == nil) != (c.wantBooks == nil) || got != nil && *got != *c.wantBooks {
				t.Errorf("recorder job %+v, want %+v", got, c.wantBooks)
			}
			if got := h.files(); !maps.Equal(got, c.wantFiles) || (got == nil) != (c.wantFiles == nil) {
				t.Errorf("files %v, want %v", got, c.wantFiles)
			}
			if c.wantForget {
				if err := forgotten(h); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func sameState(a, b state) bool {
	return a.tracked == b.tracked && a.published == b.published && a.request == b.request && maps.Equal(a.versions, b.versions) &&
		(a.versions == nil) == (b.versions == nil) && a.provider == b.provider && a.checked.Equal(b.checked) && a.synced.Equal(b.synced)
}

// A push that comes while the volume's first publish is still writing
// its files (the provider watches the volume from its Mount on) waits
// for the publish, then refreshes the volume: it is not taken for a push
// of an unknown volume, which the provider would be told to forget.
func TestPushDuringTheFirstPublish(t *testing.T) {
	h := newHarness(t)
	mounting, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.provider.mounting = func() {
		once.Do(func() {
			close(mounting)
			<-release
		})
	}
	published := make(chan error, 1)
	go func() { published <- publish(h) }()
	<-mounting
	h.d.pushed(testProvider, h.target)
	rotated := make(chan struct{})
	go func() {
		defer close(rotated)
		_ = rotatePushes(h)
	}()
	// The push's refresh waits for the publish's lock: two holders.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		h.d.mu.Lock()
		refs := 0
		if v := h.d.volumes[h.target]; v != nil {
			refs = v.refs
		}
		h.d.mu.Unlock()
		if refs == 2 {
			break
		}
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("the pushed volume's refresh is not waiting for the publish (%d holders)", refs)
		}
	}
	close(release)
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	<-rotated
	if got := h.provider.calls(); got != 2 {
		t.Fatalf("%d provider mounts, want the publish's and the push's", got)
	}
	if got := h.state(); !got.published {
		t.Fatalf("state %+v, want published", got)
	}
}
