package csidriver

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// The kubelet's plugin watcher side of the protocol, with the kubelet's own
// generated client.
func TestRegistration(t *testing.T) {
	dir, err := os.MkdirTemp("", "reg")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := RegistrationSocket(dir, Name)
	r := &Registration{Name: Name, Endpoint: "/var/lib/kubelet/plugins/csi-secrets-store/csi.sock", Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.ServeRegistration(ctx, sock) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no registration socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true)) // the file exists from bind(), before listen()
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "secrets-store.csi.k8s.io" || info.Endpoint != r.Endpoint || len(info.SupportedVersions) != 1 || info.SupportedVersions[0] != "1.0.0" {
		t.Fatalf("%+v", info)
	}
	if r.Healthy() != nil || r.Registered() {
		t.Fatal("before the kubelet answers: healthy, not registered")
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version 0.3 not supported"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Healthy(); err == nil {
		t.Fatal("a refused registration must be unhealthy")
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if r.Healthy() != nil || !r.Registered() {
		t.Fatal("registered")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("the socket is left behind: %v", err)
	}
	if err := (&Registration{Name: Name, Endpoint: "relative.sock"}).ServeRegistration(context.Background(), filepath.Join(dir, "x.sock")); err == nil {
		t.Fatal("a relative endpoint must be refused")
	}
}
