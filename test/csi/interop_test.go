package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/fake"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
)

// Coffer's driver mounts through a provider that speaks only the upstream
// protocol: the upstream module's own fake provider server. Push rotation
// is on: the fake has no Push service (it answers Unimplemented), and the
// driver mounts through it all the same.
func TestCofferDriverWithUpstreamFakeProvider(t *testing.T) {
	dir, err := os.MkdirTemp("", "fake")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mock, err := fake.NewMocKCSIProviderServer(filepath.Join(dir, "fake.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mock.SetObjects(map[string]string{"secret/db": "v7", "secret/api": "v3"})
	mock.SetFiles([]*v1alpha1.File{
		{Path: "db-password", Mode: 0o440, Contents: []byte("from the fake provider")},
		{Path: "nested/api-key", Mode: 0o400, Contents: []byte("k")},
	})
	if err := mock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mock.Stop)

	s := startStack(t, stackOptions{moreProviders: []string{dir}, rotation: time.Hour, push: true})
	ctx := context.Background()
	s.serviceAccount(t, "default", "default")
	s.apply(t, `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: fake-class
spec:
  provider: fake
  parameters:
    anything: "the fake provider ignores it"
---
`+fill(podWithVolume, map[string]string{"pod": "uses-fake", "usesClass": "fake-class"}))
	req := s.publishRequest(t, s.pod(t, "default", "uses-fake"), "secrets")
	if _, err := s.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume through the fake provider: %v", err)
	}
	if readFile(t, filepath.Join(req.TargetPath, "db-password")) != "from the fake provider" || readFile(t, filepath.Join(req.TargetPath, "nested", "api-key")) != "k" {
		t.Fatal("files")
	}
	if fi, _ := os.Stat(filepath.Join(req.TargetPath, "db-password")); fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	s.driver.Settle()
	st := &secretsstorev1.SecretProviderClassPodStatus{}
	if err := s.kube.Client.Get(ctx, types.NamespacedName{Namespace: "default", Name: "uses-fake-default-fake-class"}, st); err != nil {
		t.Fatal(err)
	}
	if len(st.Status.Objects) != 2 || st.Status.Objects[0].ID != "secret/api" || st.Status.Objects[0].Version != "v3" {
		t.Fatalf("status objects %+v", st.Status.Objects)
	}

	// An error code from an upstream provider fails the mount and names it.
	mock.SetProviderErrorCode("SomeProviderFailure")
	s.apply(t, fill(podWithVolume, map[string]string{"pod": "uses-fake-2", "usesClass": "fake-class"}))
	req2 := s.publishRequest(t, s.pod(t, "default", "uses-fake-2"), "secrets")
	if _, err := s.node.NodePublishVolume(ctx, req2); err == nil || !strings.Contains(err.Error(), "SomeProviderFailure") || isMounted(req2.TargetPath) {
		t.Fatalf("provider error code: %v", err)
	}
	// An unknown code is reported as ProviderError, naming the code.
	if ev := s.waitEvent(t, "default", "uses-fake-2", "ProviderError"); !strings.Contains(ev, "SomeProviderFailure") {
		t.Fatalf("event %q", ev)
	}
}
