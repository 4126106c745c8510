// Package controller is `coffer sync-controller`: it reconciles SecretSyncs
// (secret-sync.x-k8s.io/v1alpha1, the upstream secrets-store-sync-
// controller's API) into Kubernetes Secrets with no pod involved. For each
// SecretSync it reads the SecretProviderClass of its namespace, gets a
// TokenRequest token for its service account, calls the class's provider
// over the Secrets Store provider protocol (Coffer's provider, or any
// upstream one on its socket), and writes the Secret named after the
// SecretSync, owned by it and labelled
// secrets-store.sync.x-k8s.io/secretsync=<name>. A Secret of that name
// without the label is never touched.
//
// Secrets are refreshed on a poll interval, when the SecretSync or its
// class changes, when forceSynchronization changes, and at once when a
// provider that speaks Coffer's push protocol reports a change. Replicas
// elect one leader (a Lease), and only the leader syncs.
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/daemon/kube"
	"github.com/cofferhq/coffer/internal/node/providerclient"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Options configure the controller: what `coffer sync-controller`'s flags
// set. Errors about them are *daemon.OptionError values naming these
// fields.
type Options struct {
	// ProviderDirs are the directories of provider sockets,
	// {dir}/{name}.sock, searched in order.
	ProviderDirs []string
	// TokenAudiences are the audiences of the service-account tokens given
	// to providers, one token each, as a CSIDriver's tokenRequests
	// (Coffer's provider: api://AzureADTokenExchange). None: no token.
	TokenAudiences []string
	// TokenExpiration is the lifetime asked of each token (default 10
	// minutes, the apiserver's minimum); a token is reused for half of it.
	TokenExpiration time.Duration
	// RotationPollInterval is how often each SecretSync's data is fetched
	// again (default 2 minutes); pushes refresh at once in between.
	RotationPollInterval time.Duration
	// Push subscribes to providers' pushes (Coffer's push protocol).
	Push bool
	// Namespaces are the namespaces served; the controller watches and
	// writes only there. Empty needs ClusterWide.
	Namespaces []string
	// ClusterWide serves every namespace, which needs cluster-wide RBAC
	// for Secrets and service-account tokens: it must be asked for.
	ClusterWide bool
	// ControllerName is matched against spec.secretSyncControllerName: a
	// SecretSync naming another controller is left alone (empty names
	// none and is served). Default "coffer".
	ControllerName string
	// LeaderElection makes replicas elect one leader through a Lease in
	// LeaderElectionNamespace (default: the pod's own namespace), named
	// LeaderElectionID; only the leader syncs. The durations default to
	// controller-runtime's (15 s, 10 s, 2 s).
	LeaderElection          bool
	LeaderElectionNamespace string
	LeaderElectionID        string
	LeaseDuration           time.Duration
	RenewDeadline           time.Duration
	RetryPeriod             time.Duration
	// Workers is how many SecretSyncs sync at once (default 8).
	Workers int
	// MaxCallRecvMsgSize bounds a provider's answer (default 4 MiB).
	MaxCallRecvMsgSize int
	// ProviderTimeout bounds one provider call (default 30 s).
	ProviderTimeout time.Duration
	// PodName and PodUID are the controller's own pod, passed to providers
	// as csi.storage.k8s.io/pod.name and pod.uid (as upstream does).
	PodName, PodUID string
	// KubeAPIQPS and KubeAPIBurst bound the controller's requests to the
	// apiserver (default 100 a second, bursts of 200). A first sync costs
	// about three requests per SecretSync (the Secret, the status, an
	// event): client-go's default of 5 a second would make that of a
	// thousand take minutes. The apiserver's priority and fairness still
	// applies.
	KubeAPIQPS   float32
	KubeAPIBurst int
	// MetricsAddr serves /metrics and /healthz; empty is off.
	MetricsAddr string
	// Kube is the apiserver's client configuration; nil reads Kubeconfig,
	// and an empty Kubeconfig the in-cluster configuration.
	Kube       *rest.Config
	Kubeconfig string
	Log        *slog.Logger
}

