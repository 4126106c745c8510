//go:build !node

package cli

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/cli/devcluster"
	"github.com/cofferhq/coffer/internal/cli/localcluster"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
)

// serverFlags names the flag of each server option, for its errors: the
// store's (storeFlags) and the server's own.
var serverFlags = withStoreFlags(map[string]string{
	"Listen": "--listen", "DNSSuffix": "--dns-suffix",
	"PublicPort": "--public-port", "TLSCertFile": "--tls-cert-file", "TLSKeyFile": "--tls-key-file",
	"InsecureHTTP": "--insecure-http", "TokenLifetime": "--token-lifetime", "TokenRateLimit": "--token-rate-limit",
	"TokenRateBurst": "--token-rate-burst", "FederationCAFile": "--federation-ca-file", "AllowPrivateIssuers": "--allow-private-issuers", "PurgeInterval": "--purge-interval",
	"AuditLog": "--audit-log", "AuditMaxSizeMB": "--audit-max-size-mb", "AuditMaxFiles": "--audit-max-files", "MetricsAddr": "--metrics-addr",
	"AllowPrivateEndpoints": "--allow-private-endpoints", "EgressCAFile": "--egress-ca-file",
	"ACMEHTTPListen": "--acme-http-listen", "EventInterval": "--event-interval", "NoVaultWatch": "--no-vault-watch",
})

func withStoreFlags(m map[string]string) map[string]string {
	maps.Copy(m, storeFlags)
	return m
}

func (a *app) serverCmd() *cobra.Command {
	var o server.Options
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: vault API, authority and management API (TLS required)",
		Long: `Run the control plane on one HTTPS listener. Vaults are served at
https://{vault}.{dns-suffix}:{public-port}/ and the authority at
https://{dns-suffix}:{public-port}/. The root key comes from --root-key-file or
COFFER_ROOT_KEY. Initialise a new data directory first with
` + "`coffer operator init`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.Log = a.logger(true)
			if err := o.Validate(); err != nil {
				return optionError(err, serverFlags)
			}
			server.TuneGC() // the process's GC, not the library's to set
			srv, err := server.New(c.Context(), o)
			if err != nil {
				return optionError(err, serverFlags)
			}
			return srv.Run(c.Context())
		},
	}
	f := c.Flags()
	bindStoreFlags(c, &o.StoreOptions)
	f.StringVar(&o.Listen, "listen", ":8443", "address to listen on")
	f.StringVar(&o.DNSSuffix, "dns-suffix", "", "DNS suffix of vault hosts, such as vault.example.com")
	f.IntVar(&o.PublicPort, "public-port", 0, "HTTPS port clients use, if a proxy or port mapping changes it (default: the listen port)")
	f.StringVar(&o.TLSCertFile, "tls-cert-file", "", "PEM certificate for *.{dns-suffix} and {dns-suffix}")
	f.StringVar(&o.TLSKeyFile, "tls-key-file", "", "PEM private key of the certificate")
	f.BoolVar(&o.InsecureHTTP, "insecure-http", false, "serve plain HTTP, only behind a TLS-terminating proxy")
	f.DurationVar(&o.PurgeInterval, "purge-interval", time.Minute, "how often deleted objects past retention are purged")
	bindCommonServer(c, &o, "127.0.0.1:9464")
	return c
}

// bindCommonServer binds the server flags `coffer server` and `coffer dev`
// share.
func bindCommonServer(c *cobra.Command, o *server.Options, metricsDefault string) {
	f := c.Flags()
	f.DurationVar(&o.TokenLifetime, "token-lifetime", time.Hour, "lifetime of issued access tokens (5m to 24h)")
	f.Float64Var(&o.TokenRateLimit, "token-rate-limit", 0, "token requests per second allowed per client (default 20; negative: unlimited)")
	f.IntVar(&o.TokenRateBurst, "token-rate-burst", 0, "token request burst per client (default 40)")
	f.StringVar(&o.FederationCAFile, "federation-ca-file", "", "PEM CAs to trust, besides the system roots, for federated issuers (such as a cluster's service-account issuer)")
	f.StringVar(&o.AuditLog, "audit-log", "", "audit log file (default: {data-dir}/audit.log)")
	f.IntVar(&o.AuditMaxSizeMB, "audit-max-size-mb", 0, "rotate the audit log once its file holds this many MiB, to {audit-log}-{UTC time} (0: never; rotate it by renaming instead)")
	f.IntVar(&o.AuditMaxFiles, "audit-max-files", 0, "with --audit-max-size-mb, how many rotated files to keep; older ones are removed (0: all)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", metricsDefault, "address for Prometheus metrics over plain HTTP (empty: off)")
	f.BoolVar(&o.AllowPrivateIssuers, "allow-private-issuers", false, "let federated credentials' issuers be loopback, link-local or private addresses (such as an in-cluster apiserver's)")
	f.BoolVar(&o.AllowPrivateEndpoints, "allow-private-endpoints", false, "let event subscriptions, ACME directories and DNS hooks be loopback, link-local or private addresses")
	f.DurationVar(&o.EventInterval, "event-interval", time.Second, "how often vault events are delivered and failed deliveries retried")
	f.DurationVar(&o.EventScanInterval, "event-scan-interval", time.Minute, "how often every vault with event subscriptions is compared for NearExpiry and Expired events (writes are seen at once)")
	f.StringVar(&o.ACMEHTTPListen, "acme-http-listen", "", "address to answer ACME http-01 challenges on, such as :80 (empty: off)")
	f.StringVar(&o.EgressCAFile, "egress-ca-file", "", "PEM CAs to trust, besides the system roots, for event endpoints, ACME directories and DNS hooks")
	f.BoolVar(&o.NoVaultWatch, "no-vault-watch", false, "do not serve the vault watch (for a proxy that does not stream answers): nodes hold one read per object instead")
}

