//go:build !(node && provider)

package cli

import (
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/csidriver"
)

// csiDriverFlags names the flag of each driver option, for its errors.
var csiDriverFlags = map[string]string{
	"Name": "--drivername", "NodeID": "--nodeid", "Endpoint": "--endpoint", "ProviderDirs": "--provider-volume",
	"MaxCallRecvMsgSize": "--max-call-recv-msg-size", "RotationEnabled": "--enable-secret-rotation",
	"RotationInterval": "--rotation-poll-interval", "Push": "--push-rotation", "MetricsAddr": "--metrics-addr",
	"RegistrationDir": "--registration-dir", "RegistrationPath": "--kubelet-registration-path", "Kubeconfig": "--kubeconfig",
}

func (a *app) csiDriverCmd() *cobra.Command {
	var o csidriver.Options
	var providerVolume, additional string
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
			daemon.LeanGC()
			o.Log = a.logger(true).With("component", "csi-driver")
			if verbosity >= 5 {
				o.Log = slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "csi-driver")
			}
			o.ProviderDirs = providerDirs(additional, providerVolume)
			d, err := csidriver.NewDaemon(c.Context(), o)
			if err != nil {
				return optionError(err, csiDriverFlags)
			}
			return d.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (a unix socket)")
	f.StringVar(&o.NodeID, "nodeid", "", "this node's name (from spec.nodeName)")
	f.StringVar(&o.Name, "drivername", csidriver.Name, "CSI driver name")
	f.StringVar(&providerVolume, "provider-volume", "/var/run/secrets-store-csi-providers", "directory of provider sockets")
	f.StringVar(&additional, "additional-provider-volume-paths", "/etc/kubernetes/secrets-store-csi-providers", "more directories of provider sockets, comma-separated, searched first")
	f.BoolVar(&o.RotationEnabled, "enable-secret-rotation", false, "refresh mounted secrets on kubelet republish (requiresRepublish)")
	f.DurationVar(&o.RotationInterval, "rotation-poll-interval", 2*time.Minute, "minimum time between two provider calls for one volume")
	f.BoolVar(&o.Push, "push-rotation", true, "with --enable-secret-rotation, also refresh a volume as soon as its provider reports a change (Coffer's provider does; others are polled only)")
	f.IntVar(&o.MaxCallRecvMsgSize, "max-call-recv-msg-size", 4<<20, "largest provider response, in bytes")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":8095", "address of /metrics and /healthz (empty: off)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.StringVar(&o.RegistrationDir, "registration-dir", "", "register with the kubelet through its plugin watcher directory, such as /var/lib/kubelet/plugins_registry, instead of a node-driver-registrar sidecar (empty: off)")
	f.StringVar(&o.RegistrationPath, "kubelet-registration-path", "", "the CSI socket's path on the host, as the kubelet sees it (default: --endpoint's path)")
	f.IntVarP(&verbosity, "v", "v", 0, "log verbosity, as klog's -v (5 and over: debug)")
	// Upstream flags that Coffer accepts and does not need.
	f.BoolVar(&ignoredBool, "log-format-json", false, "accepted for compatibility; logs are always JSON")
	f.BoolVar(&ignoredBool, "enable-pprof", false, "accepted for compatibility; ignored")
	f.IntVar(&ignoredInt, "pprof-port", 6065, "accepted for compatibility; ignored")
	f.BoolVar(&ignoredBool, "provider-health-check", false, "accepted for compatibility; ignored")
	f.DurationVar(&ignoredDur, "provider-health-check-interval", 2*time.Minute, "accepted for compatibility; ignored")
	return c
}

// providerDirs are the directories searched for provider sockets: the
// comma-separated additional ones first, as upstream, then the provider
// volume.
func providerDirs(additional, providerVolume string) []string {
	var dirs []string
	for _, p := range strings.Split(additional, ",") {
		if p = strings.TrimSpace(p); p != "" {
			dirs = append(dirs, p)
		}
	}
	if providerVolume != "" {
		dirs = append(dirs, providerVolume)
	}
	return dirs
}