// Daemon is a controller with its manager, clients and listener, ready
// to Run.
type Daemon struct {
	// Reconciler is what the elected replica runs.
	Reconciler *Reconciler
	// Registry holds the controller's own metrics; /metrics serves them
	// with controller-runtime's (work queue, leader election, client,
	// Go runtime and process).
	Registry *prometheus.Registry

	opts   Options
	mgr    manager.Manager
	stat   *daemon.StatusServer
	pusher *pusher
	stop   context.CancelFunc // ends the pushes' context
}

// Validate fills in defaults and checks o, naming the field at fault.
func (o Options) Validate() (Options, error) {
	if len(o.ProviderDirs) == 0 {
		return o, daemon.Invalid("ProviderDirs", "is required: the directories holding provider sockets")
	}
	if len(o.Namespaces) == 0 && !o.ClusterWide {
		return o, daemon.Invalid("Namespaces", "is required unless ClusterWide: name the namespaces whose SecretSyncs this controller serves (its RBAC for Secrets and tokens is granted there), or ask for ClusterWide")
	}
	if len(o.Namespaces) > 0 && o.ClusterWide {
		return o, daemon.Invalid("Namespaces", "and ClusterWide exclude each other")
	}
	for _, a := range o.TokenAudiences {
		if a == "" {
			return o, daemon.Invalid("TokenAudiences", "has an empty audience")
		}
	}
	if o.TokenExpiration == 0 {
		o.TokenExpiration = 10 * time.Minute
	}
	if o.TokenExpiration < 10*time.Minute {
		return o, daemon.Invalid("TokenExpiration", "is %v: the apiserver issues tokens for 10 minutes or more", o.TokenExpiration)
	}
	if o.RotationPollInterval == 0 {
		o.RotationPollInterval = 2 * time.Minute
	}
	if o.RotationPollInterval < time.Second {
		return o, daemon.Invalid("RotationPollInterval", "is %v: it must be at least a second", o.RotationPollInterval)
	}
	if o.ControllerName == "" {
		o.ControllerName = "coffer"
	}
	if o.LeaderElectionID == "" {
		o.LeaderElectionID = "coffer-sync-controller"
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.MaxCallRecvMsgSize <= 0 {
		o.MaxCallRecvMsgSize = 4 << 20
	}
	if o.ProviderTimeout <= 0 {
		o.ProviderTimeout = 30 * time.Second
	}
	if o.KubeAPIQPS == 0 {
		o.KubeAPIQPS = 100
	}
	if o.KubeAPIBurst == 0 {
		o.KubeAPIBurst = 2 * int(o.KubeAPIQPS)
	}
	if o.KubeAPIQPS < 0 || o.KubeAPIBurst < 1 {
		return o, daemon.Invalid("KubeAPIQPS", "and KubeAPIBurst must be positive")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o, nil
}

var setLogger sync.Once

// FieldManager names the controller's writes in managedFields.
const FieldManager = "coffer-sync-controller"

// spcIndex indexes SecretSyncs by the class they name.
const spcIndex = "spec.secretProviderClassName"

// NewDaemon validates o, builds the manager (its caches, the leader
// election, the controller) and binds the metrics listener. Nothing talks
// to the apiserver before Run.
func NewDaemon(ctx context.Context, o Options) (*Daemon, error) {
	o, err := o.Validate()
	if err != nil {
		return nil, err
	}
	// controller-runtime's own packages log through a process-wide logger,
	// and complain on stderr until it is set.
	setLogger.Do(func() { ctrllog.SetLogger(logr.FromSlogHandler(o.Log.Handler())) })
	rc, err := kube.Config(o.Kube, "Kubeconfig", o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, secretsstorev1.AddToScheme, syncv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	// Only the Secrets the controller writes are watched (the labelled
	// ones): a cache of every Secret would cost memory in proportion to
	// the cluster's, and hold values the controller has no use for.
	managed, err := labels.NewRequirement(syncv1.SecretLabel, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	copts := cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject:         map[client.Object]cache.ByObject{&corev1.Secret{}: {Label: labels.NewSelector().Add(*managed)}},
	}
	if !o.ClusterWide {
		// Secrets are watched in the namespaces served only: reading them
		// anywhere else is a right the controller does not get. SecretSyncs
		// and classes, which hold no values, are watched cluster-wide and
		// filtered here: one watch each instead of one per namespace, which
		// with 50 namespaces is a third of the informers, their goroutines
		// and their memory.
		copts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range o.Namespaces {
			copts.DefaultNamespaces[ns] = cache.Config{}
		}
		all := map[string]cache.Config{cache.AllNamespaces: {}}
		copts.ByObject[&syncv1.SecretSync{}] = cache.ByObject{Namespaces: all}
		copts.ByObject[&secretsstorev1.SecretProviderClass{}] = cache.ByObject{Namespaces: all}
	}
	skip := true
	mopts := manager.Options{
		Scheme: scheme, Cache: copts, Logger: logr.FromSlogHandler(o.Log.Handler()),
		Metrics:                       metricsserver.Options{BindAddress: "0"}, // served by the daemon's own listener
		HealthProbeBindAddress:        "0",
		LeaderElection:                o.LeaderElection,
		LeaderElectionResourceLock:    "leases",
		LeaderElectionID:              o.LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		// Several daemons may run in one process (the tests do).
		Controller: config.Controller{SkipNameValidation: &skip},
	}
	for _, d := range []struct {
		v   time.Duration
		out **time.Duration
	}{{o.LeaseDuration, &mopts.LeaseDuration}, {o.RenewDeadline, &mopts.RenewDeadline}, {o.RetryPeriod, &mopts.RetryPeriod}} {
		if d.v > 0 {
			v := d.v
			*d.out = &v
		}
	}
	mgr, err := manager.New(rc, mopts)
	if err != nil {
		if o.LeaderElection && o.LeaderElectionNamespace == "" {
			return nil, daemon.Invalid("LeaderElectionNamespace", "is required outside a cluster (%v)", err)
		}
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	// controller-runtime's registry already holds the Go runtime and
	// process collectors: the daemon's own series go in a registry
	// without them, served beside it.
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	r := &Reconciler{
		// Its writes are named in managedFields as the controller's, not
		// after the binary.
		opts: o, kube: client.WithFieldOwner(mgr.GetClient(), FieldManager), live: mgr.GetAPIReader(), providers: providerclient.New(o.ProviderDirs, o.MaxCallRecvMsgSize),
		recorder: mgr.GetEventRecorder("coffer-sync-controller"), metrics: metrics, now: time.Now,
		syncs: map[types.NamespacedName]*syncState{},
	}
	r.tokens = &tokens{kube: cs, audiences: slices.Clone(o.TokenAudiences), lifetime: o.TokenExpiration, now: time.Now, requests: metrics.token, entries: map[string]*tokenEntry{}}
	pctx, stop := context.WithCancel(context.Background())
	p := &pusher{r: r, events: make(chan event.GenericEvent, 4096), ctx: pctx}
	r.pusher = p
	if o.Push {
		r.providers.Dialed, r.providers.ReadyWait = p.subscribe, pushReady
	}
	d := &Daemon{Reconciler: r, Registry: reg, opts: o, mgr: mgr, pusher: p, stop: stop}
	if err := d.setup(ctx); err != nil {
		stop()
		return nil, err
	}
	// The controller-runtime series (work queue, leader election, client
	// requests) beside the daemon's own.
	if d.stat, err = daemon.ListenStatus("MetricsAddr", o.MetricsAddr, prometheus.Gatherers{reg, ctrlmetrics.Registry}, nil); err != nil {
		stop()
		return nil, err
	}
	return d, nil
}

// setup wires the controller: SecretSyncs (their spec, annotations and
// deletion), the classes they name, their Secrets' deletion, and pushes.
func (d *Daemon) setup(ctx context.Context) error {
	if err := d.mgr.GetFieldIndexer().IndexField(ctx, &syncv1.SecretSync{}, spcIndex, func(o client.Object) []string {
		return []string{o.(*syncv1.SecretSync).Spec.SecretProviderClassName}
	}); err != nil {
		return fmt.Errorf("indexing SecretSyncs: %w", err)
	}
	// A SecretSync changes what it asks for (its generation: the spec,
	// with forceSynchronization), its deletion policy (an annotation), or
	// is being deleted; status writes, the controller's own, are left out.
	syncChanged := predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{},
		predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectNew.GetDeletionTimestamp() != nil && e.ObjectOld.GetDeletionTimestamp() == nil
		}})
	classChanged := predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, predicate.Funcs{
		UpdateFunc: func(event.UpdateEvent) bool { return false }})
	// A synced Secret deleted by hand comes back at once; other changes to
	// it are found at the next refresh (and the chart's admission
	// policies refuse them).
	secretDeleted := predicate.Funcs{
		CreateFunc: func(event.CreateEvent) bool { return false }, UpdateFunc: func(event.UpdateEvent) bool { return false },
		DeleteFunc: func(event.DeleteEvent) bool { return true }, GenericFunc: func(event.GenericEvent) bool { return false }}
	served := predicate.NewPredicateFuncs(d.served)
	return ctrl.NewControllerManagedBy(d.mgr).Named("secretsync").
		WithEventFilter(served).
		For(&syncv1.SecretSync{}, builder.WithPredicates(syncChanged)).
		Owns(&corev1.Secret{}, builder.WithPredicates(secretDeleted)).
		Watches(&secretsstorev1.SecretProviderClass{}, handler.EnqueueRequestsFromMapFunc(d.syncsOfClass), builder.WithPredicates(classChanged)).
		WatchesRawSource(source.Channel(d.pusher.events, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: d.opts.Workers}).
		Complete(d.Reconciler)
}

