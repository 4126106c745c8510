// Package devcluster is `coffer dev --kubernetes`: a real single-node
// Kubernetes cluster on this machine (internal/cli/localcluster: etcd, the
// apiserver, the controller-manager, the scheduler, containerd and a
// kubelet, in a network namespace of its own), with Coffer installed into
// it by `coffer install`, until Ctrl-C tears it all down.
//
// The command runs twice: Run, in the calling process, builds what the
// node needs while the Go module proxy is reachable (the Kubernetes
// binaries, as scripts/kube-assets.sh caches them, and the images) and
// makes the sandbox; then the same command line runs again inside it,
// where Inside starts the cluster and installs Coffer. When that ends,
// however it ends, Run removes whatever is left and fails if it found
// anything: the teardown must leave no process, mount or veth.
package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/cli/install"
	cluster "github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/cli/localcluster/images"
)

// The images the node loads (imagePullPolicy: Never): the e2e's, so that
// the examples run unchanged on either.
const (
	AppImage    = "coffer.local/app:e2e"
	CofferImage = "coffer.local/coffer:e2e"
)

// Namespace is where Coffer is installed.
const Namespace = "coffer-system"

// What Run tells the run inside the sandbox.
const (
	envAssets = "COFFER_DEV_KUBE_ASSETS"
	envImages = "COFFER_DEV_IMAGES"
)

// ErrNotRoot means the command was run by another user than root.
var ErrNotRoot = errors.New("coffer dev --kubernetes runs a kubelet and containers in a network namespace of its own, which needs root: run it with sudo")

// Options configure the local cluster.
type Options struct {
	// DataDir is coffer dev's data directory; the cluster's files are in
	// {DataDir}/kubernetes: the images and kubectl (kept as a cache), and
	// while it runs the kubeconfig and the administrator's credentials.
	DataDir string
	// Source is the Coffer source tree the images and the Kubernetes
	// binaries are built from (default: found above the working
	// directory).
	Source string
	// Args is the command line to run again inside the sandbox (without
	// the program's name).
	Args []string
	// Out receives the progress and the commands to use the cluster.
	Out io.Writer
}

func (o *Options) dir() string { return filepath.Join(o.DataDir, "kubernetes") }

// Files are what the running cluster's user needs, in {DataDir}/kubernetes.
type Files struct {
	Kubeconfig, Kubectl, EnvFile string
}

func files(o Options) Files {
	d, _ := filepath.Abs(o.dir())
	return Files{Kubeconfig: filepath.Join(d, "kubeconfig"), Kubectl: filepath.Join(d, "kubectl"), EnvFile: filepath.Join(d, "admin.env")}
}

// Run builds what the node needs, makes the sandbox, runs the command
// again inside it until it ends (Ctrl-C), then removes the sandbox.
func Run(ctx context.Context, o Options) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	start := time.Now()
	p := progress{o.Out}
	src, err := source(o.Source)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dir(), 0o700); err != nil {
		return err
	}
	p.step("Kubernetes binaries, built from the Go module proxy and cached (scripts/kube-assets.sh; the first build takes several minutes)")
	assets, err := kubeAssets(ctx, src, o.Out)
	if err != nil {
		return err
	}
	f := files(o)
	if err := copyFile(filepath.Join(assets, "kubectl"), f.Kubectl, 0o755); err != nil {
		return fmt.Errorf("kubectl: %w", err)
	}
	p.step("Images: pause, the examples' app, coffer (built from %s)", src)
	tarballs, err := buildImages(src, filepath.Join(o.dir(), "images"), p)
	if err != nil {
		return err
	}
	p.detail("ready after %s", time.Since(start).Round(time.Second))
	// A Ctrl-C during the builds (which do not stop for it) ends here:
	// the run inside would not have seen it.
	if err := ctx.Err(); err != nil {
		return err
	}

	// From here a Ctrl-C (which reaches the run inside too) stops the
	// cluster, not the cleanup.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	sb, err := cluster.NewSandbox("coffer-dev-")
	if err != nil {
		if errors.Is(err, cluster.ErrNotRoot) {
			return ErrNotRoot
		}
		return err
	}
	// `ip netns exec` reads /etc/netns/{name}/resolv.conf: the node's
	// resolver, which knows the vaults' names.
	etcNetns := filepath.Join("/etc/netns", sb.Name)
	_, statErr := os.Stat("/etc/netns")
	madeEtcNetns := os.IsNotExist(statErr)
	err = os.MkdirAll(etcNetns, 0o755)
	if err == nil {
		err = os.WriteFile(filepath.Join(etcNetns, "resolv.conf"), []byte("nameserver "+cluster.NodeIP+"\n"), 0o644)
	}
	code := 1
	if err == nil {
		os.Setenv(envAssets, assets)
		os.Setenv(envImages, strings.Join(tarballs, string(os.PathListSeparator)))
		code = sb.Run(o.Args, sigs)
	}
	left := sb.Close()
	if rmErr := os.RemoveAll(etcNetns); rmErr != nil {
		left = append(left, rmErr.Error())
	}
	if madeEtcNetns {
		os.Remove("/etc/netns") // only if empty: another namespace's may be there now
	}
	for _, name := range []string{f.Kubeconfig, f.EnvFile, f.EnvFile + ".ca.pem"} {
		os.Remove(name)
	}
	switch {
	case err != nil:
		return err
	case len(left) > 0:
		// One line: the CLI prints an error's first line only.
		return fmt.Errorf("the teardown left these behind, and removed them now: %s", strings.Join(left, "; "))
	case code != 0:
		return fmt.Errorf("the cluster stopped with exit code %d (see above)", code)
	}
	fmt.Fprintln(o.Out, "Stopped: nothing is left of the cluster (no process, mount, veth or network namespace).")
	return nil
}

