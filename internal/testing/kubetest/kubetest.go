// Package kubetest runs a real Kubernetes control plane for tests: the
// kube-apiserver and etcd that scripts/kube-assets.sh builds from the Go
// module proxy, started through controller-runtime's envtest.
//
// A fake clientset cannot tell whether Coffer's Kubernetes code works against
// the real API machinery (admission, RBAC, the TokenRequest API, projected
// service-account tokens and their OIDC discovery), so the tests use the real
// thing. No controller-manager, scheduler or kubelet runs: objects that those
// would create, such as each namespace's "default" ServiceAccount, must be
// created by the test.
//
// The control plane listens on 127.0.0.1 only (or on the one address
// Options.Address names). Service-account tokens are signed with a fresh
// RSA key (RS256, which is what token federation such as Microsoft Entra
// workload identity accepts), and the issuer's discovery
// document and JWKS are readable without credentials, as they are for a
// cloud cluster's public OIDC issuer. A test that federates those tokens
// fetches them like a relying party would:
//
//	env := kubetest.Start(t, kubetest.Options{})
//	hc := env.HTTPClient() // anonymous, trusts env.CAData
//	resp, err := hc.Get(env.Issuer + "/.well-known/openid-configuration")
//	// ... then GET the document's jwks_uri (= env.JWKSURL()) the same way.
package kubetest

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// KubernetesVersion is the kube-apiserver release that scripts/kube-assets.sh
// builds (pinned in tools/kube/go.mod). It names the default assets
// directory, so it must change together with that pin.
const KubernetesVersion = "v1.36.3"

// DiscoveryRoleBinding is the ClusterRoleBinding that Start creates so that
// anonymous clients may read the service-account issuer's discovery document
// and JWKS. A real apiserver only grants that to authenticated clients by
// default, but relying parties that verify projected tokens fetch these
// documents without credentials.
const DiscoveryRoleBinding = "kubetest:anonymous-service-account-issuer-discovery"

// Options configure the control plane. The zero value is a working default:
// no CRDs, and the client-go scheme plus apiextensions for Env.Client.
type Options struct {
	// CRDDirectoryPaths are directories or files of CustomResourceDefinition
	// manifests that envtest installs, and waits for, before Start returns.
	// A path that does not exist fails the test rather than being skipped,
	// so a typo cannot silently test nothing.
	CRDDirectoryPaths []string

	// APIServerFlags are extra kube-apiserver flags, without the leading
	// "--", e.g. {"token-auth-file": {path}}. They are applied last, so they
	// override the harness's own settings; overriding the service-account
	// or serving flags can break Issuer, CAData and the TokenRequest API.
	APIServerFlags map[string][]string

	// Address is the one address kube-apiserver listens on, and so the
	// host of Config and Issuer (default 127.0.0.1). Give another only in
	// a network namespace of the test's own, such as the e2e node's, where
	// pods on its bridge must reach the apiserver and the issuer and
	// cannot reach the namespace's loopback.
	Address string

	// StartTimeout bounds the start of etcd and of kube-apiserver each.
	// Zero means 2 minutes: a cold kube-apiserver on a busy 2-core CI machine
	// running other test packages in parallel can take well over envtest's
	// default of 20 seconds.
	StartTimeout time.Duration
}

// Env is a running control plane. Everything is stopped in t.Cleanup.
type Env struct {
	// Config authenticates as an administrator (a client certificate in
	// group system:masters), for building other clients.
	Config *rest.Config

	// Client is a controller-runtime client whose scheme has the built-in
	// API types and apiextensions, so it can read and write CRDs too.
	Client client.Client

	// Clientset is the typed client-go API, for subresources that the
	// controller-runtime client does not cover well, such as
	// ServiceAccounts(ns).CreateToken.
	Clientset kubernetes.Interface

	// Scheme is Client's scheme. Tests that add CRD types register them
	// here before using them with Client.
	Scheme *runtime.Scheme

	// Issuer is the service-account token issuer: the "iss" claim of every
	// token the apiserver signs, and the base URL of its OIDC discovery
	// document (Issuer + "/.well-known/openid-configuration"). It has no
	// trailing slash.
	Issuer string

	// CAData is the PEM certificate of the CA that signed the apiserver's
	// serving certificate. An HTTPS client must trust it to reach Issuer.
	CAData []byte

	env *envtest.Environment
}

// JWKSURL returns where the apiserver publishes the public keys of the
// service-account token signer. Its discovery document advertises the same
// URL as jwks_uri; the harness sets it explicitly because kube-apiserver
// would otherwise derive it from its advertise address, not from Issuer.
func (e *Env) JWKSURL() string { return e.Issuer + "/openid/v1/jwks" }