// served reports whether the controller serves o's namespace.
func (d *Daemon) served(o client.Object) bool {
	return d.opts.ClusterWide || slices.Contains(d.opts.Namespaces, o.GetNamespace())
}

// syncsOfClass maps a class to the SecretSyncs of its namespace that name
// it.
func (d *Daemon) syncsOfClass(ctx context.Context, o client.Object) []reconcile.Request {
	list := &syncv1.SecretSyncList{}
	if err := d.mgr.GetClient().List(ctx, list, client.InNamespace(o.GetNamespace()), client.MatchingFields{spcIndex: o.GetName()}); err != nil {
		d.opts.Log.Warn("listing the SecretSyncs of a class", "class", client.ObjectKeyFromObject(o), "err", err)
		return nil
	}
	out := make([]reconcile.Request, len(list.Items))
	for i := range list.Items {
		out[i] = reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])}
	}
	return out
}

// MetricsAddr is the bound address of /metrics and /healthz, or "".
func (d *Daemon) MetricsAddr() string { return d.stat.Addr() }

// Run runs the controller until ctx ends: it campaigns for leadership and,
// once elected, syncs. On the way out it gives up the lease, so that
// another replica takes over at once.
func (d *Daemon) Run(ctx context.Context) error {
	bg, stopStat := context.WithCancel(ctx)
	defer stopStat()
	go d.stat.Serve(bg, d.opts.Log)
	d.opts.Log.Info("sync controller starting", "providers", d.opts.ProviderDirs, "namespaces", d.opts.Namespaces, "clusterWide", d.opts.ClusterWide,
		"leaderElection", d.opts.LeaderElection, "poll", d.opts.RotationPollInterval, "push", d.opts.Push)
	err := d.mgr.Start(ctx)
	d.stop()
	d.pusher.wg.Wait()
	d.Reconciler.providers.Close()
	d.stat.Close()
	return err
}