// Inside runs in the sandbox: it starts the cluster, installs Coffer
// with `coffer install`, writes the kubeconfig and the administrator's
// credentials, prints how to use them, and tears everything down when ctx
// ends.
func Inside(ctx context.Context, o Options) (err error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if err := cluster.Enter(); err != nil {
		return err
	}
	start := time.Now()
	p := progress{o.Out}
	p.step("Starting the cluster in network namespace %s (node %s)", cluster.Namespace(), cluster.NodeIP)
	c, err := cluster.Start(ctx, cluster.Options{Assets: os.Getenv(envAssets), Images: filepath.SplitList(os.Getenv(envImages)),
		Log: func(format string, args ...any) { p.detail(format, args...) }})
	if err != nil {
		return err
	}
	f := files(o)
	defer func() {
		fmt.Fprintln(o.Out, "\nStopping the cluster...")
		err = errors.Join(err, c.Stop())
	}()
	p.detail("the node is ready after %s", time.Since(start).Round(time.Second))
	// kube-proxy's stand-in: the vaults' name is the node's address.
	proxy, err := c.ServeService(Namespace, "coffer-server", "https", net.JoinHostPort(cluster.NodeIP, "8443"))
	if err != nil {
		return err
	}
	defer proxy.Close()

	p.step("Preparing namespace %s: the CA of the cluster's service-account issuer, for workload identity", Namespace)
	cs := c.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := cs.CoreV1().ConfigMaps(Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-ca"},
		Data: map[string]string{"ca.crt": string(c.CAData)}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	api, err := url.Parse(c.Config.Host)
	if err != nil {
		return err
	}
	res, err := install.Install(ctx, install.Options{Kubeconfig: c.Kubeconfig, Values: values(c, api), Out: o.Out})
	if err != nil {
		return err
	}
	if err := copyFile(c.Kubeconfig, f.Kubeconfig, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(f.EnvFile+".ca.pem", res.CAPEM, 0o644); err != nil {
		return err
	}
	env := res.Admin
	env.CAFile = f.EnvFile + ".ca.pem"
	if err := env.Write(f.EnvFile); err != nil {
		return err
	}
	banner(o.Out, cluster.Namespace(), f, res, c.Issuer, time.Since(start))
	<-ctx.Done()
	return nil
}

// values are the chart values this node needs beyond coffer install's:
// the images built here; the node components on the node's network,
// reaching the apiserver at the node's address (no kube-proxy, so no
// ClusterIPs); 169.254.169.254 on lo (no dummy interfaces); the
// directories of the cluster's own; and the issuer's CA, with private
// issuers allowed (this cluster's apiserver is on a private address).
func values(c *cluster.Cluster, api *url.URL) map[string]any {
	return map[string]any{
		"image":     map[string]any{"repository": strings.Split(CofferImage, ":")[0], "tag": strings.Split(CofferImage, ":")[1], "pullPolicy": "Never"},
		"apiServer": map[string]any{"host": api.Hostname(), "port": api.Port()},
		"server": map[string]any{"dnsSuffix": "vault." + cluster.Domain, "persistence": map[string]any{"enabled": false},
			"federationCA": map[string]any{"configMap": "kube-ca", "key": "ca.crt"}, "allowPrivateIssuers": true},
		"linux":                map[string]any{"kubeletRootDir": c.KubeletDir, "providersDir": filepath.Join(c.Dir, "providers"), "hostNetwork": true},
		"enableSecretRotation": true, "syncSecret": map[string]any{"enabled": true},
		"nodeAgent": map[string]any{"socketDir": filepath.Join(c.Dir, "agent"), "linkLocalInterface": "lo"},
		"webhook":   map[string]any{"hostNetwork": true},
	}
}

func banner(w io.Writer, netns string, f Files, res *install.Result, issuer string, took time.Duration) {
	in := "sudo ip netns exec " + netns + " "
	fmt.Fprintf(w, `
Coffer is running on a local Kubernetes cluster (ready in %s).

  node           %s in network namespace %s
  kubeconfig     %s
  kubectl        %s
  admin          %s (the CA in %s.ca.pem)
  tenant         %s
  node identity  client id %s, principal id %s
  issuer         %s

The cluster is reachable inside its network namespace only:
  %s%s --kubeconfig %s get pods -A
  %scoffer --env-file %s vault create --name demo
  export TENANT_ID=%s NODE_PRINCIPAL_ID=%s
then the examples/ (the e2e's images are loaded); for instance seed 000:
  examples/seed-000/README.md, with "kubectl" and "coffer" run as above

Ctrl-C stops the cluster and removes everything it made.
`, took.Round(time.Second), cluster.NodeIP, netns, f.Kubeconfig, f.Kubectl, f.EnvFile, f.EnvFile, res.Identity.TenantID,
		res.Identity.ClientID, res.Identity.PrincipalID, issuer,
		in, f.Kubectl, f.Kubeconfig, in, f.EnvFile, res.Identity.TenantID, res.Identity.PrincipalID)
}

// source finds the Coffer source tree: dir if given, else the first
// directory above the working directory whose go.mod is Coffer's.
func source(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/cofferhq/coffer\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("coffer dev --kubernetes builds the node's images and Kubernetes binaries from Coffer's source: run it in a checkout, or give --source")
		}
	}
}

