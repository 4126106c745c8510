package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

// supervise runs the package's tests on a node of their own. In the
// calling process it makes a sandbox, runs prepare (which may write into
// its directory: it still has the Go module proxy, the namespace has no
// network at all), then runs the same test binary again inside the
// namespace, where cluster.Start works. Once that ends, however it ends (a
// pass, a failure, a timeout's panic, a signal), the sandbox's Close kills
// and removes whatever is left, and the run fails if there was anything:
// the tests' own teardown must leave nothing behind.
func supervise(m *testing.M, prepare func(root string) error) int {
	if cluster.Inside() {
		if err := cluster.Enter(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		return m.Run()
	}
	// From here on a ^C (which reaches the whole process group, the image
	// builds and the inner run too) stops the run but not the cleanup.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	sb, err := cluster.NewSandbox("coffer-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	code := func() int {
		if err := prepare(sb.Root); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: the node's network namespace is %s (node IP %s, pods %s)\n", sb.Name, cluster.NodeIP, cluster.PodSubnet)
		return sb.Run(os.Args[1:], sigs)
	}()
	if left := sb.Close(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: the tests left these behind (the supervisor removed them):\n  %s\n", strings.Join(left, "\n  "))
		return 1
	}
	return code
}

// node is a cluster for one test: stopped when the test ends, and failing
// the test where the cluster's own methods return errors.
type node struct {
	*cluster.Cluster
	t testing.TB
}

// startNode starts a cluster from the Kubernetes binaries the tests use
// (KUBEBUILDER_ASSETS, or the cache scripts/kube-assets.sh fills), and
// stops it when the test ends.
func startNode(t testing.TB, o cluster.Options) *node {
	t.Helper()
	assets, err := kubetest.AssetsDir()
	if err != nil {
		t.Fatalf("locating the Kubernetes binaries: %v; run scripts/kube-assets.sh or set KUBEBUILDER_ASSETS", err)
	}
	o.Assets = assets
	o.Log = func(format string, args ...any) { t.Logf("e2e: "+format, args...) }
	c, err := cluster.Start(context.Background(), o)
	if err != nil {
		t.Fatalf("e2e: starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("e2e: stopping the cluster: %v", err)
		}
	})
	return &node{c, t}
}

// WaitPod waits until the pod is Running with every container ready (or
// has succeeded).
func (n *node) WaitPod(ns, name string, timeout time.Duration) *corev1.Pod {
	n.t.Helper()
	p, err := n.Cluster.WaitPod(context.Background(), ns, name, timeout)
	if err != nil {
		n.t.Fatalf("e2e: %v", err)
	}
	return p
}

// WaitPodsOf waits until count pods of ns matching the label selector run
// with every container ready.
func (n *node) WaitPodsOf(ns, selector string, count int, timeout time.Duration) []corev1.Pod {
	n.t.Helper()
	pods, err := n.Cluster.WaitPodsOf(context.Background(), ns, selector, count, timeout)
	if err != nil {
		n.t.Fatalf("e2e: %v", err)
	}
	return pods
}

// ServeService is the cluster's ServeService, closed when the test ends.
func (n *node) ServeService(ns, name, port, addr string) *cluster.ServiceProxy {
	n.t.Helper()
	p, err := n.Cluster.ServeService(ns, name, port, addr)
	if err != nil {
		n.t.Fatalf("e2e: %v", err)
	}
	n.t.Cleanup(p.Close)
	return p
}
