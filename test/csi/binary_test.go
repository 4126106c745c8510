package csi

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

// The real `coffer csi-driver` binary registers itself with the kubelet's
// plugin watcher (no node-driver-registrar sidecar): the kubelet's side of
// that protocol is played here with the kubelet's own generated client.
func TestDriverBinaryRegistersWithKubelet(t *testing.T) {
	dir, err := os.MkdirTemp("", "drv") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "coffer")
	if out, err := exec.Command("go", "build", "-race", "-o", bin, "../../cmd/coffer").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kube := kubetest.Start(t, kubetest.Options{CRDDirectoryPaths: []string{repoFile(t, "deploy/crds")}})
	endpoint := filepath.Join(dir, "csi.sock")
	regDir := filepath.Join(dir, "plugins_registry")
	cmd := exec.Command(bin, "csi-driver", "--nodeid", "node-1", "--endpoint", "unix://"+endpoint,
		"--registration-dir", regDir, "--kubelet-registration-path", "/var/lib/kubelet/plugins/csi-secrets-store/csi.sock",
		"--provider-volume", filepath.Join(dir, "providers"), "--metrics-addr", "127.0.0.1:0", "--kubeconfig", kube.KubeconfigFile(t))
	// Without GOGC in its environment, the driver takes the node daemons'
	// collector target (see daemon.LeanGC).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOGC=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out agenttest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	metrics := out.LoggedAddr(t, "metrics and health listening")
	if got := metricValue(t, metrics, "go_gc_gogc_percent"); got != daemon.NodeGCPercent {
		t.Fatalf("go_gc_gogc_percent = %v, want the node daemons' %d", got, daemon.NodeGCPercent)
	}
	regSock := filepath.Join(regDir, "secrets-store.csi.k8s.io-reg.sock")
	eventually(t, "the registration socket", func() bool { _, err := os.Stat(regSock); return err == nil })
	conn, err := grpc.NewClient("unix:"+regSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	reg := registerapi.NewRegistrationClient(conn)
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	// The socket file exists from bind(), a moment before listen().
	info, err := reg.GetInfo(waitCtx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetInfo: %v\n%s", err, out.String())
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "secrets-store.csi.k8s.io" || info.Endpoint != "/var/lib/kubelet/plugins/csi-secrets-store/csi.sock" {
		t.Fatalf("%+v", info)
	}
	// The kubelet then dials the endpoint; here it is the local socket.
	cc, err := grpc.NewClient("unix:"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	eventually(t, "the CSI socket answers", func() bool {
		pi, err := csi.NewIdentityClient(cc).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		return err == nil && pi.Name == "secrets-store.csi.k8s.io"
	})
	health := func() int {
		resp, err := http.Get("http://" + metrics + "/healthz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, "healthy", func() bool { return health() == 200 })
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "refused for the test"}); err != nil {
		t.Fatal(err)
	}
	if code := health(); code != http.StatusServiceUnavailable {
		t.Fatalf("healthz after a refused registration: %d", code)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if code := health(); code != 200 {
		t.Fatalf("healthz once registered: %d", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the driver did not stop on SIGTERM")
	}
	// The socket goes with the driver, so the kubelet deregisters it.
	if _, err := os.Stat(regSock); !os.IsNotExist(err) {
		t.Fatalf("registration socket left behind: %v", err)
	}
}