// KubeconfigFile writes a kubeconfig with the test's admin credentials, for
// a binary run with --kubeconfig, and returns its path.
func (e *Env) KubeconfigFile(t testing.TB) string {
	t.Helper()
	c := e.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// HTTPClient returns an anonymous HTTPS client that trusts CAData, the way
// an external relying party sees the issuer: it sends no credentials, so a
// request it makes succeeds only where anonymous access is allowed, such as
// the issuer's discovery document and JWKS.
func (e *Env) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CAData)
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			// No proxy: the apiserver is on loopback and only reachable
			// directly, whatever HTTPS_PROXY the machine has.
			Proxy:           nil,
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}
}

// UserConfig returns a config that authenticates as the given user (by a
// client certificate that the control plane trusts) with only the RBAC
// permissions that the test grants it, for tests of what a less privileged
// caller may do. Config itself bypasses RBAC.
func (e *Env) UserConfig(t testing.TB, name string, groups ...string) *rest.Config {
	t.Helper()
	u, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, rest.CopyConfig(e.Config))
	if err != nil {
		t.Fatalf("kubetest: provisioning user %q: %v", name, err)
	}
	return u.Config()
}

// AssetsDir returns the directory that holds the kube-apiserver and etcd
// binaries: $KUBEBUILDER_ASSETS when set (the Makefile sets it), else the
// cache that scripts/kube-assets.sh fills by default, so that `go test`
// run by hand after one `make kube-assets` finds the binaries too.
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "kube-assets", KubernetesVersion), nil
}

// repoRoot walks up from the working directory, which go test sets to the
// package's directory, to the main module's root. It skips other modules'
// go.mod files, such as tools/kube's.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && isMainModule(data) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/cofferhq/coffer above the working directory")
		}
		dir = parent
	}
}

func isMainModule(gomod []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == "github.com/cofferhq/coffer"
		}
	}
	return false
}

