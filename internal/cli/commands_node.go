//go:build node && !provider

package cli

import "github.com/spf13/cobra"

// commands returns the node build's subcommands: the daemons that run on
// every node. The node image runs this build (`go build -tags node`) so
// that a DaemonSet's pages and start-up hold none of the server's,
// the management CLI's or the installer's packages and initializers
// (Helm, the Azure SDKs, etcd): its driver starts at about a third of the
// full binary's resident memory (`make bench-node-memory`).
func (a *app) commands() []*cobra.Command {
	return []*cobra.Command{
		a.csiDriverCmd(),
		a.providerCmd(),
		a.nodeAgentCmd(),
	}
}
