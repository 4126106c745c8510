// Package etcdtest runs real etcd clusters for tests: the etcd server that
// scripts/kube-assets.sh builds from the Go module proxy, one process per
// member, talking over unix sockets in a temporary directory (no port can
// be taken by anything else, and nothing listens on the network). Members
// can be killed with SIGKILL and started again on their data.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	members []*member
}

type member struct {
	name    string
	dataDir string
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *syncBuffer
}

// Start runs a cluster of n members and stops it when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	assets, err := kubetest.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(assets, "etcd")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("etcd binary: %v (run scripts/kube-assets.sh)", err)
	}
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "etcd")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, bin: bin, dir: dir}
	for i := range n {
		c.members = append(c.members, &member{name: fmt.Sprintf("m%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("data%d", i))})
	}
	t.Cleanup(c.stop)
	for i := range c.members {
		c.startMember(i, "new")
	}
	c.WaitHealthy()
	return c
}

// peerURL and clientURL are etcd's unix URLs. etcd wants host:port in
// them; the socket files are named so, in the cluster's directory (the
// members run there).
func peerURL(i int) string   { return fmt.Sprintf("unix://peer%d:1", i) }
func clientURL(i int) string { return fmt.Sprintf("unix://client%d:1", i) }

// Endpoint is member i's client endpoint, as a client dials it.
func (c *Cluster) Endpoint(i int) string {
	return "unix://" + filepath.Join(c.dir, fmt.Sprintf("client%d:1", i))
}

// Endpoints are every member's client endpoints.
func (c *Cluster) Endpoints() []string {
	var out []string
	for i := range c.members {
		out = append(out, c.Endpoint(i))
	}
	return out
}

func (c *Cluster) startMember(i int, state string) {
	c.t.Helper()
	m := c.members[i]
	var initial []string
	for j := range c.members {
		initial = append(initial, fmt.Sprintf("m%d=%s", j, peerURL(j)))
	}
	// A restarted member leaves its old socket files behind.
	os.Remove(filepath.Join(c.dir, fmt.Sprintf("peer%d:1", i)))
	os.Remove(filepath.Join(c.dir, fmt.Sprintf("client%d:1", i)))
	m.log = &syncBuffer{}
	m.cmd = exec.Command(c.bin,
		"--name", m.name, "--data-dir", m.dataDir,
		"--listen-client-urls", clientURL(i), "--advertise-client-urls", clientURL(i),
		"--listen-peer-urls", peerURL(i), "--initial-advertise-peer-urls", peerURL(i),
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", state,
		"--initial-cluster-token", filepath.Base(c.dir),
		// Short timings, so failover is seconds (defaults: 100 ms, 1 s).
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--log-level", "warn")
	m.cmd.Dir = c.dir
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		c.t.Fatalf("start etcd member %d: %v", i, err)
	}
	m.exited = make(chan struct{})
	cmd := m.cmd
	go func() { cmd.Wait(); close(m.exited) }()
}

// Kill sends member i SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	m := c.members[i]
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
}

// Restart starts a killed member again on its data.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.startMember(i, "existing")
}

// Leader returns the index of the member that leads, or -1 if none does.
func (c *Cluster) Leader(ctx context.Context) int {
	for i := range c.members {
		select {
		case <-c.members[i].exited:
			continue
		default:
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Endpoint(i)}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, c.Endpoint(i))
		cancel()
		cli.Close()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// WaitHealthy waits until every running member answers a quorum read.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for i, m := range c.members {
		select {
		case <-m.exited:
			continue
		default:
		}
		for {
			err := c.probe(i)
			if err == nil {
				break
			}
			select {
			case <-m.exited:
				c.t.Fatalf("etcd member %d exited:\n%s", i, m.log.String())
			default:
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("etcd member %d is not healthy: %v\n%s", i, err, m.log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func (c *Cluster) probe(i int) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Endpoint(i)}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "health")
	return err
}

// Log is member i's output, for a failing test.
func (c *Cluster) Log(i int) string { return c.members[i].log.String() }

func (c *Cluster) stop() {
	for _, m := range c.members {
		if m.cmd != nil && m.cmd.Process != nil {
			select {
			case <-m.exited:
			default:
				m.cmd.Process.Signal(syscall.SIGKILL)
				<-m.exited
			}
		}
	}
	os.RemoveAll(c.dir)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
