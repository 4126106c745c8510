package install

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"

	coffclient "github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
)

// Connector reaches a server pod's port: dial opens a connection to it,
// and stop releases what the connection needs.
type Connector func(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, port int) (dial func(ctx context.Context) (net.Conn, error), stop func(), err error)

// PortForward reaches the pod's port as `kubectl port-forward` does:
// through the apiserver and the pod's kubelet, over WebSockets, or SPDY
// where the apiserver has no WebSockets for it. The forward listens on
// loopback only, on a port the kernel picks.
func PortForward(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, port int) (func(context.Context) (net.Conn, error), func(), error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, nil, err
	}
	var dialer httpstream.Dialer = spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: rt}, "POST", u)
	if ws, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, cfg); err == nil {
		dialer = portforward.NewFallbackDialerForStreaming(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	stopCh, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stopCh, ready, io.Discard, io.Discard)
	if err != nil {
		return nil, nil, err
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-failed:
		return nil, nil, fmt.Errorf("port forward to pod %s/%s: %w", pod.Namespace, pod.Name, err)
	case <-ctx.Done():
		close(stopCh)
		return nil, nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		close(stopCh)
		return nil, nil, fmt.Errorf("port forward to pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	var d net.Dialer
	dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", local) }
	return dial, func() { close(stopCh) }, nil
}

// management returns a client of the server's management API that
// reaches a ready server pod through o.Connect, whatever name the
// credentials give its host (TLS still checks that name), and a stop.
func (c *cluster) management(ctx context.Context, o Options, admin devenv.Env, caPEM []byte) (*coffclient.Client, func(), error) {
	pods, err := c.cs.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: selector(o.Release, "server")})
	if err != nil {
		return nil, nil, err
	}
	var pod *corev1.Pod
	for i := range pods.Items {
		if ready(&pods.Items[i]) {
			pod = &pods.Items[i]
			break
		}
	}
	if pod == nil {
		return nil, nil, errors.New("no server pod is ready")
	}
	port := 0
	for _, ctr := range pod.Spec.Containers {
		for _, p := range ctr.Ports {
			if p.Name == "https" {
				port = int(p.ContainerPort)
			}
		}
	}
	if port == 0 {
		return nil, nil, fmt.Errorf("server pod %s has no port named https", pod.Name)
	}
	dial, stop, err := o.Connect(ctx, c.cfg, pod, port)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		stop()
		return nil, nil, errors.New("the server's CA is not PEM")
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		Proxy:           nil,
		DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}
	cl, err := coffclient.NewWithHTTP(admin, hc)
	if err != nil {
		stop()
		return nil, nil, err
	}
	return cl, func() { hc.CloseIdleConnections(); stop() }, nil
}

// nodePool creates the node pool, as `coffer nodepool create` does, and
// returns its identity and the agents' new secret. A pool that exists
// (an earlier run made it, and its credentials' Secret is gone) keeps its
// identity and gets a new agent secret, which replaces the old one.
func (c *cluster) nodePool(ctx context.Context, o Options, admin devenv.Env, caPEM []byte, prior *Identity) (Identity, string, error) {
	var id Identity
	var secret string
	// The server answers as soon as it is ready, but its first token
	// requests may race its start on a loaded node: retried for a while.
	var last error
	err := waitFor(ctx, time.Minute, "the management API", func() (bool, string) {
		id, secret, last = c.tryNodePool(ctx, o, admin, caPEM, prior)
		var me *coffclient.ManagementError
		if last == nil || (errors.As(last, &me) && me.Status < 500) {
			return true, ""
		}
		return false, last.Error()
	})
	if err != nil {
		return Identity{}, "", err
	}
	return id, secret, last
}

func (c *cluster) tryNodePool(ctx context.Context, o Options, admin devenv.Env, caPEM []byte, prior *Identity) (Identity, string, error) {
	cl, stop, err := c.management(ctx, o, admin, caPEM)
	if err != nil {
		return Identity{}, "", err
	}
	defer stop()
	var np mgmthttp.NodePoolOut
	err = cl.Manage(ctx, "POST", "node-pools", mgmthttp.CreateIdentityIn{Name: o.NodePool, ResourceGroup: o.ResourceGroup}, &np)
	var me *coffclient.ManagementError
	if err == nil {
		return Identity{NodePool: np.Name, ResourceGroup: o.ResourceGroup, TenantID: np.TenantID, ClientID: np.SystemAssigned.ClientID,
			PrincipalID: np.SystemAssigned.PrincipalID, ResourceID: np.ID, AgentClientID: np.AgentClientID}, np.AgentSecret, nil
	}
	if !errors.As(err, &me) || me.Status != http.StatusConflict {
		return Identity{}, "", fmt.Errorf("creating node pool %s: %w", o.NodePool, err)
	}
	// It exists: find its identity and its agent, and give the agent a
	// new secret (the old one is lost with its Secret).
	id := Identity{NodePool: o.NodePool, ResourceGroup: o.ResourceGroup, TenantID: admin.TenantID}
	var ids struct{ Value []mgmthttp.IdentityOut }
	if err := cl.Manage(ctx, "GET", "identities?resourceGroup="+o.ResourceGroup, nil, &ids); err != nil {
		return Identity{}, "", err
	}
	for _, mi := range ids.Value {
		if strings.EqualFold(mi.Name, o.NodePool) && mi.Type == "SystemAssigned" {
			id.ClientID, id.PrincipalID, id.ResourceID = mi.ClientID, mi.PrincipalID, mi.ID
		}
	}
	if prior != nil {
		id.AgentClientID = prior.AgentClientID
	}
	if id.AgentClientID == "" {
		var sps struct{ Value []mgmthttp.SPOut }
		if err := cl.Manage(ctx, "GET", "service-principals", nil, &sps); err != nil {
			return Identity{}, "", err
		}
		for _, sp := range sps.Value {
			if sp.DisplayName == o.NodePool+"-node-agent" {
				id.AgentClientID = sp.AppID
			}
		}
	}
	if id.ClientID == "" || id.AgentClientID == "" {
		return Identity{}, "", fmt.Errorf("node pool %s exists, but its identity or its agent was not found", o.NodePool)
	}
	var sp mgmthttp.SPOut
	if err := cl.Manage(ctx, "POST", "service-principals/"+id.AgentClientID+"/credentials", mgmthttp.CredentialsIn{}, &sp); err != nil {
		return Identity{}, "", fmt.Errorf("giving node pool %s's agent a new secret: %w", o.NodePool, err)
	}
	return id, sp.Password, nil
}

func selector(release, component string) string {
	s := LabelInstance + "=" + release + ",app.kubernetes.io/name=coffer"
	if component != "" {
		s += ",app.kubernetes.io/component=" + component
	}
	return s
}

func ready(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || len(p.Status.ContainerStatuses) == 0 {
		return false
	}
	for _, cs := range p.Status.ContainerStatuses {
		if !cs.Ready {
			return false
		}
	}
	return true
}
