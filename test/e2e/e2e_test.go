// Package e2e runs Coffer on a real single-node cluster: a kubelet starts
// real containers from images built here, and the tests assert on what
// the containers saw (their logs in the kubelet's pod logs directory).
// See test/e2e/README.md for the machine's constraints and workarounds.
package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/test/e2e/cluster"
	"github.com/cofferhq/coffer/test/e2e/images"
)

// Image names, all loaded from tarballs (imagePullPolicy: Never).
const (
	AppImage    = "coffer.local/app:e2e"
	CofferImage = "coffer.local/coffer:e2e"
)

var tarballs []string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "e2e-images-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	start := time.Now()
	fmt.Fprintln(os.Stderr, "e2e: building the images (pause, app, coffer) from the project's static binaries")
	tarballs, err = images.Build(root, dir,
		images.Image{Ref: cluster.PauseImage, Package: "./test/e2e/pause", Binary: "pause"},
		images.Image{Ref: AppImage, Package: "./test/e2e/app", Binary: "app"},
		images.Image{Ref: CofferImage, Package: "./cmd/coffer", Binary: "coffer"},
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: images built in %s\n", time.Since(start).Round(time.Second))
	return m.Run()
}

// TestNodeRunsContainers is the harness's own check: the kubelet runs a
// container from a locally built image, its output reaches the pod logs
// directory, and tearing the cluster down leaves no process or mount.
func TestNodeRunsContainers(t *testing.T) {
	before := interfaces(t)
	var dir string
	t.Run("cluster", func(t *testing.T) {
		c := cluster.Start(t, cluster.Options{Images: tarballs})
		dir = c.Dir
		ctx := context.Background()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "default"},
			Spec: corev1.PodSpec{
				NodeName: cluster.NodeName, HostNetwork: true, RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "app", Image: AppImage, ImagePullPolicy: corev1.PullNever,
					Args: []string{"env", "GREETING"}, Env: []corev1.EnvVar{{Name: "GREETING", Value: "hello from a real container"}}}},
			},
		}
		waitDefaultSA(t, c)
		if _, err := c.Kube.Clientset.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p := c.WaitPod("default", "hello", 3*time.Minute)
		eventually(t, c, "the container's output", 30*time.Second, func() bool {
			return strings.Contains(c.ContainerLog(p, "app"), `GREETING="hello from a real container"`)
		})
		// What the teardown check below looks for is there while it runs:
		// the check can fail.
		if n := len(cluster.Processes(c.Dir)); n < 5 {
			t.Fatalf("only %d cluster processes found while the cluster runs", n)
		}
		if len(cluster.Mounts(c.Dir)) == 0 {
			t.Fatal("no mounts found while the cluster runs")
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
	if left := cluster.Processes(dir); len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
	if after := interfaces(t); !slices.Equal(before, after) {
		t.Errorf("network interfaces changed: %v before, %v after (a veth left behind?)", before, after)
	}
}

// interfaces lists the host's network interfaces by name.
func interfaces(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}

// waitDefaultSA waits for kube-controller-manager to create the default
// namespace's service account (pods need it).
func waitDefaultSA(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	eventually(t, c, "the default service account", time.Minute, func() bool {
		_, err := c.Kube.Clientset.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil
	})
}

func eventually(t *testing.T, c *cluster.Cluster, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; the kubelet's log ends:\n%s", what, c.Log("kubelet", 30))
		}
		time.Sleep(250 * time.Millisecond)
	}
}
