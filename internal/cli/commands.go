//go:build !node

package cli

import (
	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/cli/client"
)

// commands returns every subcommand: the full build, with the server, the
// management CLI and the installer.
func (a *app) commands() []*cobra.Command {
	return []*cobra.Command{
		a.devCmd(),
		a.installCmd(),
		a.uninstallCmd(),
		a.serverCmd(),
		a.operatorCmd(),
		a.vaultCmd(),
		a.spCmd(),
		a.identityCmd(),
		a.nodePoolCmd(),
		a.roleCmd(),
		a.secretCmd(),
		a.keyCmd(),
		a.certificateCmd(),
		a.csiDriverCmd(),
		a.providerCmd(),
		a.webhookCmd(),
		a.syncControllerCmd(),
		a.nodeAgentCmd(),
		a.podIdentityCmd(),
		a.auditCmd(),
		a.benchCmd(),
		a.migrateManifestsCmd(),
	}
}

// describeError turns an error into the one line the CLI prints.
func describeError(err error) string { return client.Describe(err) }

// client loads credentials and returns a client.
func (a *app) client() (*client.Client, error) {
	env, err := client.LoadEnv(a.envFile)
	if err != nil {
		return nil, err
	}
	return client.New(env)
}
