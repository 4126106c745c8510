package nodeagent

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
)

// The real binary, with the flags a DaemonSet gives it: the command wires
// the caches, the status writer, the listeners and the metrics.
func TestNodeAgentBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "coffer")
	if out, err := exec.Command("go", "build", "-race", "-o", bin, "../../cmd/coffer").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	w := start(t)
	agenttest.Namespace(t, w.kube, "shop")
	w.bind(t, "shop", "web", w.node.Bound.ClientID, "", "web", nil)
	secretFile := filepath.Join(dir, "agent-secret")
	if err := os.WriteFile(secretFile, []byte(w.node.Pool.AgentSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	var logs agenttest.SyncBuffer
	cmd := exec.Command(bin, "node-agent", "--node-name", "node-1", "--tenant-id", w.env.State.TenantID,
		"--client-id", w.node.Pool.AgentClientID, "--client-secret-file", secretFile,
		"--authority-host", w.env.Admin.AuthorityHost, "--ca-file", w.env.Admin.CAFile,
		"--system-identity", w.node.Pool.SystemAssigned.ClientID, "--vm-identity", w.node.Attached.ID,
		"--redirect", "none", "--listen", "127.0.0.1:0", "--local-socket", "unix://"+sock, "--metrics-addr", "127.0.0.1:0",
		"--kubeconfig", w.kube.KubeconfigFile(t))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	// Both bind port 0 and log the port they got.
	metrics := logs.LoggedAddr(t, "metrics and health listening")
	imds := logs.LoggedAddr(t, "node agent listening")
	eventually(t, "the agent is healthy", func() bool {
		resp, err := http.Get("http://" + metrics + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	base := "http://" + imds
	q := "api-version=2018-02-01&resource=" + url.QueryEscape(vaultResource(w))
	code, body, _ := agenttest.IMDS(t, base, "", q, "", true)
	if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Pool.SystemAssigned.PrincipalID {
		t.Fatalf("node caller: %d %v\n%s", code, body["error_description"], logs.String())
	}
	code, body, _ = agenttest.IMDS(t, base, "", q+"&msi_res_id="+url.QueryEscape(w.node.Attached.ID), "", true)
	if code != 200 || claims(t, body["access_token"])["oid"] != w.node.Attached.PrincipalID {
		t.Fatalf("attached identity: %d %v", code, body["error_description"])
	}
	pod := agenttest.RunningPod(t, w.kube, "shop", "web", "node-1", "", map[string]string{podidentity.BindingLabel: "web"})
	eventually(t, "the pod gets its identity", func() bool {
		code, body, _ := agenttest.IMDS(t, base, "", q, agenttest.PodToken(t, w.kube, pod), true)
		return code == 200 && claims(t, body["access_token"])["oid"] == w.node.Bound.PrincipalID
	})
	eventually(t, "the AzureAssignedIdentity", func() bool {
		var a podidentity.AzureAssignedIdentity
		return w.kc.Get(context.Background(), keyOf("shop", "web-shop-web"), &a) == nil && a.Status.Status == "Assigned"
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the provider socket: %v %v", fi, err)
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `coffer_node_agent_token_requests_total{endpoint="imds",status="200"}`) {
		t.Fatalf("metrics:\n%s", m)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not stop on SIGTERM")
	}
	if out := logs.String(); strings.Contains(out, "eyJ") || strings.Contains(out, w.node.Pool.AgentSecret) {
		t.Fatalf("a token or the agent's secret reached the log:\n%s", out)
	}
}
