//go:build !node

package cli

import (
	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/webhook"
)

// webhookFlags names the flag of each webhook option, for its errors.
var webhookFlags = map[string]string{
	"Listen": "--listen", "Kubeconfig": "--kubeconfig", "MetricsAddr": "--metrics-addr", "TenantID": "--tenant-id",
	"AuthorityHost": "--authority-host", "SecretName": "--cert-secret-name", "SecretNamespace": "--cert-secret-namespace",
	"ServiceName": "--service-name", "ServiceNamespace": "--service-namespace", "CertHosts": "--cert-hosts",
	"WebhookConfigName": "--webhook-config-name",
}

func (a *app) webhookCmd() *cobra.Command {
	var o webhook.Options
	c := &cobra.Command{
		Use:   "webhook",
		Short: "Run the Azure Workload Identity mutating admission webhook",
		Long: `Run the mutating admission webhook for pods labelled
azure.workload.identity/use=true. From the pod's service account annotations
(azure.workload.identity/client-id, tenant-id) it injects AZURE_CLIENT_ID,
AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, and a
projected service-account token with audience api://AzureADTokenExchange, so
that the Azure SDKs' workload identity credential signs in to Coffer's
authority. Variables a container already sets are never overwritten.

The webhook makes and rotates its own serving certificate: it keeps it in the
Secret --cert-secret-namespace/--cert-secret-name and publishes its CA in the
caBundle of the MutatingWebhookConfiguration --webhook-config-name.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			// Flag mistakes are found before anything talks to a cluster.
			if _, err := o.Validate(); err != nil {
				return optionError(err, webhookFlags)
			}
			o.Log = a.logger(true).With("component", "webhook")
			d, err := webhook.NewDaemon(c.Context(), o)
			if err != nil {
				return optionError(err, webhookFlags)
			}
			return d.Run(c.Context())
		},
	}
	fl := c.Flags()
	fl.StringVar(&o.Listen, "listen", ":9443", "HTTPS address of POST /mutate and GET /healthz")
	fl.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	fl.StringVar(&o.TenantID, "tenant-id", "", "AZURE_TENANT_ID for service accounts without the azure.workload.identity/tenant-id annotation")
	fl.StringVar(&o.AuthorityHost, "authority-host", "", "AZURE_AUTHORITY_HOST: Coffer's authority URL, such as https://login.coffer.example.com/")
	fl.StringVar(&o.SecretName, "cert-secret-name", "coffer-webhook-cert", "Secret that holds the serving certificate")
	fl.StringVar(&o.SecretNamespace, "cert-secret-namespace", "", "namespace of that Secret (default: --service-namespace)")
	fl.StringVar(&o.ServiceName, "service-name", "coffer-webhook", "Service in front of the webhook; its names go in the certificate (empty: only --cert-hosts)")
	fl.StringVar(&o.ServiceNamespace, "service-namespace", "coffer-system", "namespace of that Service")
	fl.StringSliceVar(&o.CertHosts, "cert-hosts", nil, "more DNS names or IP addresses for the certificate, comma-separated")
	fl.StringVar(&o.WebhookConfigName, "webhook-config-name", "coffer-workload-identity", "MutatingWebhookConfiguration whose caBundle the webhook keeps current")
	fl.StringVar(&o.MetricsAddr, "metrics-addr", ":8097", "address of /metrics and /healthz, plain HTTP (empty: off)")
	return c
}
