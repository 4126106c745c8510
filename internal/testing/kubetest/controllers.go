package kubetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// StartControllers runs kube-controller-manager (built by
// scripts/kube-assets.sh beside kube-apiserver) against the control plane
// with only the named controllers, such as "garbagecollector" or
// "deployment" and "replicaset", for tests of what those controllers do
// to Coffer's objects: a plain control plane has no garbage collector, so
// owner references have no effect there. The process is killed, by pid,
// when the test ends; its log is shown if the test failed.
func (e *Env) StartControllers(t testing.TB, controllers ...string) {
	t.Helper()
	dir, err := AssetsDir()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	bin := filepath.Join(dir, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kubetest: %s is missing: run `make kube-assets`", bin)
	}
	kubeconfig := e.KubeconfigFile(t)
	logs := &tailBuffer{max: 64 << 10}
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig,
		"--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
		"--controllers="+strings.Join(controllers, ","))
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group, and killed with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("kubetest: starting kube-controller-manager: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("kubetest: last kube-controller-manager output:\n%s", logs.String())
		}
	})
}
