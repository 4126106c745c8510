//go:build node && provider

package cli

import "github.com/spf13/cobra"

// commands returns the provider build's one subcommand. The provider's
// DaemonSet runs this build (`go build -tags node,provider`): the provider
// talks to the kubelet's driver over gRPC and to the vault over HTTPS, and
// needs none of client-go, which the driver and the node agent link, so
// its pages and start-up hold only its own packages (`make
// bench-node-memory`).
func (a *app) commands() []*cobra.Command {
	return []*cobra.Command{a.providerCmd()}
}
