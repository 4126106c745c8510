package cli

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/node/unixsock"
)

func (a *app) nodeAgentCmd() *cobra.Command {
	var cfg nodeagent.Config
	var authority, caFile, secretFile, headerFile, listen, redirect, linkDev, localSock, metricsAddr, kubeconfig, lookup string
	var writeStatus bool
	c := &cobra.Command{
		Use:   "node-agent",
		Short: "Run the node agent: IMDS-compatible managed identity tokens for pods and the node",
		Long: `Run the node agent on every node (a host-network DaemonSet). It answers the
instance metadata token endpoint (GET /metadata/identity/oauth2/token with
Metadata: true) on 169.254.169.254:80, the App Service protocol on /msi/token,
and the CSI provider's usePodIdentity / useVMManagedIdentity requests on a
root-only unix socket.

Pods get the identities their AzureIdentityBindings (aadpodidentity.k8s.io/v1)
grant, in their own namespace. A pod proves who it is with its service-account
token (Authorization: Bearer); --pod-lookup=source-ip also accepts a pod's
address, for legacy clients that cannot send one, at the price that anything
able to use a pod's address gets its identities. Callers from the node's own
addresses get the node's identities (--system-identity, --vm-identity).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if cfg.NodeName == "" {
				cfg.NodeName = os.Getenv("NODE_NAME")
			}
			if err := requireFlags(c, "tenant-id", "client-id", "client-secret-file", "authority-host"); err != nil {
				return err
			}
			secret, err := readSecretFile(secretFile, "--client-secret-file")
			if err != nil {
				return err
			}
			cfg.AgentSecret = secret
			if headerFile != "" {
				if cfg.IdentityHeader, err = readSecretFile(headerFile, "--identity-header-file"); err != nil {
					return err
				}
			}
			cfg.Lookup = nodeagent.Lookup(lookup)
			mode := nodeagent.Redirect(redirect)
			switch mode {
			case nodeagent.RedirectLinkLocal, nodeagent.RedirectIPTables, nodeagent.RedirectNone:
			default:
				return usagef("--redirect %q: use link-local (bind 169.254.169.254), iptables (DNAT to --listen) or none", redirect)
			}
			switch {
			case listen == "" && mode == nodeagent.RedirectLinkLocal:
				listen = nodeagent.IMDSAddress + ":80"
			case listen == "":
				return usagef("--listen is required with --redirect=%s: the node's address and a port, such as $(NODE_IP):2579", mode)
			}
			if mode == nodeagent.RedirectIPTables {
				host, _, err := net.SplitHostPort(listen)
				if ip := net.ParseIP(host); err != nil || ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
					return usagef("--listen %q: --redirect=iptables needs the node's own address and a port (a DNAT to loopback drops pods' packets)", listen)
				}
			}
			log := a.logger(true).With("component", "node-agent")
			hc, err := httpclient.New(caFile)
			if err != nil {
				return err
			}
			hc.Timeout = 30 * time.Second
			if mode == nodeagent.RedirectIPTables {
				markConnections(hc)
			}
			cfg.Auth = &authclient.Client{HTTP: hc, Authority: authority}
			cfg.Log = log
			rc, err := kubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			scheme := runtime.NewScheme()
			clientgoscheme.AddToScheme(scheme)
			podidentity.AddToScheme(scheme)
			kube, err := client.New(rc, client.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			// Cancelled on any return, so background loops end with the
			// command and their waits cannot hang it.
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			sw := nodeagent.NewStatusWriter(cfg.NodeName, kube, log, cfg.Policy)
			onChange := func() {}
			if writeStatus {
				onChange = sw.Kick
			}
			cluster, err := nodeagent.NewKubeCluster(ctx, rc, cfg.NodeName, log, onChange)
			if err != nil {
				return err
			}
			cfg.Cluster = cluster
			agent, err := nodeagent.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			if writeStatus {
				sw.Cluster = cluster
				go sw.Run(ctx)
			}
			switch mode {
			case nodeagent.RedirectLinkLocal:
				undo, err := nodeagent.LinkLocal(linkDev)
				if err != nil {
					return err
				}
				defer func() {
					if err := undo(); err != nil {
						log.Warn("removing the link-local address", "error", err)
					}
				}()
			case nodeagent.RedirectIPTables:
				ipt := &nodeagent.IPTables{Target: listen, Log: log}
				if err := ipt.Ensure(ctx); err != nil {
					return err
				}
				done := make(chan struct{})
				go func() { ipt.Reconcile(ctx, 10*time.Second); close(done) }()
				defer func() { cancel(); <-done }()
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			var local net.Listener
			if localSock != "" {
				if local, err = unixsock.Listen(localSock); err != nil {
					return err
				}
				if err := os.Chmod(strings.TrimPrefix(localSock, "unix://"), 0o600); err != nil {
					return err
				}
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			if err := agent.Register(reg); err != nil {
				return err
			}
			if err := serveHTTP(ctx, log, metricsAddr, reg, func() error {
				if !cluster.Synced() {
					return fmt.Errorf("caches not synced")
				}
				return nil
			}); err != nil {
				return err
			}
			log.Info("node agent listening", "addr", ln.Addr().String(), "redirect", redirect, "local-socket", localSock, "node", cfg.NodeName, "pod-lookup", cfg.Lookup)
			return agent.Serve(ctx, ln, local)
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.NodeName, "node-name", "", "this node's name (default: $NODE_NAME)")
	f.StringVar(&cfg.Tenant, "tenant-id", "", "tenant of the node credential and the managed identities")
	f.StringVar(&cfg.AgentClientID, "client-id", "", "the node credential's client id (a node pool's agent principal: coffer nodepool create)")
	f.StringVar(&secretFile, "client-secret-file", "", "file holding the node credential's client secret")
	f.StringVar(&authority, "authority-host", "", "the authority's URL, such as https://coffer.example.com:8443")
	f.StringVar(&caFile, "ca-file", "", "PEM CA bundle to trust for the authority (added to the system roots)")
	f.StringVar(&cfg.SystemIdentity, "system-identity", "", "the node's system-assigned identity (client id or resource id)")
	f.StringSliceVar(&cfg.VMIdentities, "vm-identity", nil, "a user-assigned identity attached to the node (client id or resource id); repeatable")
	f.StringSliceVar(&cfg.NodeIdentityNamespaces, "vm-identity-namespaces", nil, "the only namespaces whose pods may use the node's identities (exception pods, useVMManagedIdentity); default: all, as on a cloud VM")
	f.StringVar(&lookup, "pod-lookup", string(nodeagent.LookupToken), "how pods are found: token (they present their service-account token) or source-ip (legacy clients; an address is not proof)")
	f.StringSliceVar(&cfg.TokenAudiences, "token-audiences", nil, "audiences a pod's token may have on the IMDS endpoint (default: the apiserver's)")
	f.StringVar(&cfg.ProviderAudience, "provider-token-audience", "api://AzureADTokenExchange", "audience of the pod tokens the CSI driver passes to the provider")
	f.BoolVar(&cfg.NodeCallers, "node-callers", true, "let callers from the node's own addresses (host processes, host-network pods) use the node's identities")
	f.StringVar(&headerFile, "identity-header-file", "", "file holding the App Service X-IDENTITY-HEADER secret (default: only service-account tokens are accepted there)")
	f.BoolVar(&cfg.Policy.AllowClusterWide, "allow-cluster-wide-bindings", false, "honour AzureIdentityBindings annotated coffer.dev/cluster-wide=true in other namespaces")
	f.StringVar(&listen, "listen", "", "address to serve IMDS on (default 169.254.169.254:80 with --redirect=link-local; required otherwise)")
	f.StringVar(&redirect, "redirect", string(nodeagent.RedirectLinkLocal), "how 169.254.169.254:80 reaches the agent: link-local, iptables or none")
	f.StringVar(&linkDev, "link-local-interface", "coffer-imds", "interface that gets 169.254.169.254/32 with --redirect=link-local (created as a dummy if missing)")
	f.StringVar(&localSock, "local-socket", "unix:///var/run/coffer/node-agent.sock", "root-only socket for the CSI provider (empty: off)")
	f.StringVar(&metricsAddr, "metrics-addr", ":8096", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.BoolVar(&writeStatus, "write-status", true, "keep AzureAssignedIdentities for this node's pods")
	return c
}

// readSecretFile reads a one-line secret from a file.
func readSecretFile(path, flag string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", flag, path)
	}
	return s, nil
}

// markConnections sets AgentMark on the client's connections, so the
// iptables redirect never catches the agent's own traffic.
func markConnections(hc *http.Client) {
	tr := hc.Transport.(*http.Transport)
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, nodeagent.AgentMark)
		})
		return serr
	}}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, httpclient.LoopbackLocalhost(addr))
	}
}
