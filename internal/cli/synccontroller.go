//go:build !node

package cli

import (
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/sync/controller"
)

// syncControllerFlags names the flag of each sync controller option, for
// its errors.
var syncControllerFlags = map[string]string{
	"ProviderDirs": "--provider-volume", "TokenAudiences": "--token-request-audience", "TokenExpiration": "--token-expiration",
	"RotationPollInterval": "--rotation-poll-interval", "Push": "--push-rotation", "Namespaces": "--namespaces",
	"ClusterWide": "--cluster-wide", "ControllerName": "--controller-name", "LeaderElection": "--leader-elect",
	"LeaderElectionNamespace": "--leader-election-namespace", "LeaderElectionID": "--leader-election-id",
	"Workers": "--workers", "KubeAPIQPS": "--kube-api-qps", "KubeAPIBurst": "--kube-api-burst", "MaxCallRecvMsgSize": "--max-call-recv-msg-size", "ProviderTimeout": "--provider-timeout",
	"MetricsAddr": "--metrics-addr", "Kubeconfig": "--kubeconfig", "PodName": "--pod-name", "PodUID": "--pod-uid",
}

func (a *app) syncControllerCmd() *cobra.Command {
	var o controller.Options
	var providerVolume, additional, audiences, ignored string
	c := &cobra.Command{
		Use:   "sync-controller",
		Short: "Run the SecretSync controller: Kubernetes Secrets from providers, with no pod",
		Long: `Run the controller of SecretSyncs (secret-sync.x-k8s.io/v1alpha1, the API of
the Kubernetes project's secrets-store-sync-controller). For each SecretSync
it reads the SecretProviderClass of its namespace, gets a TokenRequest token
for its serviceAccountName (one per --token-request-audience), calls the
class's provider over the Secrets Store provider protocol
({provider-volume}/{name}.sock: Coffer's provider, or any upstream one), and
writes the Secret named after the SecretSync, owned by it and labelled
secrets-store.sync.x-k8s.io/secretsync=<name>. A Secret of that name without
the label is never touched.

Secrets are refreshed every --rotation-poll-interval, when a SecretSync or its
class changes, when forceSynchronization changes, and at once when a provider
pushes a change (Coffer's provider does). Deleting a SecretSync deletes its
Secret, unless it is annotated coffer.dev/deletion-policy=Retain.

It serves --namespaces only, unless --cluster-wide. Replicas elect a leader
(--leader-elect), and only the leader syncs. It takes the upstream
controller's flags.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			o.ProviderDirs = providerDirs(additional, providerVolume)
			o.TokenAudiences = nil
			for _, aud := range strings.Split(audiences, ",") {
				if aud = strings.TrimSpace(aud); aud != "" {
					o.TokenAudiences = append(o.TokenAudiences, aud)
				}
			}
			if o.PodName == "" {
				o.PodName = os.Getenv("SYNC_CONTROLLER_POD_NAME")
			}
			if o.PodUID == "" {
				o.PodUID = os.Getenv("SYNC_CONTROLLER_POD_UID")
			}
			if _, err := o.Validate(); err != nil {
				return optionError(err, syncControllerFlags)
			}
			o.Log = a.logger(true).With("component", "sync-controller")
			d, err := controller.NewDaemon(c.Context(), o)
			if err != nil {
				return optionError(err, syncControllerFlags)
			}
			return d.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&providerVolume, "provider-volume", "/provider", "directory of provider sockets")
	f.StringVar(&additional, "additional-provider-volume-paths", "", "more directories of provider sockets, comma-separated, searched first")
	f.StringVar(&audiences, "token-request-audience", "", "audiences of the service-account tokens passed to providers, comma-separated (Coffer's provider: api://AzureADTokenExchange); empty: no token")
	f.DurationVar(&o.TokenExpiration, "token-expiration", 10*time.Minute, "lifetime asked of each service-account token (at least 10m)")
	f.DurationVar(&o.RotationPollInterval, "rotation-poll-interval", 2*time.Minute, "how often each SecretSync's data is fetched again")
	f.BoolVar(&o.Push, "push-rotation", true, "also refresh a SecretSync as soon as its provider reports a change (Coffer's provider does; others are polled only)")
	f.StringSliceVar(&o.Namespaces, "namespaces", nil, "namespaces to serve, comma-separated (required unless --cluster-wide)")
	f.BoolVar(&o.ClusterWide, "cluster-wide", false, "serve every namespace (needs cluster-wide RBAC for Secrets and service-account tokens)")
	f.StringVar(&o.ControllerName, "controller-name", "coffer", "SecretSyncs whose spec.secretSyncControllerName is set and differs are left alone")
	f.BoolVar(&o.LeaderElection, "leader-elect", true, "elect one leader among replicas (a Lease); only the leader syncs")
	f.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the Lease (default: the pod's own)")
	f.StringVar(&o.LeaderElectionID, "leader-election-id", "coffer-sync-controller", "name of the Lease")
	f.IntVar(&o.Workers, "workers", 8, "SecretSyncs synced at once")
	f.Float32Var(&o.KubeAPIQPS, "kube-api-qps", 100, "requests per second to the apiserver")
	f.IntVar(&o.KubeAPIBurst, "kube-api-burst", 200, "bursts of requests to the apiserver")
	f.IntVar(&o.MaxCallRecvMsgSize, "max-call-recv-msg-size", 4<<20, "largest provider response, in bytes")
	f.DurationVar(&o.ProviderTimeout, "provider-timeout", 30*time.Second, "bound of one provider call")
	f.StringVar(&o.PodName, "pod-name", "", "this pod's name, passed to providers (default: $SYNC_CONTROLLER_POD_NAME)")
	f.StringVar(&o.PodUID, "pod-uid", "", "this pod's UID, passed to providers (default: $SYNC_CONTROLLER_POD_UID)")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":8098", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8098", "the upstream controller's name for --metrics-addr")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	// Upstream flags that Coffer accepts and does not need.
	f.StringVar(&ignored, "health-probe-bind-address", "", "accepted for compatibility; /healthz is served on --metrics-addr")
	return c
}
