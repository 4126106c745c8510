package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/kube"
)

// Options configure the webhook daemon: what `coffer webhook`'s flags set.
// Errors about them are *daemon.OptionError values naming these fields.
type Options struct {
	// Listen is the HTTPS address of POST /mutate and GET /healthz.
	Listen string
	// TenantID and AuthorityHost are injected as in Config.
	TenantID      string
	AuthorityHost string
	// SecretNamespace and SecretName hold the serving certificate
	// (SecretNamespace defaults to ServiceNamespace).
	SecretNamespace, SecretName string
	// ServiceName and ServiceNamespace name the Service in front of the
	// webhook; its DNS names go in the certificate. An empty ServiceName
	// leaves only CertHosts.
	ServiceName, ServiceNamespace string
	// CertHosts are more DNS names or IP addresses for the certificate.
	CertHosts []string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle
	// the webhook keeps current.
	WebhookConfigName string
	// MetricsAddr serves /metrics and /healthz over plain HTTP; empty is
	// off.
	MetricsAddr string
	// Kube is the apiserver's client configuration; nil reads Kubeconfig,
	// and an empty Kubeconfig the in-cluster configuration.
	Kube       *rest.Config
	Kubeconfig string
	Log        *slog.Logger
}

// Validate checks the options that need no I/O and returns the
// certificate's hosts: the Service's names, then CertHosts.
func (o *Options) Validate() ([]string, error) {
	if o.Listen == "" {
		return nil, daemon.Invalid("Listen", "is required: the HTTPS address the apiserver calls")
	}
	if err := ValidateAuthorityHost(o.AuthorityHost); err != nil {
		return nil, daemon.Invalid("AuthorityHost", "%v", err)
	}
	if o.SecretName == "" {
		return nil, daemon.Invalid("SecretName", "is required: the Secret that holds the serving certificate")
	}
	if o.WebhookConfigName == "" {
		return nil, daemon.Invalid("WebhookConfigName", "is required: the MutatingWebhookConfiguration that gets the CA")
	}
	if o.ServiceName != "" && o.ServiceNamespace == "" {
		return nil, daemon.Invalid("ServiceNamespace", "is required with ServiceName %s", o.ServiceName)
	}
	var hosts []string
	if o.ServiceName != "" {
		hosts = ServiceHosts(o.ServiceName, o.ServiceNamespace)
	}
	for _, h := range o.CertHosts {
		if h = strings.TrimSpace(h); h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, daemon.Invalid("CertHosts", "is required when ServiceName is empty: the serving certificate has no host")
	}
	if err := ValidateHosts(hosts); err != nil {
		return nil, daemon.Invalid("CertHosts", "%v", err)
	}
	if o.SecretNamespace == "" && o.ServiceNamespace == "" {
		return nil, daemon.Invalid("SecretNamespace", "is required when ServiceNamespace is not set")
	}
	return hosts, nil
}

// Daemon is a webhook with its caches and listeners, ready to Run.
type Daemon struct {
	// Rotator keeps the serving certificate.
	Rotator *Rotator
	// Registry holds the process's metrics.
	Registry *prometheus.Registry

	opts    Options
	hosts   []string
	handler *Handler
	ln      net.Listener
	stat    *daemon.StatusServer
	ctx     context.Context
	cancel  context.CancelFunc
}

// NewDaemon validates o, connects to the apiserver, waits for the watch
// cache of service accounts, and binds the listeners. ctx bounds the
// cache's sync. The certificate is made or loaded when Run starts, so that
// a caller may register the webhook at Addr first.
func NewDaemon(ctx context.Context, o Options) (*Daemon, error) {
	hosts, err := o.Validate()
	if err != nil {
		return nil, err
	}
	if o.SecretNamespace == "" {
		o.SecretNamespace = o.ServiceNamespace
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	rc, err := kube.Config(o.Kube, "Kubeconfig", o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	kc, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d := &Daemon{opts: o, hosts: hosts, Registry: daemon.NewRegistry()}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	// Service accounts come from a watch cache, so admission does not wait
	// on an apiserver read; the handler falls back to a live read for one
	// the cache has not seen yet.
	informers, err := cache.New(rc, cache.Options{Scheme: scheme})
	if err != nil {
		d.cancel()
		return nil, fmt.Errorf("kubernetes cache: %w", err)
	}
	if _, err := informers.GetInformer(ctx, &corev1.ServiceAccount{}); err != nil {
		d.cancel()
		return nil, fmt.Errorf("service account informer: %w", err)
	}
	go informers.Start(d.ctx)
	syncCtx, cancelSync := context.WithCancel(ctx)
	stop := context.AfterFunc(d.ctx, cancelSync)
	synced := informers.WaitForCacheSync(syncCtx)
	stop()
	cancelSync()
	if !synced {
		d.cancel()
		return nil, fmt.Errorf("the service account cache did not sync: %w", context.Cause(ctx))
	}
	metrics := NewMetrics(d.Registry)
	if d.Rotator, err = NewRotator(RotatorConfig{
		Kube: kc, SecretNamespace: o.SecretNamespace, SecretName: o.SecretName,
		WebhookConfigName: o.WebhookConfigName, Hosts: hosts, Metrics: metrics, Log: o.Log,
	}); err != nil {
		d.cancel()
		return nil, err
	}
	if d.handler, err = NewHandler(HandlerConfig{
		Config:          Config{TenantID: o.TenantID, AuthorityHost: o.AuthorityHost},
		ServiceAccounts: informers, Live: kc, Ready: d.Rotator.Ready, Metrics: metrics, Log: o.Log,
	}); err != nil {
		d.cancel()
		return nil, err
	}
	if d.stat, err = daemon.ListenStatus("MetricsAddr", o.MetricsAddr, d.Registry, d.Rotator.Ready); err != nil {
		d.cancel()
		return nil, err
	}
	if d.ln, err = net.Listen("tcp", o.Listen); err != nil {
		d.stat.Close()
		d.cancel()
		return nil, daemon.Invalid("Listen", "%s: %v", o.Listen, err)
	}
	return d, nil
}

// Addr is where the webhook listens.
func (d *Daemon) Addr() net.Addr { return d.ln.Addr() }

// Run loads or makes the serving certificate, publishes its CA, and serves
// until ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.cancel()
	defer d.stat.Close()
	stop := context.AfterFunc(ctx, d.cancel)
	defer stop()
	if err := d.Rotator.Start(d.ctx); err != nil {
		d.ln.Close()
		return err
	}
	go d.stat.Serve(d.ctx, d.opts.Log)
	d.opts.Log.Info("webhook listening", "addr", d.ln.Addr().String(), "hosts", d.hosts, "authorityHost", d.opts.AuthorityHost, "tenant", d.opts.TenantID)
	err := Serve(d.ctx, d.ln, d.handler, d.Rotator, d.opts.Log)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
