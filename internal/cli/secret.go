package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/secret"
	"github.com/spf13/cobra"
)

// Views mirror `az keyvault secret` output: camelCase keys, RFC 3339 times,
// nulls for unset fields.
type attrView struct {
	Created         *string `json:"created"`
	Enabled         *bool   `json:"enabled"`
	Expires         *string `json:"expires"`
	NotBefore       *string `json:"notBefore"`
	RecoverableDays *int32  `json:"recoverableDays"`
	RecoveryLevel   *string `json:"recoveryLevel"`
	Updated         *string `json:"updated"`
}

type secretView struct {
	Attributes         attrView          `json:"attributes"`
	ContentType        *string           `json:"contentType"`
	ID                 string            `json:"id"`
	KID                *string           `json:"kid"`
	Managed            *bool             `json:"managed"`
	Name               string            `json:"name"`
	Tags               map[string]string `json:"tags"`
	Value              *string           `json:"value,omitempty"`
	RecoveryID         *string           `json:"recoveryId,omitempty"`
	DeletedDate        *string           `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *string           `json:"scheduledPurgeDate,omitempty"`
	version            string
}

func ts(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

func tags(in map[string]*string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

func attrs(a *azsecrets.SecretAttributes) attrView {
	if a == nil {
		return attrView{}
	}
	return attrView{Created: ts(a.Created), Enabled: a.Enabled, Expires: ts(a.Expires), NotBefore: ts(a.NotBefore),
		RecoverableDays: a.RecoverableDays, RecoveryLevel: a.RecoveryLevel, Updated: ts(a.Updated)}
}

func kid(id *azsecrets.ID) *string {
	if id == nil {
		return nil
	}
	s := string(*id)
	return &s
}

func viewSecret(s azsecrets.Secret) secretView {
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: string(*s.ID), KID: kid(s.KID),
		Managed: s.Managed, Name: s.ID.Name(), Tags: tags(s.Tags), Value: s.Value, version: s.ID.Version()}
}

func viewProps(s *azsecrets.SecretProperties) secretView {
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: string(*s.ID),
		Managed: s.Managed, Name: s.ID.Name(), Tags: tags(s.Tags), version: s.ID.Version()}
}

func viewDeleted(s azsecrets.DeletedSecret) secretView {
	v := secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: string(*s.ID), KID: kid(s.KID),
		Managed: s.Managed, Name: s.ID.Name(), Tags: tags(s.Tags), RecoveryID: s.RecoveryID,
		DeletedDate: ts(s.DeletedDate), ScheduledPurgeDate: ts(s.ScheduledPurgeDate), version: s.ID.Version()}
	return v
}

func viewDeletedProps(s *azsecrets.DeletedSecretProperties) secretView {
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: string(*s.ID), Managed: s.Managed,
		Name: s.ID.Name(), Tags: tags(s.Tags), RecoveryID: s.RecoveryID, DeletedDate: ts(s.DeletedDate), ScheduledPurgeDate: ts(s.ScheduledPurgeDate)}
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func boolStr(p *bool) string {
	if p == nil {
		return ""
	}
	return strconv.FormatBool(*p)
}

var secretCols = []column[secretView]{
	{"Name", func(s secretView) string { return s.Name }},
	{"Version", func(s secretView) string { return s.version }},
	{"Enabled", func(s secretView) string { return boolStr(s.Attributes.Enabled) }},
	{"ContentType", func(s secretView) string { return str(s.ContentType) }},
	{"Updated", func(s secretView) string { return str(s.Attributes.Updated) }},
	{"Value", func(s secretView) string { return str(s.Value) }},
}

var deletedCols = []column[secretView]{
	{"Name", func(s secretView) string { return s.Name }},
	{"DeletedDate", func(s secretView) string { return str(s.DeletedDate) }},
	{"ScheduledPurgeDate", func(s secretView) string { return str(s.ScheduledPurgeDate) }},
	{"RecoveryId", func(s secretView) string { return str(s.RecoveryID) }},
}

func (a *app) one(v secretView, cols []column[secretView]) error {
	return render(a.stdout, a.output, v, []secretView{v}, cols)
}

func (a *app) many(vs []secretView, cols []column[secretView]) error {
	if vs == nil {
		vs = []secretView{}
	}
	return render(a.stdout, a.output, vs, vs, cols)
}

// secretFlags are the flags shared by the secret verbs.
type secretFlags struct {
	vault, name, version string
}

func (f *secretFlags) bind(c *cobra.Command, withName, withVersion bool) {
	c.Flags().StringVar(&f.vault, "vault-name", "", "name of the vault")
	if withName {
		c.Flags().StringVarP(&f.name, "name", "n", "", "name of the secret")
	}
	if withVersion {
		c.Flags().StringVar(&f.version, "version", "", "secret version (default: the latest)")
	}
}

func (a *app) secretClient(c *cobra.Command, f *secretFlags, required ...string) (*azsecrets.Client, error) {
	if err := requireFlags(c, append([]string{"vault-name"}, required...)...); err != nil {
		return nil, err
	}
	cl, err := a.client()
	if err != nil {
		return nil, err
	}
	return cl.Secrets(f.vault)
}

func parseTags(in []string) (map[string]*string, error) {
	out := map[string]*string{}
	for _, t := range in {
		k, v, _ := strings.Cut(t, "=")
		if k == "" {
			return nil, usagef("--tags %q: use KEY=VALUE", t)
		}
		out[k] = to.Ptr(v)
	}
	return out, nil
}

func parseTime(flag, v string) (*time.Time, error) {
	if v == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return nil, usagef("--%s %q: use RFC 3339, such as 2027-01-31T00:00:00Z", flag, v)
	}
	return &t, nil
}

func (a *app) secretCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Manage secrets in a vault (mirrors `az keyvault secret`)"}
	cmd.AddCommand(a.secretSet(), a.secretSetAttributes(), a.secretBackup(), a.secretRestore())
	cmd.AddCommand(a.secretReadVerbs()...)
	cmd.AddCommand(a.secretLifecycleVerbs()...)
	return cmd
}

func (a *app) secretSet() *cobra.Command {
	var f secretFlags
	var value, file, encoding, contentType, expires, notBefore string
	var tagList []string
	var disabled bool
	c := &cobra.Command{
		Use:   "set",
		Short: "Create a secret, or add a new version to it",
		Long:  "Create a secret, or add a new version to it. --value is visible to other users of this machine in the process list; prefer --file (use --file - for stdin).",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if (value == "") == (file == "") {
				return usagef("give exactly one of --value and --file")
			}
			if file != "" {
				data, err := readInput(a.stdin, file, maxInputFile)
				if err != nil {
					return err
				}
				switch encoding {
				case "utf-8", "utf8":
					value = string(data)
				case "base64":
					value = base64.StdEncoding.EncodeToString(data)
				default:
					return usagef("--encoding %q is not one of utf-8, base64", encoding)
				}
			}
			exp, err := parseTime("expires", expires)
			if err != nil {
				return err
			}
			nbf, err := parseTime("not-before", notBefore)
			if err != nil {
				return err
			}
			tg, err := parseTags(tagList)
			if err != nil {
				return err
			}
			sc, err := a.secretClient(c, &f, "name")
			if err != nil {
				return err
			}
			p := azsecrets.SetSecretParameters{Value: &value, Tags: tg,
				SecretAttributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(!disabled), Expires: exp, NotBefore: nbf}}
			if contentType != "" {
				p.ContentType = &contentType
			}
			resp, err := sc.SetSecret(c.Context(), f.name, p, nil)
			if err != nil {
				return err
			}
			return a.one(viewSecret(resp.Secret), secretCols)
		},
	}
	f.bind(c, true, false)
	c.Flags().StringVar(&value, "value", "", "the secret's value")
	c.Flags().StringVarP(&file, "file", "f", "", "read the value from this file (- for stdin)")
	c.Flags().StringVarP(&encoding, "encoding", "e", "utf-8", "how to store --file contents: utf-8 or base64")
	c.Flags().StringVar(&contentType, "content-type", "", "content type of the secret")
	c.Flags().StringVar(&contentType, "description", "", "alias of --content-type, as in az")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE, comma-separated or repeated")
	c.Flags().BoolVar(&disabled, "disabled", false, "create the version disabled")
	c.Flags().StringVar(&expires, "expires", "", "expiry time (RFC 3339)")
	c.Flags().StringVar(&notBefore, "not-before", "", "not-before time (RFC 3339)")
	return c
}

// maxInputFile bounds a value file; the server's limit is far lower.
const maxInputFile = 1 << 20

func readInput(stdin io.Reader, file string, max int64) ([]byte, error) {
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is over %d bytes", file, max)
	}
	return data, nil
}

// secretVerb builds a verb on one secret (--vault-name, --name and, with
// withVersion, --version) that prints what fn returns; a nil view prints
// nothing.
func (a *app) secretVerb(use, short string, withVersion bool, cols []column[secretView], fn func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error)) *cobra.Command {
	var f secretFlags
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sc, err := a.secretClient(c, &f, "name")
			if err != nil {
				return err
			}
			v, err := fn(c.Context(), sc, &f)
			if err != nil || v == nil {
				return err
			}
			return a.one(*v, cols)
		},
	}
	f.bind(c, true, withVersion)
	return c
}

// listVerb builds a verb that walks every page of a pager and prints the
// items.
func listVerb[P any](a *app, use, short string, withName bool, cols []column[secretView], pager func(sc *azsecrets.Client, name string) *runtime.Pager[P], items func(P) []secretView) *cobra.Command {
	var f secretFlags
	var max int
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var required []string
			if withName {
				required = append(required, "name")
			}
			sc, err := a.secretClient(c, &f, required...)
			if err != nil {
				return err
			}
			var out []secretView
			for p := pager(sc, f.name); p.More() && (max <= 0 || len(out) < max); {
				page, err := p.NextPage(c.Context())
				if err != nil {
					return err
				}
				out = append(out, items(page)...)
			}
			if max > 0 && len(out) > max {
				out = out[:max]
			}
			return a.many(out, cols)
		},
	}
	f.bind(c, withName, false)
	c.Flags().IntVar(&max, "maxresults", 0, "stop after this many items (default: all)")
	return c
}

func (a *app) secretReadVerbs() []*cobra.Command {
	return []*cobra.Command{
		a.secretVerb("show", "Show a secret with its value", true, secretCols, func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error) {
			resp, err := sc.GetSecret(ctx, f.name, f.version, nil)
			if err != nil {
				return nil, err
			}
			v := viewSecret(resp.Secret)
			return &v, nil
		}),
		listVerb(a, "list", "List secrets (without values)", false, secretCols,
			func(sc *azsecrets.Client, _ string) *runtime.Pager[azsecrets.ListSecretPropertiesResponse] {
				return sc.NewListSecretPropertiesPager(nil)
			},
			func(p azsecrets.ListSecretPropertiesResponse) []secretView { return mapViews(p.Value, viewProps) }),
		listVerb(a, "list-versions", "List a secret's versions (without values)", true, secretCols,
			func(sc *azsecrets.Client, name string) *runtime.Pager[azsecrets.ListSecretPropertiesVersionsResponse] {
				return sc.NewListSecretPropertiesVersionsPager(name, nil)
			},
			func(p azsecrets.ListSecretPropertiesVersionsResponse) []secretView {
				return mapViews(p.Value, viewProps)
			}),
		listVerb(a, "list-deleted", "List soft-deleted secrets", false, deletedCols,
			func(sc *azsecrets.Client, _ string) *runtime.Pager[azsecrets.ListDeletedSecretPropertiesResponse] {
				return sc.NewListDeletedSecretPropertiesPager(nil)
			},
			func(p azsecrets.ListDeletedSecretPropertiesResponse) []secretView {
				return mapViews(p.Value, viewDeletedProps)
			}),
		a.secretVerb("show-deleted", "Show a soft-deleted secret", false, deletedCols, func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error) {
			resp, err := sc.GetDeletedSecret(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewDeleted(resp.DeletedSecret)
			return &v, nil
		}),
	}
}

func (a *app) secretLifecycleVerbs() []*cobra.Command {
	return []*cobra.Command{
		a.secretVerb("delete", "Soft-delete a secret (recoverable until purged)", false, deletedCols, func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error) {
			resp, err := sc.DeleteSecret(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewDeleted(resp.DeletedSecret)
			return &v, nil
		}),
		a.secretVerb("recover", "Recover a soft-deleted secret", false, secretCols, func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error) {
			resp, err := sc.RecoverDeletedSecret(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewSecret(resp.Secret)
			return &v, nil
		}),
		a.secretVerb("purge", "Permanently delete a soft-deleted secret", false, nil, func(ctx context.Context, sc *azsecrets.Client, f *secretFlags) (*secretView, error) {
			_, err := sc.PurgeDeletedSecret(ctx, f.name, nil)
			return nil, err
		}),
	}
}

func mapViews[T any](in []*T, view func(*T) secretView) []secretView {
	out := make([]secretView, len(in))
	for i, v := range in {
		out[i] = view(v)
	}
	return out
}

func (a *app) secretSetAttributes() *cobra.Command {
	var f secretFlags
	var enabled, contentType, expires, notBefore string
	var tagList []string
	c := &cobra.Command{
		Use: "set-attributes", Short: "Change a secret version's attributes", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			p := azsecrets.UpdateSecretPropertiesParameters{SecretAttributes: &azsecrets.SecretAttributes{}}
			if enabled != "" {
				b, err := strconv.ParseBool(enabled)
				if err != nil {
					return usagef("--enabled %q: use true or false", enabled)
				}
				p.SecretAttributes.Enabled = &b
			}
			var err error
			if p.SecretAttributes.Expires, err = parseTime("expires", expires); err != nil {
				return err
			}
			if p.SecretAttributes.NotBefore, err = parseTime("not-before", notBefore); err != nil {
				return err
			}
			if c.Flags().Changed("content-type") {
				p.ContentType = &contentType
			}
			if c.Flags().Changed("tags") {
				if p.Tags, err = parseTags(tagList); err != nil {
					return err
				}
			}
			sc, err := a.secretClient(c, &f, "name")
			if err != nil {
				return err
			}
			resp, err := sc.UpdateSecretProperties(c.Context(), f.name, f.version, p, nil)
			if err != nil {
				return err
			}
			return a.one(viewSecret(resp.Secret), secretCols)
		},
	}
	f.bind(c, true, true)
	c.Flags().StringVar(&enabled, "enabled", "", "true or false")
	c.Flags().StringVar(&contentType, "content-type", "", "content type")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE (replaces all tags)")
	c.Flags().StringVar(&expires, "expires", "", "expiry time (RFC 3339)")
	c.Flags().StringVar(&notBefore, "not-before", "", "not-before time (RFC 3339)")
	return c
}

func (a *app) secretBackup() *cobra.Command {
	var f secretFlags
	var file string
	c := &cobra.Command{
		Use: "backup", Short: "Back up every version of a secret into a sealed file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			sc, err := a.secretClient(c, &f, "name")
			if err != nil {
				return err
			}
			resp, err := sc.BackupSecret(c.Context(), f.name, nil)
			if err != nil {
				return err
			}
			return writeNew(file, resp.Value)
		},
	}
	f.bind(c, true, false)
	c.Flags().StringVarP(&file, "file", "f", "", "file to write the backup to (must not exist)")
	return c
}

// writeNew writes data to a new file with mode 0600; it never overwrites.
func writeNew(path string, data []byte) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s already exists; choose another --file", path)
	}
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

func (a *app) secretRestore() *cobra.Command {
	var f secretFlags
	var file string
	c := &cobra.Command{
		Use: "restore", Short: "Restore a secret from a backup file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			data, err := readInput(a.stdin, file, secret.MaxBackupBytes)
			if err != nil {
				return err
			}
			sc, err := a.secretClient(c, &f)
			if err != nil {
				return err
			}
			resp, err := sc.RestoreSecret(c.Context(), azsecrets.RestoreSecretParameters{SecretBackup: data}, nil)
			if err != nil {
				return err
			}
			return a.one(viewSecret(resp.Secret), secretCols)
		},
	}
	f.bind(c, false, false)
	c.Flags().StringVarP(&file, "file", "f", "", "backup file to restore")
	return c
}