// Start starts etcd and kube-apiserver and returns once the API, the CRDs in
// opt and anonymous OIDC discovery all answer. It fails the test, never skips
// it, when the binaries are missing: a skipped Kubernetes test reads as a
// pass in CI.
func Start(t testing.TB, opt Options) *Env {
	t.Helper()

	dir, err := AssetsDir()
	if err != nil {
		t.Fatalf("kubetest: locating the kube-apiserver and etcd binaries: %v; run `make kube-assets` or set KUBEBUILDER_ASSETS", err)
	}
	apiserverPath := filepath.Join(dir, "kube-apiserver")
	etcdPath := filepath.Join(dir, "etcd")
	for _, p := range []string{apiserverPath, etcdPath} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			t.Fatalf("kubetest: %s is missing or not executable: run `make kube-assets` (it builds kube-apiserver %s and etcd from the Go module proxy into %s)",
				p, KubernetesVersion, dir)
		}
	}

	keyDir := t.TempDir()
	signingKey, publicKey, err := writeSigningKey(keyDir)
	if err != nil {
		t.Fatalf("kubetest: service-account signing key: %v", err)
	}

	timeout := opt.StartTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}

	logs := &tailBuffer{max: 64 << 10}
	api := &envtest.APIServer{Path: apiserverPath, Out: logs, Err: logs}
	if opt.Address != "" {
		// envtest picks a free port on loopback only; on another address
		// the port is picked here, the same way. The serving certificate
		// names the address.
		port, err := freePort(opt.Address)
		if err != nil {
			t.Fatalf("kubetest: a port on %s: %v", opt.Address, err)
		}
		api.SecureServing.Address, api.SecureServing.Port = opt.Address, port
	}
	etcd := &envtest.Etcd{Path: etcdPath, Out: logs, Err: logs}

	// envtest picks the secure port while it starts the process, so flags
	// that embed the issuer URL are rendered lazily, from the address it
	// chose. envtest binds that address to "localhost", which Go resolves
	// to 127.0.0.1; Start checks that below.
	issuer := func() string {
		return "https://" + net.JoinHostPort(api.SecureServing.Address, api.SecureServing.Port)
	}
	args := api.Configure()
	// envtest's own issuer ends in "/", and its signing key is ECDSA, which
	// federation peers that only accept RS256 reject.
	args.SetRaw("service-account-issuer", lazyArg(func() []string { return []string{issuer()} }))
	args.SetRaw("service-account-jwks-uri", lazyArg(func() []string { return []string{issuer() + "/openid/v1/jwks"} }))
	args.Set("service-account-signing-key-file", signingKey)
	args.Set("service-account-key-file", publicKey)
	// Anonymous requests are what OIDC discovery needs; RBAC still denies
	// them everything else.
	args.Set("anonymous-auth", "true")
	// The apiserver would otherwise advertise the machine's first
	// non-loopback address, which nothing here listens on, and its
	// endpoint reconciler rejects a loopback one, logging errors forever.
	args.SetRaw("advertise-address", lazyArg(func() []string { return []string{api.SecureServing.Address} }))
	args.Set("endpoint-reconciler-type", "none")
	for name, values := range opt.APIServerFlags {
		args.Set(strings.TrimPrefix(name, "--"), values...)
	}

	env := &envtest.Environment{
		ControlPlane:             envtest.ControlPlane{APIServer: api, Etcd: etcd},
		BinaryAssetsDirectory:    dir,
		CRDDirectoryPaths:        opt.CRDDirectoryPaths,
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: timeout,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// Registered before Start, so a start that fails halfway still stops
	// whatever it launched.
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("kubetest: stopping the control plane: %v", err)
		}
		if t.Failed() {
			t.Logf("kubetest: last control-plane output:\n%s", logs.String())
		}
	})

	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("kubetest: starting kube-apiserver and etcd from %s: %v\nlast control-plane output:\n%s", dir, err, logs.String())
	}
	if ip := net.ParseIP(api.SecureServing.Address); ip == nil || (opt.Address == "" && !ip.IsLoopback()) || (opt.Address != "" && api.SecureServing.Address != opt.Address) {
		t.Fatalf("kubetest: kube-apiserver bound to %q, not %s", api.SecureServing.Address, cmp.Or(opt.Address, "a loopback address"))
	}
	if etcd.URL == nil || net.ParseIP(etcd.URL.Hostname()) == nil || !net.ParseIP(etcd.URL.Hostname()).IsLoopback() {
		t.Fatalf("kubetest: etcd bound to %v, not a loopback address", etcd.URL)
	}

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatalf("kubetest: scheme: %v", err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatalf("kubetest: scheme: %v", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatalf("kubetest: controller-runtime client: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: clientset: %v", err)
	}

	e := &Env{
		Config:    cfg,
		Client:    c,
		Clientset: cs,
		Scheme:    scheme,
		Issuer:    issuer(),
		CAData:    append([]byte(nil), cfg.CAData...),
		env:       env,
	}
	if len(e.CAData) == 0 {
		e.CAData = append([]byte(nil), api.SecureServing.CA...)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := e.allowAnonymousDiscovery(ctx); err != nil {
		t.Fatalf("kubetest: anonymous OIDC discovery: %v", err)
	}
	return e
}

// allowAnonymousDiscovery binds the built-in ClusterRole
// system:service-account-issuer-discovery to unauthenticated users (by
// default it is bound to service accounts only), then waits until an
// anonymous client can read the discovery document, since RBAC changes take
// effect asynchronously.
func (e *Env) allowAnonymousDiscovery(ctx context.Context) error {
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: DiscoveryRoleBinding},
		RoleRef: rbacv1.RoleRef{
			APIGroup: rbacv1.GroupName,
			Kind:     "ClusterRole",
			Name:     "system:service-account-issuer-discovery",
		},
		Subjects: []rbacv1.Subject{{
			APIGroup: rbacv1.GroupName,
			Kind:     rbacv1.GroupKind,
			Name:     "system:unauthenticated",
		}},
	}
	if err := e.Client.Create(ctx, crb); err != nil {
		return fmt.Errorf("creating ClusterRoleBinding %s: %w", DiscoveryRoleBinding, err)
	}

	hc := e.HTTPClient()
	defer hc.CloseIdleConnections()
	url := e.Issuer + "/.well-known/openid-configuration"
	var last error
	for {
		last = probe(ctx, hc, url)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GET %s: %w", url, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func probe(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// writeSigningKey writes a fresh RSA key for signing service-account tokens
// and its public half for verifying them. A new key per control plane keeps
// tokens from one test from verifying against another's JWKS.
func writeSigningKey(dir string) (signingKey, publicKey string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	signingKey = filepath.Join(dir, "sa-signer.key")
	publicKey = filepath.Join(dir, "sa-signer.pub")
	if err := os.WriteFile(signingKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(publicKey, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return "", "", err
	}
	return signingKey, publicKey, nil
}

// lazyArg is an envtest flag whose value is computed when envtest renders
// the command line, after it has chosen ports.
type lazyArg func() []string

func (a lazyArg) Append(...string) envtest.Arg { return a }
func (a lazyArg) Get([]string) []string        { return a() }

// tailBuffer keeps the last max bytes of the control plane's output, to be
// shown when a test fails: the full log of a kube-apiserver is megabytes.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// freePort returns a port on host that nothing listens on now.
func freePort(host string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	return port, err
}
