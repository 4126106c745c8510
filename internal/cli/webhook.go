package cli

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/webhook"
)

// webhookFlags are the flags of `coffer webhook`.
type webhookFlags struct {
	listen, kubeconfig, metricsAddr string
	tenantID, authorityHost         string
	secretName, secretNamespace     string
	serviceName, serviceNamespace   string
	webhookConfigName               string
	certHosts                       []string
}

// hosts validates the flags that shape the serving certificate and
// returns its hosts: the Service's names, then --cert-hosts.
func (f *webhookFlags) hosts() ([]string, error) {
	if f.serviceName != "" && f.serviceNamespace == "" {
		return nil, usagef("--service-name %s needs --service-namespace", f.serviceName)
	}
	var hosts []string
	if f.serviceName != "" {
		hosts = webhook.ServiceHosts(f.serviceName, f.serviceNamespace)
	}
	for _, h := range f.certHosts {
		if h = strings.TrimSpace(h); h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, usagef("the serving certificate has no host: set --service-name and --service-namespace, or --cert-hosts")
	}
	if err := webhook.ValidateHosts(hosts); err != nil {
		return nil, usagef("%v", err)
	}
	return hosts, nil
}

func (a *app) webhookCmd() *cobra.Command {
	var f webhookFlags
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
			if err := requireFlags(c, "listen", "authority-host", "cert-secret-name", "webhook-config-name"); err != nil {
				return err
			}
			if err := webhook.ValidateAuthorityHost(f.authorityHost); err != nil {
				return usagef("--authority-host: %v", err)
			}
			hosts, err := f.hosts()
			if err != nil {
				return err
			}
			if f.secretNamespace == "" {
				f.secretNamespace = f.serviceNamespace
			}
			if f.secretNamespace == "" {
				return usagef("--cert-secret-namespace is required when --service-namespace is not set")
			}
			ctx := c.Context()
			log := a.logger(true).With("component", "webhook")

			rc, err := kubeConfig(f.kubeconfig)
			if err != nil {
				return err
			}
			scheme := runtime.NewScheme()
			if err := clientgoscheme.AddToScheme(scheme); err != nil {
				return err
			}
			kube, err := client.New(rc, client.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			// Service accounts come from a watch cache, so admission does
			// not wait on an apiserver read; the handler falls back to a
			// live read for one the cache has not seen yet.
			informers, err := cache.New(rc, cache.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("kubernetes cache: %w", err)
			}
			if _, err := informers.GetInformer(ctx, &corev1.ServiceAccount{}); err != nil {
				return fmt.Errorf("service account informer: %w", err)
			}
			go informers.Start(ctx)
			if !informers.WaitForCacheSync(ctx) {
				return fmt.Errorf("the service account cache did not sync")
			}

			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			metrics := webhook.NewMetrics(reg)
			rot, err := webhook.NewRotator(webhook.RotatorConfig{
				Kube: kube, SecretNamespace: f.secretNamespace, SecretName: f.secretName,
				WebhookConfigName: f.webhookConfigName, Hosts: hosts, Metrics: metrics, Log: log,
			})
			if err != nil {
				return usagef("%v", err)
			}
			if err := rot.Start(ctx); err != nil {
				return err
			}
			h, err := webhook.NewHandler(webhook.HandlerConfig{
				Config:          webhook.Config{TenantID: f.tenantID, AuthorityHost: f.authorityHost},
				ServiceAccounts: informers, Live: kube, Ready: rot.Ready, Metrics: metrics, Log: log,
			})
			if err != nil {
				return usagef("%v", err)
			}
			ln, err := net.Listen("tcp", f.listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", f.listen, err)
			}
			if err := serveHTTP(ctx, log, f.metricsAddr, reg, rot.Ready); err != nil {
				ln.Close()
				return err
			}
			log.Info("webhook listening", "addr", ln.Addr().String(), "hosts", hosts, "authorityHost", f.authorityHost, "tenant", f.tenantID)
			return webhook.Serve(ctx, ln, h, rot, log)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.listen, "listen", ":9443", "HTTPS address of POST /mutate and GET /healthz")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	fl.StringVar(&f.tenantID, "tenant-id", "", "AZURE_TENANT_ID for service accounts without the azure.workload.identity/tenant-id annotation")
	fl.StringVar(&f.authorityHost, "authority-host", "", "AZURE_AUTHORITY_HOST: Coffer's authority URL, such as https://login.coffer.example.com/")
	fl.StringVar(&f.secretName, "cert-secret-name", "coffer-webhook-cert", "Secret that holds the serving certificate")
	fl.StringVar(&f.secretNamespace, "cert-secret-namespace", "", "namespace of that Secret (default: --service-namespace)")
	fl.StringVar(&f.serviceName, "service-name", "coffer-webhook", "Service in front of the webhook; its names go in the certificate (empty: only --cert-hosts)")
	fl.StringVar(&f.serviceNamespace, "service-namespace", "coffer-system", "namespace of that Service")
	fl.StringSliceVar(&f.certHosts, "cert-hosts", nil, "more DNS names or IP addresses for the certificate, comma-separated")
	fl.StringVar(&f.webhookConfigName, "webhook-config-name", "coffer-workload-identity", "MutatingWebhookConfiguration whose caBundle the webhook keeps current")
	fl.StringVar(&f.metricsAddr, "metrics-addr", ":8097", "address of /metrics and /healthz, plain HTTP (empty: off)")
	return c
}
