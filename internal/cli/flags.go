//go:build !node

package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/cofferhq/coffer/internal/daemon/kube"
)

// requireFlags returns a usage error naming every empty required flag.
func requireFlags(c *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if f := c.Flags().Lookup(n); f != nil && f.Value.String() == "" {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return usagef("%s: missing required flag(s) %s", c.CommandPath(), strings.Join(missing, ", "))
	}
	return nil
}

// mergeFlags returns base with more's entries added or replaced.
func mergeFlags(base, more map[string]string) map[string]string {
	m := make(map[string]string, len(base)+len(more))
	for k, v := range base {
		m[k] = v
	}
	for k, v := range more {
		m[k] = v
	}
	return m
}

// kubeConfig is the in-cluster configuration, or --kubeconfig's, for the
// CLI verbs that talk to a cluster.
func kubeConfig(path string) (*rest.Config, error) {
	rc, err := kube.Config(nil, "Kubeconfig", path)
	return rc, optionError(err, map[string]string{"Kubeconfig": "--kubeconfig"})
}
