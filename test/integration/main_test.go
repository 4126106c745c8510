// Package integration runs the real coffer binary as a separate process:
// `coffer dev` start-up and reuse, the CLI, durability under kill -9, and
// key rotation. Servers bind to 127.0.0.1 only.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
)

var binary string

// testVersion is the version the test binary is built with.
const testVersion = "v0.0.0-integration"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coffer-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "coffer")
	// Built as a release is: the version set in one place, by -ldflags.
	build := exec.Command("go", "build", "-race", "-ldflags", "-X github.com/cofferhq/coffer/internal/version.Version="+testVersion, "-o", binary, "../../cmd/coffer")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build coffer:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// devServer is a running `coffer dev` process.
type devServer struct {
	cmd    *exec.Cmd
	dir    string
	Env    devenv.Env
	Stdout *syncbuf.Buffer
	Stderr *syncbuf.Buffer
	done   chan struct{}
}

// startDev starts `coffer dev` on a free port and waits until it serves.
// The process is killed when the test ends, whatever happens.
func startDev(t *testing.T, dir string, extra ...string) *devServer {
	t.Helper()
	args := append([]string{"dev", "--data-dir", dir, "--port", "0", "--log-level", "debug"}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &devServer{cmd: cmd, dir: dir, Stdout: &syncbuf.Buffer{}, Stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = d.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			d.Stdout.Write(append(sc.Bytes(), '\n'))
			if !signalled && strings.Contains(sc.Text(), "Press Ctrl-C to stop.") {
				close(ready)
				signalled = true
			}
		}
	}()
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.kill() })
	select {
	case <-ready:
	case <-d.done:
		t.Fatalf("coffer dev exited early:\n%s\n%s", d.Stdout, d.Stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("coffer dev did not start:\n%s\n%s", d.Stdout, d.Stderr)
	}
	env, err := devenv.Read(devenv.Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	d.Env = env
	return d
}

// kill sends SIGKILL to the process group and waits for it.
func (d *devServer) kill() {
	if d.cmd.Process != nil {
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-d.done
}

// stop sends SIGTERM and waits for a clean exit.
func (d *devServer) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatal("coffer dev did not stop on SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("coffer dev exited with %d after SIGTERM:\n%s", code, d.Stderr)
	}
}

// result is one CLI run.
type result struct {
	out, err string
	code     int
}

// cli runs `coffer args...` with the dev server's credentials.
func cli(t *testing.T, envFile string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"--env-file", envFile}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out: stdout.String(), err: stderr.String(), code: code}
}

func mustCLI(t *testing.T, envFile string, args ...string) string {
	t.Helper()
	r := cli(t, envFile, "", args...)
	if r.code != 0 {
		t.Fatalf("coffer %s: exit %d: %s", strings.Join(args, " "), r.code, r.err)
	}
	return r.out
}
