//go:build node

package cli

import (
	"strings"

	"github.com/spf13/cobra"
)

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

// describeError turns an error into the one line the CLI prints. The node
// daemons' errors are their own, not Azure SDK responses, so the first
// line is the description.
func describeError(err error) string {
	s := strings.TrimSpace(err.Error())
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