// kubeAssets runs scripts/kube-assets.sh, which builds what is missing
// and prints the directory; its progress goes to out.
func kubeAssets(ctx context.Context, src string, out io.Writer) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(src, "scripts", "kube-assets.sh"))
	cmd.Dir = src
	cmd.Stderr = out
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/kube-assets.sh: %w", err)
	}
	dir := strings.TrimSpace(string(b))
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("scripts/kube-assets.sh did not build %s: %w", bin, err)
		}
	}
	return dir, nil
}

// buildImages builds the node's images into dir/{version}, or reuses
// those of a clean tree's version that are there.
func buildImages(src, dir string, p progress) ([]string, error) {
	version := images.Version(src)
	out := filepath.Join(dir, version)
	names := []string{"pause", "app", "coffer"}
	var tarballs []string
	cached := !strings.HasSuffix(version, "-dirty")
	for _, n := range names {
		t := filepath.Join(out, n+".tar")
		tarballs = append(tarballs, t)
		if _, err := os.Stat(t); err != nil {
			cached = false
		}
	}
	if cached {
		p.detail("cached for %s in %s", version, out)
		return tarballs, nil
	}
	// Other versions' images are of no more use.
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	var links []string
	for _, tool := range []string{"sleep", "cat", "ls", "printenv", "curl"} {
		links = append(links, "bin/"+tool)
	}
	start := time.Now()
	built, err := images.Build(src, out,
		images.Image{Ref: cluster.PauseImage, Package: "./internal/cli/localcluster/pause", Binary: "pause"},
		images.Image{Ref: AppImage, Package: "./test/e2e/app", Binary: "app", Links: links},
		images.Image{Ref: CofferImage, Package: "./cmd/coffer", Binary: "coffer", Variants: images.CofferVariants},
	)
	if err != nil {
		return nil, err
	}
	// Only the tarballs are kept.
	for _, n := range append(names, slices.Collect(maps.Keys(images.CofferVariants))...) {
		os.Remove(filepath.Join(out, n))
	}
	p.detail("built %s in %s", version, time.Since(start).Round(time.Second))
	return built, nil
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(to); err == nil && bytes.Equal(cur, b) {
		return nil
	}
	tmp := to + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}

type progress struct{ w io.Writer }

func (p progress) step(format string, args ...any) { fmt.Fprintf(p.w, "• "+format+"\n", args...) }

func (p progress) detail(format string, args ...any) { fmt.Fprintf(p.w, "    "+format+"\n", args...) }
