// Package e2e runs Coffer on a real single-node cluster: a kubelet starts
// real containers from images built here, on a bridge network in a
// namespace of the test's own, and the tests assert on what the containers
// saw (what `kubectl exec` and `kubectl logs` return). See
// test/e2e/README.md for the machine's constraints and workarounds.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilexec "k8s.io/client-go/util/exec"

	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/cli/localcluster/images"
)

// Image names, all loaded from tarballs (imagePullPolicy: Never).
const (
	AppImage    = "coffer.local/app:e2e"
	CofferImage = "coffer.local/coffer:e2e"
)

func TestMain(m *testing.M) {
	os.Exit(supervise(m, buildImages))
}

// buildImages runs before the tests, outside the node's namespace, where
// the Go module proxy is reachable.
func buildImages(root string) error {
	dir := filepath.Join(root, "images")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	start := time.Now()
	fmt.Fprintln(os.Stderr, "e2e: building the images (pause, app, coffer) from the project's static binaries")
	var links []string
	for _, tool := range []string{"sleep", "cat", "ls", "printenv", "curl"} {
		links = append(links, "bin/"+tool)
	}
	if _, err := images.Build(repo, dir,
		images.Image{Ref: cluster.PauseImage, Package: "./internal/cli/localcluster/pause", Binary: "pause"},
		images.Image{Ref: AppImage, Package: "./test/e2e/app", Binary: "app", Links: links},
		images.Image{Ref: CofferImage, Package: "./cmd/coffer", Binary: "coffer", Variants: images.CofferVariants},
	); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: images built in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// tarballs are the images buildImages made.
func tarballs(t testing.TB) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(cluster.Root(), "images", "*.tar"))
	if err != nil || len(paths) != 3 {
		t.Fatalf("the images are missing from %s (%v): %v", cluster.Root(), paths, err)
	}
	return paths
}

// TestNodeRunsContainers is the harness's own check: the scheduler puts a
// pod on the node, the kubelet runs a container from a locally built image
// with an address on the bridge, `kubectl logs` and `kubectl exec` reach
// it, pods cannot reach the kubelet, and tearing the cluster down leaves no
// process, mount or veth.
func TestNodeRunsContainers(t *testing.T) {
	var dir string
	var footprint cluster.Footprint
	t.Run("cluster", func(t *testing.T) {
		c := startNode(t, cluster.Options{Images: tarballs(t)})
		dir = c.Dir
		ctx := context.Background()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "default"},
			Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "app", Image: AppImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"printenv", "GREETING"}, Env: []corev1.EnvVar{{Name: "GREETING", Value: "hello from a real container"}}}},
				RestartPolicy: corev1.RestartPolicyOnFailure,
			},
		}
		sleeper := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: "default"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: AppImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sleep", "10000"}}}},
		}
		waitDefaultSA(t, c)
		for _, p := range []*corev1.Pod{pod, sleeper} {
			if _, err := c.Clientset.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, c, "the container's output through the API", time.Minute, func() bool {
			p, err := c.Clientset.CoreV1().Pods("default").Get(ctx, "hello", metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodSucceeded && c.ContainerLog(p, "app") == "hello from a real container"
		})
		p := c.WaitPod("default", "sleeper", 2*time.Minute)
		if p.Spec.NodeName != cluster.NodeName {
			t.Fatalf("the scheduler put the pod on %q", p.Spec.NodeName)
		}
		_, subnet, _ := net.ParseCIDR(cluster.PodSubnet)
		if ip := net.ParseIP(p.Status.PodIP); ip == nil || !subnet.Contains(ip) {
			t.Fatalf("the pod's address %q is not on the bridge (%s)", p.Status.PodIP, cluster.PodSubnet)
		}
		out, stderr, err := c.Exec("default", "sleeper", "app", "ls", "/bin")
		if err != nil || !strings.Contains(out, "sleep") {
			t.Fatalf("kubectl exec ls /bin: %v: %q %q", err, out, stderr)
		}
		var exit utilexec.CodeExitError
		if _, _, err := c.Exec("default", "sleeper", "app", "cat", "/no/such/file"); !errors.As(err, &exit) || exit.Code != 1 {
			t.Fatalf("a command that exits 1 in exec reported %v", err)
		}
		// The node's address answers pods (its resolver is there), but its
		// kubelet port does not: the kubelet lets anonymous callers in.
		if _, stderr, err := c.Exec("default", "sleeper", "app", "curl", "-s", "-k", "https://"+cluster.NodeIP+":10250/healthz"); err == nil || !strings.Contains(stderr, "connection refused") {
			t.Fatalf("a pod reached the kubelet: %v %s", err, stderr)
		}
		if _, err := c.Clientset.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", cluster.NodeName, "proxy", "healthz").DoRaw(ctx); err != nil {
			t.Fatalf("the apiserver cannot reach the kubelet: %v", err)
		}
		// What the teardown checks below look for is there while it
		// runs: the checks can fail.
		footprint = c.Footprint()
		if n := len(footprint.Processes()); n < 5 {
			t.Fatalf("only %d cluster processes found while the cluster runs", n)
		}
		if len(footprint.PodProcesses()) == 0 {
			t.Fatal("no process found in a pod's network namespace while pods run")
		}
		if len(cluster.Mounts(c.Dir)) == 0 {
			t.Fatal("no mounts found while the cluster runs")
		}
		if len(veths(t)) == 0 {
			t.Fatal("no veth in the node's namespace while a pod runs")
		}
	})
	if dir == "" {
		return
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the cluster directory %s is left behind", dir)
	}
	if m := cluster.Mounts(dir); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
	if left := footprint.Processes(); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
	// A pod's namespace goes once nothing holds it, and its veth with it;
	// the kernel does that in the background.
	deadline := time.Now().Add(15 * time.Second)
	for len(veths(t)) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if v := veths(t); len(v) > 0 {
		t.Errorf("veths left behind in the node's namespace: %v", v)
	}
}

// veths lists the veth interfaces in the node's namespace (where this
// process runs).
func veths(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// waitDefaultSA waits for kube-controller-manager to create the default
// namespace's service account (pods need it).
func waitDefaultSA(t *testing.T, c *node) {
	t.Helper()
	eventually(t, c, "the default service account", time.Minute, func() bool {
		_, err := c.Clientset.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil
	})
}

func eventually(t testing.TB, c *node, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; the kubelet's log ends:\n%s", what, c.Log("kubelet", 30))
		}
		time.Sleep(250 * time.Millisecond)
	}
}
