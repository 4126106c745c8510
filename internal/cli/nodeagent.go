//go:build !(node && provider)

package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
)

// nodeAgentFlags names the flag of each node agent option, for its errors.
var nodeAgentFlags = map[string]string{
	"NodeName": "--node-name", "Tenant": "--tenant-id", "AgentClientID": "--client-id", "AgentSecretFile": "--client-secret-file",
	"AuthorityHost": "--authority-host", "CAFile": "--ca-file", "SystemIdentity": "--system-identity", "VMIdentities": "--vm-identity",
	"NodeIdentityNamespaces": "--vm-identity-namespaces", "Lookup": "--pod-lookup", "TokenAudiences": "--token-audiences",
	"ProviderAudience": "--provider-token-audience", "NodeCallers": "--node-callers", "IdentityHeaderFile": "--identity-header-file",
	"Listen": "--listen", "Redirect": "--redirect", "LinkLocalInterface": "--link-local-interface", "LocalSocket": "--local-socket",
	"MetricsAddr": "--metrics-addr", "Kubeconfig": "--kubeconfig", "WriteStatus": "--write-status",
	"PodRate": "--pod-rate-limit", "PodBurst": "--pod-burst", "PodInFlight": "--pod-in-flight",
}

func (a *app) nodeAgentCmd() *cobra.Command {
	var o nodeagent.Options
	var lookup, redirect string
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
			daemon.LeanGC()
			if o.NodeName == "" {
				o.NodeName = os.Getenv("NODE_NAME")
			}
			o.Lookup, o.Redirect = nodeagent.Lookup(lookup), nodeagent.Redirect(redirect)
			o.Log = a.logger(true).With("component", "node-agent")
			d, err := nodeagent.NewDaemon(c.Context(), o)
			if err != nil {
				return optionError(err, nodeAgentFlags)
			}
			return d.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&o.NodeName, "node-name", "", "this node's name (default: $NODE_NAME)")
	f.StringVar(&o.Tenant, "tenant-id", "", "tenant of the node credential and the managed identities")
	f.StringVar(&o.AgentClientID, "client-id", "", "the node credential's client id (a node pool's agent principal: coffer nodepool create)")
	f.StringVar(&o.AgentSecretFile, "client-secret-file", "", "file holding the node credential's client secret")
	f.StringVar(&o.AuthorityHost, "authority-host", "", "the authority's URL, such as https://coffer.example.com:8443")
	f.StringVar(&o.CAFile, "ca-file", "", "PEM CA bundle to trust for the authority (added to the system roots)")
	f.StringVar(&o.SystemIdentity, "system-identity", "", "the node's system-assigned identity (client id or resource id)")
	f.StringSliceVar(&o.VMIdentities, "vm-identity", nil, "a user-assigned identity attached to the node (client id or resource id); repeatable")
	f.StringSliceVar(&o.NodeIdentityNamespaces, "vm-identity-namespaces", nil, "the only namespaces whose pods may use the node's identities (exception pods, useVMManagedIdentity); default: all, as on a cloud VM")
	f.StringVar(&lookup, "pod-lookup", string(nodeagent.LookupToken), "how pods are found: token (they present their service-account token) or source-ip (legacy clients; an address is not proof)")
	f.StringSliceVar(&o.TokenAudiences, "token-audiences", nil, "audiences a pod's token may have on the IMDS endpoint (default: the apiserver's)")
	f.StringVar(&o.ProviderAudience, "provider-token-audience", "api://AzureADTokenExchange", "audience of the pod tokens the CSI driver passes to the provider")
	f.BoolVar(&o.NodeCallers, "node-callers", true, "let callers from the node's own addresses (host processes, host-network pods) use the node's identities")
	f.StringVar(&o.IdentityHeaderFile, "identity-header-file", "", "file holding the App Service X-IDENTITY-HEADER secret (default: only service-account tokens are accepted there)")
	f.BoolVar(&o.Policy.AllowClusterWide, "allow-cluster-wide-bindings", false, "honour AzureIdentityBindings annotated coffer.dev/cluster-wide=true in other namespaces")
	f.StringVar(&o.Listen, "listen", "", "address to serve IMDS on (default 169.254.169.254:80 with --redirect=link-local; required otherwise)")
	f.StringVar(&redirect, "redirect", string(nodeagent.RedirectLinkLocal), "how 169.254.169.254:80 reaches the agent: link-local, iptables or none")
	f.StringVar(&o.LinkLocalInterface, "link-local-interface", "coffer-imds", "interface that gets 169.254.169.254/32 with --redirect=link-local (created as a dummy if missing)")
	f.StringVar(&o.LocalSocket, "local-socket", "unix:///var/run/coffer/node-agent.sock", "root-only socket for the CSI provider (empty: off)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":8096", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.BoolVar(&o.WriteStatus, "write-status", true, "keep AzureAssignedIdentities for this node's pods")
	f.Float64Var(&o.PodRate, "pod-rate-limit", nodeagent.DefaultPodRate, "token requests a second each pod (source address) may send; past it, 429 with Retry-After (negative: no limit)")
	f.IntVar(&o.PodBurst, "pod-burst", nodeagent.DefaultPodBurst, "token requests a pod may send at once after a quiet spell, above --pod-rate-limit")
	f.IntVar(&o.PodInFlight, "pod-in-flight", nodeagent.DefaultPodInFlight, "token requests of one pod in progress at once")
	return c
}
