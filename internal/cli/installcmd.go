//go:build !node

package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/cli/install"
)

// installFlags names the flag of each install option, for its errors.
var installFlags = map[string]string{
	"DNSSuffix": "--dns-suffix", "Timeout": "--timeout", "Namespace": "--namespace", "Release": "--release",
}

func (a *app) installCmd() *cobra.Command {
	var o install.Options
	var valueFiles []string
	var writeEnv string
	c := &cobra.Command{
		Use:   "install",
		Short: "Install Coffer into a Kubernetes cluster (a second run upgrades it)",
		Long: `Install Coffer into the cluster of --kubeconfig with its Helm chart (the one
built into this binary), as one command:

  1. checks cluster access and your RBAC (SelfSubjectAccessReview), and the
     values, before it changes anything;
  2. creates the root key, a CA and the server's certificate for
     *.{dns-suffix} and {dns-suffix} (Secrets and a ConfigMap), and the CRDs;
  3. installs the server; its init container initialises the tenant;
  4. creates a node pool through the server: its system-assigned identity
     (what the AKS add-on calls its azurekeyvaultsecretsprovider identity)
     and the node agents' credentials (Secret coffer-node-agent);
  5. installs the CSI driver and provider, the node agent and the webhook,
     and waits until every pod is ready;
  6. prints the identity to grant vault access to, and what to run next.

Run it again to upgrade: it keeps the keys, the tenant and the node pool.
Everything it creates itself is labelled app.kubernetes.io/managed-by=coffer-install;
` + "`coffer uninstall`" + ` removes that and the release, and nothing else.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.Values = map[string]any{}
			for _, f := range valueFiles {
				b, err := os.ReadFile(f)
				if err != nil {
					return usagef("--values: %v", err)
				}
				var v map[string]any
				if err := yaml.Unmarshal(b, &v); err != nil {
					return usagef("--values %s: not YAML: %v", f, err)
				}
				install.Merge(o.Values, v)
			}
			o.Out = a.stdout
			start := time.Now()
			res, err := install.Install(c.Context(), o)
			if err != nil {
				return optionError(err, installFlags)
			}
			if writeEnv != "" {
				if err := writeAdminEnv(writeEnv, res); err != nil {
					return err
				}
			}
			a.installSummary(res, writeEnv, time.Since(start))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&o.Context, "context", "", "kubeconfig context (default: the current one)")
	f.StringVarP(&o.Namespace, "namespace", "n", "coffer-system", "namespace to install into (created if missing)")
	f.StringVar(&o.Release, "release", "coffer", "Helm release name")
	f.StringArrayVarP(&valueFiles, "values", "f", nil, "chart values file (YAML); repeat to merge several, later ones win")
	f.StringVar(&o.DNSSuffix, "dns-suffix", "", "the server's DNS suffix: vaults are https://{vault}.{suffix}:{port}/ (or server.dnsSuffix in the values)")
	f.StringVar(&o.NodePool, "node-pool", "coffer-nodes", "name of the node pool whose identity the nodes use")
	f.StringVar(&o.ResourceGroup, "resource-group", "coffer", "resource group of the node pool")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "how long each wait for readiness may take")
	f.StringVar(&writeEnv, "write-env", "", "also write the administrator's credentials to this file (mode 0600), with the CA beside it, for --env-file")
	return c
}

// writeAdminEnv writes the administrator's credentials, and the CA they
// trust as {path}.ca.pem.
func writeAdminEnv(path string, res *install.Result) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	caFile := abs + ".ca.pem"
	if err := os.WriteFile(caFile, res.CAPEM, 0o644); err != nil {
		return err
	}
	env := res.Admin
	env.CAFile = caFile
	return env.Write(abs)
}

func (a *app) installSummary(res *install.Result, envFile string, took time.Duration) {
	w := a.stdout
	verb := "installed"
	if res.Upgraded {
		verb = "upgraded"
	}
	id := res.Identity
	fmt.Fprintf(w, `
Coffer is %s in namespace %s (Helm release %s, revision %d) in %s.

The node pool's identity: the nodes' system-assigned identity, which the CSI
driver uses for useVMManagedIdentity (as the AKS add-on's
azurekeyvaultsecretsprovider identity). Grant it access to your vaults.
  node pool     %s (resource group %s)
  client id     %s
  principal id  %s
  tenant        %s
(also in ConfigMap %s/%s)

Next:
`, verb, res.Namespace, res.Release, res.Revision, took.Round(time.Second),
		id.NodePool, id.ResourceGroup, id.ClientID, id.PrincipalID, id.TenantID, res.Namespace, install.StateConfigMap(res.Release))
	ef := envFile
	if ef == "" {
		ef = "admin.env"
		fmt.Fprintf(w, `  # the administrator's credentials, and the CA they trust
  kubectl -n %[1]s get secret coffer-admin -o jsonpath='{.data.dev\.env}' | base64 -d > admin.env
  kubectl -n %[1]s get configmap coffer-ca -o jsonpath='{.data.ca\.crt}' > coffer-ca.pem
  echo "SSL_CERT_FILE=$PWD/coffer-ca.pem" >> admin.env
`, res.Namespace)
	} else {
		fmt.Fprintf(w, "  # the administrator's credentials are in %s (the CA in %s.ca.pem)\n", envFile, envFile)
	}
	fmt.Fprintf(w, `  coffer --env-file %[1]s vault create --name demo
  coffer --env-file %[1]s vault set-policy --name demo --spn %[2]s --secret-permissions get
  # then a SecretProviderClass with useVMManagedIdentity: "true" and tenantId %[3]s (see examples/)

Vaults are served at https://{vault}.%[4]s:%[5]d/ by Service coffer-server in
%[6]s: point %[4]s and *.%[4]s at it (a LoadBalancer, an Ingress with TLS
passthrough, or DNS inside the cluster).
`, ef, id.ClientID, id.TenantID, res.DNSSuffix, res.Port, res.Namespace)
}

func (a *app) uninstallCmd() *cobra.Command {
	var o install.UninstallOptions
	var yes bool
	c := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what `coffer install` created from a cluster",
		Long: `Remove the Helm release and what ` + "`coffer install`" + ` created itself (labelled
app.kubernetes.io/managed-by=coffer-install): its Secrets and ConfigMaps,
the CRDs it created (with every object of theirs), and the namespace if it
made it; also what Coffer's pods made while they ran (the administrator's
Secret, the webhook's certificate, the server's volume claims). The root
key goes with it: every secret in the store is lost. With the etcd engine,
the store's keys stay in your etcd.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !yes {
				return usagef("coffer uninstall deletes the root key and so every secret in the store: add --yes to go on")
			}
			o.Out = a.stdout
			return install.Uninstall(c.Context(), o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&o.Context, "context", "", "kubeconfig context (default: the current one)")
	f.StringVarP(&o.Namespace, "namespace", "n", "coffer-system", "namespace Coffer was installed into")
	f.StringVar(&o.Release, "release", "coffer", "Helm release name")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "how long to wait for the pods and the namespace to go")
	f.BoolVar(&yes, "yes", false, "confirm: the store and its root key are deleted")
	return c
}
