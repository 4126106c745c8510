package localcluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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

	"github.com/cofferhq/coffer/internal/crypto/pki"
)

// APIServerPort is where kube-apiserver listens, on NodeIP: the node's
// namespace is the cluster's own, so the port is fixed.
const APIServerPort = 6443

// DiscoveryRoleBinding lets anonymous clients read the service-account
// issuer's discovery document and key set, as relying parties of a
// cloud cluster's public issuer do; by default a real apiserver grants
// that to authenticated clients only.
const DiscoveryRoleBinding = "coffer:anonymous-service-account-issuer-discovery"

// startControlPlane starts etcd and kube-apiserver with certificates of
// the cluster's own CA, and waits for the API: first /readyz, then
// anonymous OIDC discovery.
func (c *Cluster) startControlPlane(ctx context.Context, assets string) error {
	dir := filepath.Join(c.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	ca, err := pki.NewAuthority("Coffer local cluster CA", now)
	if err != nil {
		return err
	}
	// The apiserver is reached at the node's address, from the machine at
	// loopback (a port forwarded into the namespace), and from pods at
	// the kubernetes Service's first address.
	serving, err := ca.Server([]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP(NodeIP), net.IPv4(127, 0, 0, 1), net.ParseIP(ServiceIP)}, now)
	if err != nil {
		return err
	}
	admin, err := ca.Client("coffer-admin", []string{"system:masters"}, now)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048) // RS256: what token federation accepts
	if err != nil {
		return err
	}
	saPriv, _ := x509.MarshalPKCS8PrivateKey(saKey)
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	files := map[string][]byte{
		"ca.crt": ca.CertPEM(), "apiserver.crt": serving.CertPEM, "apiserver.key": serving.KeyPEM,
		"sa.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saPriv}),
		"sa.pub": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}

	// etcd on loopback, with ports the kernel picks.
	clientPort, peerPort, err := freePorts()
	if err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	if err := c.run("etcd", filepath.Join(assets, "etcd"), "--name=node", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "node="+peerURL,
		// The cluster lives as long as its process: durability across a
		// power cut buys nothing.
		"--unsafe-no-fsync"); err != nil {
		return err
	}

	c.Issuer = "https://" + net.JoinHostPort(NodeIP, strconv.Itoa(APIServerPort))
	if err := c.run("kube-apiserver", filepath.Join(assets, "kube-apiserver"),
		"--etcd-servers", clientURL,
		"--bind-address", NodeIP, "--advertise-address", NodeIP, "--secure-port", strconv.Itoa(APIServerPort),
		"--cert-dir", dir, "--tls-cert-file", filepath.Join(dir, "apiserver.crt"), "--tls-private-key-file", filepath.Join(dir, "apiserver.key"),
		"--client-ca-file", filepath.Join(dir, "ca.crt"),
		"--service-cluster-ip-range", ServiceSubnet, "--allow-privileged=true", "--authorization-mode=RBAC",
		"--service-account-issuer", c.Issuer, "--service-account-jwks-uri", c.Issuer+"/openid/v1/jwks",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"), "--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		// Anonymous requests are what OIDC discovery needs; RBAC still
		// denies them everything else.
		"--anonymous-auth=true",
		// Nothing implements the kubernetes Service's address (there is no
		// kube-proxy); Coffer's pods are told the apiserver's address.
		"--endpoint-reconciler-type=none",
		// The node's hostname resolves nowhere: reach the kubelet (logs,
		// exec) at its address.
		"--kubelet-preferred-address-types=InternalIP",
		// No kube-proxy implements ClusterIPs: the apiserver calls
		// webhooks behind Services at their endpoints instead.
		"--enable-aggregator-routing=true"); err != nil {
		return err
	}

	c.CAData = ca.CertPEM()
	c.Config = &rest.Config{Host: c.Issuer, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData, CertData: admin.CertPEM, KeyData: admin.KeyPEM},
		QPS: 100, Burst: 200}
	if c.Clientset, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	c.Scheme = runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(c.Scheme); err != nil {
		return err
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme); err != nil {
		return err
	}
	if c.Client, err = client.New(c.Config, client.Options{Scheme: c.Scheme}); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := WriteKubeconfig(c.Kubeconfig, c.Config); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver to be ready", 2*time.Minute, func() bool {
		b, err := c.Clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok"
	}, "kube-apiserver"); err != nil {
		return err
	}
	return c.allowAnonymousDiscovery(ctx)
}

// WriteKubeconfig writes a kubeconfig file for cfg (its host, CA and
// client certificate), mode 0600.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["coffer"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["coffer-admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["coffer"] = &clientcmdapi.Context{Cluster: "coffer", AuthInfo: "coffer-admin"}
	kc.CurrentContext = "coffer"
	return clientcmd.WriteToFile(*kc, path)
}

// allowAnonymousDiscovery binds system:service-account-issuer-discovery
// to unauthenticated users, then waits until an anonymous client reads
// the discovery document (RBAC changes take effect asynchronously).
func (c *Cluster) allowAnonymousDiscovery(ctx context.Context) error {
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: DiscoveryRoleBinding},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:unauthenticated"}},
	}
	if err := c.Client.Create(ctx, crb); err != nil {
		return fmt.Errorf("creating ClusterRoleBinding %s: %w", DiscoveryRoleBinding, err)
	}
	anon, err := rest.HTTPClientFor(&rest.Config{Host: c.Issuer, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData}})
	if err != nil {
		return err
	}
	defer anon.CloseIdleConnections()
	return c.waitFor(ctx, "anonymous OIDC discovery", time.Minute, func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", c.Issuer+"/.well-known/openid-configuration", nil)
		resp, err := anon.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "kube-apiserver")
}

// freePorts returns two ports on loopback that were free a moment ago.
func freePorts() (int, int, error) {
	var ports [2]int
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports[0], ports[1], nil
}
