package csidriver

import (
	"context"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

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

	"github.com/cofferhq/coffer/internal/node/atomicdir"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// scriptedProvider answers each Mount with the files of the current fuzz
// input, and records the request it got.
type scriptedProvider struct {
	v1alpha1.UnimplementedCSIDriverProviderServer
	mu    sync.Mutex
	files []*v1alpha1.File
	last  *v1alpha1.MountRequest
}

func (p *scriptedProvider) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: testProvider, RuntimeVersion: "fuzz"}, nil
}

func (p *scriptedProvider) Mount(_ context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = req
	resp := &v1alpha1.MountResponse{Files: p.files, ObjectVersion: []*v1alpha1.ObjectVersion{}}
	for _, f := range p.files {
		resp.ObjectVersion = append(resp.ObjectVersion, &v1alpha1.ObjectVersion{Id: "secret/" + f.Path, Version: "1"})
	}
	return resp, nil
}

// podContext is the volume context kubelet sends for a pod of namespace
// default with podInfoOnMount and tokenRequests.
func podContext(extra map[string]string) string {
	m := map[string]string{ctxSPC: "azure-kvname", ctxPodName: "web-7d9f8b6c5-x2x4k", ctxPodNS: "default", ctxPodUID: "0b8f7e52-3c6f-4c59-9d3a-8f6f1d1c2b3a",
		ctxSAName: "workload", "csi.storage.k8s.io/ephemeral": "false"}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzNodePublishVolume", func(*testing.T) []fuzzseed.Seed {
		rw := []byte{0o1, 0o244}
		tokens := `{"api://AzureADTokenExchange":{"token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln","expirationTimestamp":"2026-12-01T13:00:00Z"}}`
		return []fuzzseed.Seed{
			fuzzseed.S("articles-aliases", podContext(nil), "SECRET_1\nSECRET_2", rw),
			fuzzseed.S("tokens", podContext(map[string]string{ctxSATokens: tokens}), "db-password", rw),
			fuzzseed.S("cert-key-pem", podContext(nil), "tls.crt\ntls.key\nca/ca.crt", []byte{0o1, 0o040}),
			fuzzseed.S("version-history", podContext(nil), "app-secret/0\napp-secret/1\napp-secret/2", rw),
			fuzzseed.S("override-params", podContext(map[string]string{"keyvaultName": "other-vault", "objects": "array: []", "usePodIdentity": "true"}), "x", rw),
			fuzzseed.S("other-namespace", podContext(map[string]string{ctxPodNS: "kube-system"}), "stolen", rw),
			fuzzseed.S("missing-spc", podContext(map[string]string{ctxSPC: "nope"}), "x", rw),
			fuzzseed.S("no-pod-info", `{"secretProviderClass":"azure-kvname"}`, "x", rw),
			fuzzseed.S("empty-context", `{}`, "x", rw),
			fuzzseed.S("traversal", podContext(nil), "../../../../escape\n..data\n/etc/passwd", rw),
			fuzzseed.S("nul", podContext(nil), "a\x00b", rw),
			fuzzseed.S("long-names", podContext(nil), strings.Repeat("n", 255)+"\n"+strings.Repeat("m", 256)+"\n"+strings.Repeat("d/", 1800)+"f", rw),
			fuzzseed.S("bad-modes", podContext(nil), "a\nb\nc", []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0xff}),
			fuzzseed.S("no-files", podContext(nil), "", rw),
			fuzzseed.S("not-json", `secretProviderClass=azure-kvname`, "x", rw),
		}
	})
}

