// Package etcdtest runs real etcd clusters for tests: the etcd server that
// scripts/kube-assets.sh builds from the Go module proxy, one process per
// member, talking over unix sockets in a temporary directory (no port can
// be taken by anything else, and nothing listens on the network). Members
// can be killed with SIGKILL and started again on their data.
//
// A test whose clients cannot reach those sockets (pods of the e2e node,
// in network namespaces of their own) asks for TCP client listeners on an
// address of its namespace, optionally with TLS (StartWith).
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/testing/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	o       Options
	tls     ClientTLS
	members []*member
}

type member struct {
	name    string
	dataDir string
	port    int // of the TCP client listener, if any
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *syncbuf.Buffer
}

// Options shape a cluster.
type Options struct {
	// Members is the cluster's size (default 1).
	Members int
	// ClientHost, if set, gives every member a TCP client listener on
	// this address besides its unix socket, and members advertise it (and
	// not the socket) to clients. Its port is one that was free when the
	// member first started; a member that finds it taken meanwhile is
	// started again on another.
	ClientHost string
	// TLS serves the TCP listeners with a certificate of a CA made for the
	// cluster, and admits only clients with a certificate of that CA (see
	// ClientTLS). The unix sockets stay plain.
	TLS bool
}

// ClientTLS is what a client of a TLS cluster needs, in PEM: the CA of
// the members' certificates, and a client certificate and its key.
type ClientTLS struct {
	CA, Cert, Key []byte
}

// Start runs a cluster of n members and stops it when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartWith(t, Options{Members: n})
}

// StartWith runs a cluster shaped by o and stops it when the test ends.
func StartWith(t testing.TB, o Options) *Cluster {
	t.Helper()
	n := max(o.Members, 1)
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
	c := &Cluster{t: t, bin: bin, dir: dir, o: o}
	for i := range n {
		c.members = append(c.members, &member{name: fmt.Sprintf("m%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("data%d", i))})
	}
	t.Cleanup(c.stop)
	if o.TLS {
		if o.ClientHost == "" {
			t.Fatal("etcdtest: TLS is for the TCP listeners: set ClientHost")
		}
		var err error
		if c.tls, err = writeTLS(filepath.Join(dir, "tls"), o.ClientHost); err != nil {
			t.Fatalf("etcdtest: certificates: %v", err)
		}
	}
	for i := range c.members {
		c.pickPort(i)
		c.startMember(i, "new")
	}
	c.waitHealthy(true)
	return c
}

// pickPort gives member i a TCP client port that is free now.
func (c *Cluster) pickPort(i int) {
	c.t.Helper()
	if c.o.ClientHost == "" {
		return
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.o.ClientHost, "0"))
	if err != nil {
		c.t.Fatalf("etcdtest: a port on %s: %v", c.o.ClientHost, err)
	}
	c.members[i].port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
}

// tcpURL is member i's TCP client URL.
func (c *Cluster) tcpURL(i int) string {
	scheme := "http"
	if c.o.TLS {
		scheme = "https"
	}
	return fmt.Sprintf("%s://%s", scheme, net.JoinHostPort(c.o.ClientHost, strconv.Itoa(c.members[i].port)))
}

// TCPEndpoints are every member's TCP client URLs (with ClientHost).
func (c *Cluster) TCPEndpoints() []string {
	var out []string
	for i := range c.members {
		out = append(out, c.tcpURL(i))
	}
	return out
}

// ClientTLS returns the CA and a client certificate of a TLS cluster.
func (c *Cluster) ClientTLS() ClientTLS { return c.tls }

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
	m.log = &syncbuf.Buffer{}
	listen, advertise := clientURL(i), clientURL(i)
	var tlsFlags []string
	if c.o.ClientHost != "" {
		listen, advertise = listen+","+c.tcpURL(i), c.tcpURL(i)
	}
	if c.o.TLS {
		tls := filepath.Join(c.dir, "tls")
		tlsFlags = []string{"--cert-file", filepath.Join(tls, "server.crt"), "--key-file", filepath.Join(tls, "server.key"),
			"--trusted-ca-file", filepath.Join(tls, "ca.crt"), "--client-cert-auth"}
	}
	m.cmd = exec.Command(c.bin, append([]string{
		"--name", m.name, "--data-dir", m.dataDir,
		"--listen-client-urls", listen, "--advertise-client-urls", advertise,
		"--listen-peer-urls", peerURL(i), "--initial-advertise-peer-urls", peerURL(i),
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", state,
		"--initial-cluster-token", filepath.Base(c.dir),
		// Short timings, so failover is seconds (defaults: 100 ms, 1 s).
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--log-level", "warn"}, tlsFlags...)...)
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
	c.waitHealthy(false)
}

// waitHealthy is WaitHealthy; on a new cluster (first), a member whose TCP
// port was taken between pickPort and its start is started again on
// another.
func (c *Cluster) waitHealthy(first bool) {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	retries := 5
	for i, m := range c.members {
		select {
		case <-m.exited:
			if !first {
				continue
			}
		default:
		}
		for {
			err := c.probe(i)
			if err == nil {
				break
			}
			select {
			case <-m.exited:
				if first && retries > 0 && c.o.ClientHost != "" && strings.Contains(m.log.String(), "address already in use") {
					retries--
					os.RemoveAll(m.dataDir)
					c.pickPort(i)
					c.startMember(i, "new")
					continue
				}
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
	// Until the member has made its socket, a client would spend its whole
	// timeout dialing it.
	if _, err := os.Stat(filepath.Join(c.dir, fmt.Sprintf("client%d:1", i))); err != nil {
		return err
	}
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
