//go:build !node

package cli

import (
	"context"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/spf13/cobra"
)

// The secret, key and certificate nouns share their verbs' shape: flags,
// client, one object or every page of a list, printed in the chosen format.

// objFlags are the flags of a verb on vault objects.
type objFlags struct {
	vault, name, version string
}

func (f *objFlags) bind(c *cobra.Command, what string, withName, withVersion bool) {
	c.Flags().StringVar(&f.vault, "vault-name", "", "name of the vault")
	if withName {
		c.Flags().StringVarP(&f.name, "name", "n", "", "name of the "+what)
	}
	if withVersion {
		c.Flags().StringVar(&f.version, "version", "", what+" version (default: the latest)")
	}
}

type (
	secretsClient = azsecrets.Client
	keysClient    = azkeys.Client
	certsClient   = azcertificates.Client
)

// noun ties a CLI noun to its SDK client.
type noun[C any] struct {
	what string
	open func(cl *client.Client, vault string) (C, error)
}

var (
	secretNoun = noun[*secretsClient]{"secret", (*client.Client).Secrets}
	keyNoun    = noun[*keysClient]{"key", (*client.Client).Keys}
	certNoun   = noun[*certsClient]{"certificate", (*client.Client).Certificates}
)

// client checks the required flags and opens the noun's client.
func (n noun[C]) client(a *app, c *cobra.Command, f *objFlags, required ...string) (C, error) {
	var zero C
	if err := requireFlags(c, append([]string{"vault-name"}, required...)...); err != nil {
		return zero, err
	}
	cl, err := a.client()
	if err != nil {
		return zero, err
	}
	return n.open(cl, f.vault)
}

func show[V any](a *app, v V, cols []column[V]) error {
	return render(a.stdout, a.output, v, []V{v}, cols)
}

func showAll[V any](a *app, vs []V, cols []column[V]) error {
	if vs == nil {
		vs = []V{}
	}
	return render(a.stdout, a.output, vs, vs, cols)
}

// objVerb builds a verb on one object (--vault-name, --name and, with
// withVersion, --version) that prints what fn returns; a nil view prints
// nothing.
func objVerb[C, V any](a *app, n noun[C], use, short string, withVersion bool, cols []column[V], fn func(ctx context.Context, cl C, f *objFlags) (*V, error)) *cobra.Command {
	var f objFlags
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := n.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			v, err := fn(c.Context(), cl, &f)
			if err != nil || v == nil {
				return err
			}
			return show(a, *v, cols)
		},
	}
	f.bind(c, n.what, true, withVersion)
	return c
}

// objList builds a verb that walks every page of a pager and prints the
// items.
func objList[C, P, V any](a *app, n noun[C], use, short string, withName bool, cols []column[V], pager func(cl C, name string) *runtime.Pager[P], items func(P) []V) *cobra.Command {
	var f objFlags
	var max int
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var required []string
			if withName {
				required = append(required, "name")
			}
			cl, err := n.client(a, c, &f, required...)
			if err != nil {
				return err
			}
			var out []V
			for p := pager(cl, f.name); p.More() && (max <= 0 || len(out) < max); {
				page, err := p.NextPage(c.Context())
				if err != nil {
					return err
				}
				out = append(out, items(page)...)
			}
			if max > 0 && len(out) > max {
				out = out[:max]
			}
			return showAll(a, out, cols)
		},
	}
	f.bind(c, n.what, withName, false)
	c.Flags().IntVar(&max, "maxresults", 0, "stop after this many items (default: all)")
	return c
}

// objBackup builds `backup`: every version of an object into a new sealed
// file.
func objBackup[C any](a *app, n noun[C], backup func(ctx context.Context, cl C, name string) ([]byte, error)) *cobra.Command {
	var f objFlags
	var file string
	c := &cobra.Command{
		Use: "backup", Short: "Back up every version of a " + n.what + " into a sealed file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			cl, err := n.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			blob, err := backup(c.Context(), cl, f.name)
			if err != nil {
				return err
			}
			return writeNew(file, blob)
		},
	}
	f.bind(c, n.what, true, false)
	c.Flags().StringVarP(&file, "file", "f", "", "file to write the backup to (must not exist)")
	return c
}

// objRestore builds `restore` from a backup file.
func objRestore[C, V any](a *app, n noun[C], cols []column[V], restore func(ctx context.Context, cl C, blob []byte) (V, error)) *cobra.Command {
	var f objFlags
	var file string
	c := &cobra.Command{
		Use: "restore", Short: "Restore a " + n.what + " from a backup file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			data, err := a.readFileFlag(c, "file", file, object.MaxBackupBytes)
			if err != nil {
				return err
			}
			cl, err := n.client(a, c, &f)
			if err != nil {
				return err
			}
			v, err := restore(c.Context(), cl, data)
			if err != nil {
				return err
			}
			return show(a, v, cols)
		},
	}
	f.bind(c, n.what, false, false)
	c.Flags().StringVarP(&file, "file", "f", "", "backup file to restore")
	return c
}

func mapViews[T, V any](in []*T, view func(*T) V) []V {
	out := make([]V, len(in))
	for i, v := range in {
		out[i] = view(v)
	}
	return out
}

// readFileFlag reads the file a required flag names (- for stdin), at most
// max bytes.
func (a *app) readFileFlag(c *cobra.Command, flag, path string, max int64) ([]byte, error) {
	if err := requireFlags(c, flag); err != nil {
		return nil, err
	}
	return readInput(a.stdin, path, max)
}

// idParts splits an object id (https://{vault}/{collection}/{name}[/{version}])
// into its text, name and version. A missing id, which a misbehaving server
// could send, gives empty strings rather than a crash.
func idParts[T ~string](id *T) (full, name, version string) {
	if id == nil {
		return "", "", ""
	}
	full = string(*id)
	u, err := url.Parse(full)
	if err != nil {
		return full, "", ""
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) > 1 {
		name = parts[1]
	}
	if len(parts) > 2 {
		version = parts[2]
	}
	return full, name, version
}

// deref is *p, or "" for nil.
func deref[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}