// FuzzNodePublishVolume publishes a volume with an arbitrary volume
// context and provider answer (any file paths and modes), and unpublishes
// it. Errors are gRPC statuses with a code, never Unknown; nothing is
// written outside the target path; the class is only ever read from the
// pod's own namespace; a publish that succeeds leaves exactly the
// provider's files; an unpublish leaves the target empty.
func FuzzNodePublishVolume(f *testing.F) {
	dir := f.TempDir()
	sockets := filepath.Join(dir, "providers")
	if err := os.Mkdir(sockets, 0o700); err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(sockets, testProvider+".sock"))
	if err != nil {
		f.Fatal(err)
	}
	prov := &scriptedProvider{}
	srv := grpc.NewServer()
	v1alpha1.RegisterCSIDriverProviderServer(srv, prov)
	go func() { _ = srv.Serve(ln) }()
	f.Cleanup(srv.Stop)
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		f.Fatal(err)
	}
	if err := secretsstorev1.AddToScheme(scheme); err != nil {
		f.Fatal(err)
	}
	// The pod's class, in its namespace; a class of the same name in
	// another namespace must never be used for it.
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Name: "azure-kvname", Namespace: "default"},
		Spec: secretsstorev1.SecretProviderClassSpec{Provider: testProvider, Parameters: map[string]string{"keyvaultName": "demo", "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
			"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"}}}
	d, err := New(Config{Settings: Settings{NodeID: "node-1", ProviderDirs: []string{sockets}},
		Kube: fake.NewClientBuilder().WithScheme(scheme).WithObjects(spc).Build(), Mounter: mount.NewFakeMounter(nil),
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(d.providers.Close)
	root := filepath.Join(dir, "kubelet")
	target := filepath.Join(root, "pods", "0b8f7e52-3c6f-4c59-9d3a-8f6f1d1c2b3a", "volumes", "kubernetes.io~csi", "secrets-store-inline", "mount")
	if err := os.MkdirAll(filepath.Join(root, "plugins"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "plugins", "sentinel"), []byte("untouched"), 0o600); err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, volumeContext, paths string, modes []byte) {
		var vc map[string]string
		if json.Unmarshal([]byte(volumeContext), &vc) != nil {
			return
		}
		var files []*v1alpha1.File
		for i, p := range strings.Split(paths, "\n") {
			if p == "" || i == 16 {
				continue
			}
			mode := int32(0o644)
			if len(modes) >= 2 {
				j := (2 * i) % (len(modes) - len(modes)%2)
				mode = int32(int16(uint16(modes[j])<<8 | uint16(modes[j+1])))
			}
			files = append(files, &v1alpha1.File{Path: p, Mode: mode, Contents: []byte("value of " + p)})
		}
		prov.mu.Lock()
		prov.files, prov.last = files, nil
		prov.mu.Unlock()
		before := tree(t, root, target)

		_, err := node{d: d}.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-0123", TargetPath: target, Readonly: true,
			VolumeCapability: &csi.VolumeCapability{}, VolumeContext: vc})
		if err != nil {
			if st, ok := status.FromError(err); !ok || st.Code() == codes.Unknown || st.Code() == codes.OK {
				t.Fatalf("publish error %v is not a gRPC status with a code", err)
			}
		}
		prov.mu.Lock()
		asked := prov.last
		prov.mu.Unlock()
		if asked != nil && vc[ctxPodNS] != "default" {
			t.Fatalf("the provider was asked to mount for namespace %q with the class of namespace default", vc[ctxPodNS])
		}
		if err == nil {
			got, cerr := atomicdir.Current(target)
			if cerr != nil {
				t.Fatal(cerr)
			}
			var want []string
			for _, f := range files {
				want = append(want, f.Path)
			}
			// Both sides sorted by bytes: a directory walk lists "ca/c.key"
			// before "ca.crt", a byte sort after it.
			published := names(got)
			slices.Sort(want)
			slices.Sort(published)
			if !slices.Equal(published, want) {
				t.Fatalf("published %q; the provider answered %q", published, want)
			}
			for _, g := range got {
				if string(g.Contents) != "value of "+g.Path {
					t.Fatalf("%s holds %q", g.Path, g.Contents)
				}
			}
		}
		if _, err := (node{d: d}).NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-0123", TargetPath: target}); err != nil {
			t.Fatalf("unpublish: %v", err)
		}
		if entries, err := os.ReadDir(target); err == nil && len(entries) > 0 {
			t.Fatalf("unpublish left %d entries in the target", len(entries))
		}
		after := tree(t, root, target)
		for p, v := range after {
			if before[p] != v {
				t.Fatalf("%s was written outside the target path (%q, was %q)", p, v, before[p])
			}
		}
		for p := range before {
			if _, ok := after[p]; !ok {
				t.Fatalf("%s outside the target path was removed", p)
			}
		}
	})
}

// tree maps every path under root to its type and contents, except skip,
// what is under it, and its parents (the driver makes them).
func tree(t *testing.T, root, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		switch {
		case p == skip:
			return filepath.SkipDir
		case strings.HasPrefix(skip, p+string(filepath.Separator)):
			return nil // the directories kubelet makes for the target
		}
		v := d.Type().String()
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			v += string(b)
		}
		out[p] = v
		return nil
	})
	return out
}

func names(files []atomicdir.File) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.Path)
	}
	return out
}
