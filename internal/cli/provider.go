package cli

import (
	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/provider"
)

// providerFlags names the flag of each provider option, for its errors.
var providerFlags = map[string]string{
	"Endpoint": "--endpoint", "Name": "--name", "VaultSuffix": "--vault-dns-suffix", "AuthorityHost": "--authority-host",
	"CAFile": "--ca-file", "MetricsAddr": "--metrics-addr", "MaxResponseBytes": "--max-response-bytes", "NodeAgentSocket": "--node-agent-socket",
}

func (a *app) providerCmd() *cobra.Command {
	var o provider.Options
	c := &cobra.Command{
		Use:   "provider",
		Short: "Run the Secrets Store CSI provider for Coffer vaults",
		Long: `Run the provider that Secrets Store CSI drivers (Coffer's or the upstream one)
call over the v1alpha1 gRPC protocol. It reads the Azure provider's parameters
(keyvaultName, tenantId, objects, clientID, ...), so name its socket azure.sock
to serve existing SecretProviderClasses with provider: azure, or coffer.sock.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			daemon.LeanGC()
			o.Log = a.logger(true).With("component", "provider")
			d, err := provider.NewDaemon(o)
			if err != nil {
				return optionError(err, providerFlags)
			}
			return d.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&o.Endpoint, "endpoint", "unix:///var/run/secrets-store-csi-providers/coffer.sock", "the provider socket: {dir}/{name}.sock")
	f.StringVar(&o.Name, "name", "", "provider name reported by Version (default: the socket's name)")
	f.StringVar(&o.VaultSuffix, "vault-dns-suffix", "", "the vaults' DNS suffix and port, such as vault.example.com:8443")
	f.StringVar(&o.AuthorityHost, "authority-host", "", "the authority's URL (default https://{vault-dns-suffix})")
	f.StringVar(&o.CAFile, "ca-file", "", "PEM CA bundle to trust for the vault and authority (added to the system roots)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":8898", "address of /metrics and /healthz (empty: off)")
	f.IntVar(&o.MaxResponseBytes, "max-response-bytes", 4<<20, "largest total size of one volume's files")
	f.StringVar(&o.NodeAgentSocket, "node-agent-socket", "unix:///var/run/coffer/node-agent.sock", "the node agent's local socket, for usePodIdentity and useVMManagedIdentity (empty: those modes are refused)")
	return c
}
