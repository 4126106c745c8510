package csidriver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/mount-utils"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/kube"
	"github.com/cofferhq/coffer/internal/node/unixsock"
)

// Options configure the driver daemon: what `coffer csi-driver`'s flags
// set. Errors about them are *daemon.OptionError values naming these
// fields.
type Options struct {
	Settings

	// MetricsAddr serves /metrics and /healthz; empty is off.
	MetricsAddr string
	// RegistrationDir, when set, is the kubelet's plugin watcher directory
	// (such as /var/lib/kubelet/plugins_registry): the driver registers
	// itself there, with no node-driver-registrar sidecar.
	RegistrationDir string
	// RegistrationPath is the CSI socket's path as the kubelet sees it
	// (default: Endpoint's path).
	RegistrationPath string
	// Kube is the apiserver's client configuration; nil reads Kubeconfig,
	// and an empty Kubeconfig the in-cluster configuration.
	Kube       *rest.Config
	Kubeconfig string
	// Mounter mounts the tmpfs (default: the host's mount(8)).
	Mounter mount.Interface
	Log     *slog.Logger
}

// Daemon is a driver with its Kubernetes clients, caches and sockets,
// ready to Run.
type Daemon struct {
	// Driver holds the CSI services.
	Driver *Driver
	// Registry holds the process's metrics.
	Registry *prometheus.Registry

	opts     Options
	ln       net.Listener
	stat     *daemon.StatusServer
	reg      *Registration
	events   record.EventBroadcaster
	stopKube context.CancelFunc
}

// NewDaemon validates o, connects to the apiserver, waits for its watch
// cache of SecretProviderClasses, and binds the CSI socket and the metrics
// listener. ctx bounds the cache's sync; Run stops the cache.
func NewDaemon(ctx context.Context, o Options) (*Daemon, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.NodeID == "" {
		return nil, daemon.Invalid("NodeID", "is required: it names this node in statuses and NodeGetInfo")
	}
	if _, err := unixsock.Path(o.Endpoint); err != nil {
		return nil, daemon.Invalid("Endpoint", "%v", err)
	}
	if o.RegistrationDir != "" && o.RegistrationPath == "" {
		o.RegistrationPath = strings.TrimPrefix(o.Endpoint, "unix://")
	}
	rc, err := kube.Config(o.Kube, "Kubeconfig", o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := secretsstorev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	kc, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	// Only the core group's client, for events: the kubernetes package
	// would link every API group's client into the node binary.
	core, err := typedcorev1.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	reg := daemon.NewRegistry()
	d := &Daemon{Registry: reg, opts: o}
	// SecretProviderClasses come from a watch cache: a publish does not
	// wait on an apiserver read.
	informers, err := cache.New(rc, cache.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes cache: %w", err)
	}
	kubeCtx, stopKube := context.WithCancel(context.Background())
	d.stopKube = stopKube
	go informers.Start(kubeCtx)
	syncCtx, cancelSync := context.WithCancel(ctx)
	stop := context.AfterFunc(kubeCtx, cancelSync)
	synced := informers.WaitForCacheSync(syncCtx)
	stop()
	cancelSync()
	if !synced {
		stopKube()
		return nil, fmt.Errorf("the kubernetes cache did not sync: %w", context.Cause(ctx))
	}
	d.events = record.NewBroadcaster()
	d.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: core.Events("")})
	name := o.Name
	if name == "" {
		name = Name
	}
	settings := o.Settings
	settings.Name = name
	d.Driver, err = New(Config{
		Settings: settings, Kube: kc, Reader: informers, Mounter: o.Mounter, Metrics: NewMetrics(reg), Log: o.Log,
		Recorder: d.events.NewRecorder(scheme, corev1.EventSource{Component: "csi-secrets-store", Host: o.NodeID}),
	})
	if err != nil {
		d.close()
		return nil, err
	}
	healthy := func() error { return nil }
	if o.RegistrationDir != "" {
		d.reg = &Registration{Name: name, Endpoint: o.RegistrationPath, Log: o.Log}
		healthy = d.reg.Healthy
	}
	if d.stat, err = daemon.ListenStatus("MetricsAddr", o.MetricsAddr, reg, healthy); err != nil {
		d.close()
		return nil, err
	}
	if d.ln, err = unixsock.Listen(o.Endpoint, 0); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// Run serves the CSI services, the kubelet registration and the metrics
// until ctx ends, then stops and releases everything.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	log := d.opts.Log
	bg, stop := context.WithCancel(ctx)
	defer stop()
	go d.stat.Serve(bg, log)
	regDone := make(chan error, 1)
	if d.reg != nil {
		go func() {
			regDone <- d.reg.ServeRegistration(bg, RegistrationSocket(d.opts.RegistrationDir, d.Driver.cfg.Name))
		}()
	} else {
		regDone <- nil
	}
	log.Info("csi driver listening", "endpoint", d.opts.Endpoint, "node", d.opts.NodeID, "providers", d.opts.ProviderDirs,
		"rotation", d.opts.RotationEnabled, "push", d.opts.RotationEnabled && d.opts.Push)
	err := d.Driver.Serve(ctx, d.ln)
	stop() // the registration socket goes with the driver, so the kubelet deregisters it
	if rerr := <-regDone; rerr != nil {
		log.Error("kubelet registration", "error", rerr)
	}
	return err
}

// close releases what NewDaemon made; Run calls it when it returns.
func (d *Daemon) close() {
	if d.stat != nil {
		d.stat.Close()
	}
	if d.events != nil {
		d.events.Shutdown()
	}
	d.stopKube()
}
