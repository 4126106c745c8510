package integration

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
)

// `coffer provider`, as a node runs it, serves a mount from `coffer dev`
// with only the flags a DaemonSet would give it.
func TestProviderCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "db-password", "--value", "from the provider command")
	var sp struct{ AppID, Password, ObjectID string }
	json.Unmarshal([]byte(mustCLI(t, ef, "sp", "create", "--name", "csi")), &sp)
	mustCLI(t, ef, "vault", "set-policy", "--name", "demo", "--object-id", sp.ObjectID, "--secret-permissions", "get")

	u, _ := url.Parse(d.Env.AuthorityHost)
	sockDir, err := os.MkdirTemp("", "prov")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "azure.sock")
	cmd := exec.Command(binary, "provider", "--endpoint", "unix://"+sock, "--vault-dns-suffix", u.Host, "--ca-file", d.Env.CAFile, "--metrics-addr", "127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the provider socket did not appear:\n%s", stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := v1alpha1.NewCSIDriverProviderClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The socket file exists from bind(), a moment before listen().
	v, err := pc.Version(ctx, &v1alpha1.VersionRequest{Version: "v1alpha1"}, grpc.WaitForReady(true))
	if err != nil || v.RuntimeName != "azure" {
		t.Fatalf("Version: %+v %v", v, err)
	}
	attrs, _ := json.Marshal(map[string]string{"keyvaultName": "demo", "tenantId": d.Env.TenantID,
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"})
	secrets, _ := json.Marshal(map[string]string{"clientid": sp.AppID, "clientsecret": sp.Password})
	resp, err := pc.Mount(ctx, &v1alpha1.MountRequest{Attributes: string(attrs), Secrets: string(secrets), Permission: "420"})
	if err != nil || resp.GetError().GetCode() != "" || len(resp.GetFiles()) != 1 || string(resp.GetFiles()[0].GetContents()) != "from the provider command" {
		t.Fatalf("Mount: %+v %v\n%s", resp, err, stderr)
	}
	// The provider's log holds neither the value nor the client secret.
	if s := stderr.String(); strings.Contains(s, "from the provider command") || strings.Contains(s, sp.Password) {
		t.Fatal("the provider logged a secret")
	}
	// Bad flags are refused with a usage error.
	out, err := exec.Command(binary, "provider", "--endpoint", "tcp://0.0.0.0:1", "--vault-dns-suffix", "x.y").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unix://") {
		t.Fatalf("a TCP endpoint was accepted: %s", out)
	}
}
