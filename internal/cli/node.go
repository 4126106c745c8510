package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/csidriver"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/node/provider"
)

// serveHTTP serves /metrics and /healthz on addr until ctx ends.
func serveHTTP(ctx context.Context, log *slog.Logger, addr string, reg *prometheus.Registry, healthy func() error) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	go hs.Serve(ln)
	log.Info("metrics and health listening", "addr", ln.Addr().String())
	return nil
}

// kubeConfig is the in-cluster configuration, or --kubeconfig's.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not running in a cluster (%v): pass --kubeconfig", err)
	}
	return cfg, nil
}

func (a *app) csiDriverCmd() *cobra.Command {
	var cfg csidriver.Config
	var providerVolume, additional, metricsAddr, kubeconfig, registrationDir, registrationPath string
	var verbosity int
	var ignoredBool bool
	var ignoredInt int
	var ignoredDur time.Duration
	c := &cobra.Command{
		Use:   "csi-driver",
		Short: "Run the Secrets Store CSI driver (secrets-store.csi.k8s.io) on a node",
		Long: `Run the Secrets Store CSI driver: the CSI Identity and Node services on a
unix socket, named secrets-store.csi.k8s.io. It takes the upstream driver's
flags, so its DaemonSet arguments carry over, and talks to any provider that
speaks the upstream v1alpha1 protocol ({provider-volume}/{name}.sock).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "nodeid"); err != nil {
				return err
			}
			log := a.logger(true).With("component", "csi-driver")
			if verbosity >= 5 {
				log = slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "csi-driver")
			}
			cfg.ProviderDirs = nil
			for _, p := range strings.Split(additional, ",") {
				if p = strings.TrimSpace(p); p != "" {
					cfg.ProviderDirs = append(cfg.ProviderDirs, p)
				}
			}
			cfg.ProviderDirs = append(cfg.ProviderDirs, providerVolume)
			rc, err := kubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			scheme := runtime.NewScheme()
			clientgoscheme.AddToScheme(scheme)
			secretsstorev1.AddToScheme(scheme)
			if cfg.Kube, err = client.New(rc, client.Options{Scheme: scheme}); err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			// SecretProviderClasses come from a watch cache: a publish does
			// not wait on an apiserver read.
			informers, err := cache.New(rc, cache.Options{Scheme: scheme})
			if err != nil {
				return fmt.Errorf("kubernetes cache: %w", err)
			}
			go informers.Start(c.Context())
			if !informers.WaitForCacheSync(c.Context()) {
				return fmt.Errorf("the kubernetes cache did not sync")
			}
			cfg.Reader = informers
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			bc := record.NewBroadcaster()
			bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
			defer bc.Shutdown()
			cfg.Recorder = bc.NewRecorder(scheme, corev1.EventSource{Component: "csi-secrets-store", Host: cfg.NodeID})
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			cfg.Metrics = csidriver.NewMetrics(reg)
			cfg.Log = log
			d, err := csidriver.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			ln, err := csidriver.Listen(cfg.Endpoint)
			if err != nil {
				return err
			}
			healthy := func() error { return nil }
			if registrationDir != "" {
				if registrationPath == "" {
					registrationPath = strings.TrimPrefix(cfg.Endpoint, "unix://")
				}
				r := &csidriver.Registration{Name: cfg.Name, Endpoint: registrationPath, Log: log}
				healthy = r.Healthy
				regCtx, stop := context.WithCancel(c.Context())
				regErr := make(chan error, 1)
				go func() { regErr <- r.ServeRegistration(regCtx, csidriver.RegistrationSocket(registrationDir, cfg.Name)) }()
				defer func() {
					stop() // the socket goes with the driver, so the kubelet deregisters it
					if err := <-regErr; err != nil {
						log.Error("kubelet registration", "error", err)
					}
				}()
			}
			if err := serveHTTP(c.Context(), log, metricsAddr, reg, healthy); err != nil {
				return err
			}
			log.Info("csi driver listening", "endpoint", cfg.Endpoint, "node", cfg.NodeID, "providers", cfg.ProviderDirs, "rotation", cfg.RotationEnabled, "push", cfg.RotationEnabled && cfg.Push)
			return d.Serve(c.Context(), ln)
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (a unix socket)")
	f.StringVar(&cfg.NodeID, "nodeid", "", "this node's name (from spec.nodeName)")
	f.StringVar(&cfg.Name, "drivername", csidriver.Name, "CSI driver name")
	f.StringVar(&providerVolume, "provider-volume", "/var/run/secrets-store-csi-providers", "directory of provider sockets")
	f.StringVar(&additional, "additional-provider-volume-paths", "/etc/kubernetes/secrets-store-csi-providers", "more directories of provider sockets, comma-separated, searched first")
	f.BoolVar(&cfg.RotationEnabled, "enable-secret-rotation", false, "refresh mounted secrets on kubelet republish (requiresRepublish)")
	f.DurationVar(&cfg.RotationInterval, "rotation-poll-interval", 2*time.Minute, "minimum time between two provider calls for one volume")
	f.BoolVar(&cfg.Push, "push-rotation", true, "with --enable-secret-rotation, also refresh a volume as soon as its provider reports a change (Coffer's provider does; others are polled only)")
	f.IntVar(&cfg.MaxCallRecvMsgSize, "max-call-recv-msg-size", 4<<20, "largest provider response, in bytes")
	f.StringVar(&metricsAddr, "metrics-addr", ":8095", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.StringVar(&registrationDir, "registration-dir", "", "register with the kubelet through its plugin watcher directory, such as /var/lib/kubelet/plugins_registry, instead of a node-driver-registrar sidecar (empty: off)")
	f.StringVar(&registrationPath, "kubelet-registration-path", "", "the CSI socket's path on the host, as the kubelet sees it (default: --endpoint's path)")
	f.IntVarP(&verbosity, "v", "v", 0, "log verbosity, as klog's -v (5 and over: debug)")
	// Upstream flags that Coffer accepts and does not need.
	f.BoolVar(&ignoredBool, "log-format-json", false, "accepted for compatibility; logs are always JSON")
	f.BoolVar(&ignoredBool, "enable-pprof", false, "accepted for compatibility; ignored")
	f.IntVar(&ignoredInt, "pprof-port", 6065, "accepted for compatibility; ignored")
	f.BoolVar(&ignoredBool, "provider-health-check", false, "accepted for compatibility; ignored")
	f.DurationVar(&ignoredDur, "provider-health-check-interval", 2*time.Minute, "accepted for compatibility; ignored")
	return c
}

func (a *app) providerCmd() *cobra.Command {
	var endpoint, suffix, authority, caFile, metricsAddr, agentSock string
	var name string
	var maxBytes int
	c := &cobra.Command{
		Use:   "provider",
		Short: "Run the Secrets Store CSI provider for Coffer vaults",
		Long: `Run the provider that Secrets Store CSI drivers (Coffer's or the upstream one)
call over the v1alpha1 gRPC protocol. It reads the Azure provider's parameters
(keyvaultName, tenantId, objects, clientID, ...), so name its socket azure.sock
to serve existing SecretProviderClasses with provider: azure, or coffer.sock.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "vault-dns-suffix"); err != nil {
				return err
			}
			log := a.logger(true).With("component", "provider")
			hc, err := httpclient.New(caFile)
			if err != nil {
				return err
			}
			hc.Timeout = 20 * time.Second
			if name == "" {
				name = strings.TrimSuffix(endpoint[strings.LastIndexByte(endpoint, '/')+1:], ".sock")
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			var agent *authclient.NodeAgent
			if agentSock != "" {
				agent = authclient.NewNodeAgent(agentSock)
			}
			p, err := provider.New(provider.Config{Name: name, VaultSuffix: suffix, AuthorityHost: authority,
				Vault: &kvclient.Client{HTTP: hc}, Auth: &authclient.Client{HTTP: hc}, NodeAgent: agent, MaxResponseBytes: maxBytes, Registry: reg, Log: log})
			if err != nil {
				return usagef("%v", err)
			}
			ln, err := provider.Listen(endpoint)
			if err != nil {
				return err
			}
			g := grpc.NewServer()
			p.Register(g)
			hs := health.NewServer()
			healthpb.RegisterHealthServer(g, hs)
			if err := serveHTTP(c.Context(), log, metricsAddr, reg, func() error { return nil }); err != nil {
				return err
			}
			go func() {
				<-c.Context().Done()
				p.Close() // the driver's Push stream never ends by itself
				g.GracefulStop()
			}()
			log.Info("provider listening", "endpoint", endpoint, "name", name, "vault-dns-suffix", suffix)
			return g.Serve(ln)
		},
	}
	f := c.Flags()
	f.StringVar(&endpoint, "endpoint", "unix:///var/run/secrets-store-csi-providers/coffer.sock", "the provider socket: {dir}/{name}.sock")
	f.StringVar(&name, "name", "", "provider name reported by Version (default: the socket's name)")
	f.StringVar(&suffix, "vault-dns-suffix", "", "the vaults' DNS suffix and port, such as vault.example.com:8443")
	f.StringVar(&authority, "authority-host", "", "the authority's URL (default https://{vault-dns-suffix})")
	f.StringVar(&caFile, "ca-file", "", "PEM CA bundle to trust for the vault and authority (added to the system roots)")
	f.StringVar(&metricsAddr, "metrics-addr", ":8898", "address of /metrics and /healthz (empty: off)")
	f.IntVar(&maxBytes, "max-response-bytes", 4<<20, "largest total size of one volume's files")
	f.StringVar(&agentSock, "node-agent-socket", "unix:///var/run/coffer/node-agent.sock", "the node agent's local socket, for usePodIdentity and useVMManagedIdentity (empty: those modes are refused)")
	return c
}