// devFlags names the flag of each dev option, for its errors.
var devFlags = mergeFlags(serverFlags, map[string]string{
	"DataDir": "--data-dir", "ListenAddress": "--listen-address", "Port": "--port", "DNSSuffix": "--dns-suffix", "HostsFile": "--write-hosts",
})

func (a *app) devCmd() *cobra.Command {
	var o dev.Options
	var writeHosts, kubernetes bool
	var source string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process on the embedded store, with a generated CA",
		Long: `Run the vault server and the authority in one process on the embedded
store. The first run creates the root key, a CA and server certificate, a
tenant, an administrator and a vault named demo; later runs reuse them. It
writes {data-dir}/dev.env with credentials for the CLI and the Azure SDKs.

With --kubernetes (as root, in a source checkout) it runs a real
single-node Kubernetes cluster instead (etcd, kube-apiserver, the
controller-manager, the scheduler, containerd and a kubelet, in a network
namespace of its own) and installs Coffer into it with ` + "`coffer install`" + `; it
writes a kubeconfig, kubectl and the administrator's credentials to
{data-dir}/kubernetes and prints how to use them. Ctrl-C tears it all down.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if kubernetes {
				do := devcluster.Run
				if localcluster.Inside() {
					do = devcluster.Inside
				}
				return do(c.Context(), devcluster.Options{DataDir: o.DataDir, Source: source, Args: os.Args[1:], Out: a.stdout})
			}
			if writeHosts {
				o.HostsFile = "/etc/hosts"
			}
			o.Server.Log = a.logger(false)
			server.TuneGC()
			d, err := dev.New(c.Context(), o)
			if err != nil {
				return optionError(err, devFlags)
			}
			a.banner(d.Env, d.Endpoints(), d.EnvFile)
			return d.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&o.DataDir, "data-dir", ".coffer", "data directory")
	f.IntVar(&o.Port, "port", 8443, "HTTPS port (0 picks a free one)")
	f.StringVar(&o.ListenAddress, "listen-address", "127.0.0.1", "address to bind")
	f.StringVar(&o.DNSSuffix, "dns-suffix", endpoint.DefaultSuffix, "DNS suffix of vault hosts")
	f.BoolVar(&kubernetes, "kubernetes", false, "run a local Kubernetes cluster with Coffer installed by `coffer install` (needs root)")
	f.StringVar(&source, "source", "", "with --kubernetes: the Coffer source tree to build the node's images from (default: found above the working directory)")
	f.BoolVar(&writeHosts, "write-hosts", false, "add /etc/hosts entries for the authority and every vault, for clients that do not resolve *.localhost")
	bindCommonServer(c, &o.Server, "")
	return c
}

func (a *app) banner(env devenv.Env, ep endpoint.Endpoints, envPath string) {
	rel := envPath
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, envPath); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	envFlag := ""
	if rel != filepath.Join(".coffer", devenv.FileName) {
		envFlag = " --env-file " + envPath
	}
	fmt.Fprintf(a.stdout, `Coffer dev server is running.

  Vault URL:      %s
  Authority:      %s
  Tenant:         %s
  Admin client:   %s (secret in %s)
  CA certificate: %s
  Data:           %s

Try it (use "go run ./cmd/coffer" in place of "coffer" from a source checkout):
  coffer secret set%s --vault-name demo --name greeting --value hello
  coffer secret show%s --vault-name demo --name greeting
  coffer vault create%s --name team-a

Azure SDK clients: set -a; . %s; set +a
  then point them at $COFFER_VAULT_URL with authority host $AZURE_AUTHORITY_HOST
  (Go: azidentity DisableInstanceDiscovery). Clients that cannot resolve
  *.localhost need /etc/hosts entries: restart with --write-hosts.

Azure CLI: it resolves names through the system's resolver, so restart
with --write-hosts first; it trusts the CA through REQUESTS_CA_BUNDLE:
  set -a; . %s; set +a
%s  az rest --method get --resource %s --url '%ssecrets/greeting?api-version=7.4'
  (Debian's azure-cli cannot run az keyvault data-plane commands against
  any server: use az rest, as above.)

Press Ctrl-C to stop.
`, env.VaultURL, env.AuthorityHost, env.TenantID, env.ClientID, rel, env.CAFile, env.DataDir,
		envFlag, envFlag, envFlag, envPath, envPath, azRecipe(env), ep.Resource(), env.VaultURL)
}

// azRecipe is the Azure CLI sign-in, one indented command a line.
func azRecipe(env devenv.Env) string {
	var b strings.Builder
	for _, argv := range env.AzureCLI() {
		b.WriteString("  " + devenv.Shell(argv) + "\n")
	}
	return b.String()
}
