//go:build !node

package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/cli/migrate/flexvol"
)

// maxManifest bounds the manifest migrate reads: it is held in memory.
const maxManifest = 64 << 20

// migrateManifestsCmd is `coffer migrate`, for manifests; `coffer operator
// migrate` moves a store.
func (a *app) migrateManifestsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Rewrite manifests written for retired Azure components into what Coffer serves",
	}
	c.AddCommand(a.migrateFlexVolumeCmd())
	return c
}

func (a *app) migrateFlexVolumeCmd() *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "flexvolume -f manifest.yaml",
		Short: "Rewrite Key Vault FlexVolume (azure/kv) volumes into SecretProviderClasses and CSI volumes",
		Long: `Reads Kubernetes manifests (several documents, separated by ---) and writes
them to stdout with every flexVolume of driver azure/kv, in Pods,
Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs,
replaced by a csi volume of the Secrets Store CSI driver, each preceded by
the SecretProviderClass it names ({object}-{volume}, in the object's
namespace). Other documents are copied unchanged.

The options keyvaultname, keyvaultobjectnames, keyvaultobjecttypes,
keyvaultobjectversions and keyvaultobjectaliases (;-separated), tenantid,
cloudname, usepodidentity, usevmmanagedidentity and
vmmanagedidentityclientid become the class's parameters; a secretRef (the
service principal's clientid and clientsecret) becomes the volume's
nodePublishSecretRef. What cannot be carried over (resourcegroup and
subscriptionid, which the CSI provider does not need; unknown options;
empty placeholders) is printed on stderr, one line per field. Comments of
converted documents are not kept.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("-f is required: the manifest to convert, or - for stdin")
			}
			in := a.stdin
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("reading the manifest: %w", err)
				}
				defer f.Close()
				in = f
			}
			lr := &io.LimitedReader{R: in, N: maxManifest + 1}
			notes, err := flexvol.Convert(lr, a.stdout)
			if lr.N <= 0 {
				return fmt.Errorf("%s is larger than %d MiB: split it", file, maxManifest>>20)
			}
			for _, n := range notes {
				fmt.Fprintln(a.stderr, "NOT MAPPED: "+n.String())
			}
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "filename", "f", "", "the manifest to convert (- for stdin)")
	return c
}
