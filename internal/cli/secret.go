//go:build !node

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
	id, name, version := idParts(s.ID)
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: id, KID: kid(s.KID),
		Managed: s.Managed, Name: name, Tags: tags(s.Tags), Value: s.Value, version: version}
}

func viewProps(s *azsecrets.SecretProperties) secretView {
	id, name, version := idParts(s.ID)
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: id,
		Managed: s.Managed, Name: name, Tags: tags(s.Tags), version: version}
}

func viewDeleted(s azsecrets.DeletedSecret) secretView {
	id, name, version := idParts(s.ID)
	v := secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: id, KID: kid(s.KID),
		Managed: s.Managed, Name: name, Tags: tags(s.Tags), RecoveryID: s.RecoveryID,
		DeletedDate: ts(s.DeletedDate), ScheduledPurgeDate: ts(s.ScheduledPurgeDate), version: version}
	return v
}

func viewDeletedProps(s *azsecrets.DeletedSecretProperties) secretView {
	id, name, _ := idParts(s.ID)
	return secretView{Attributes: attrs(s.Attributes), ContentType: s.ContentType, ID: id, Managed: s.Managed,
		Name: name, Tags: tags(s.Tags), RecoveryID: s.RecoveryID, DeletedDate: ts(s.DeletedDate), ScheduledPurgeDate: ts(s.ScheduledPurgeDate)}
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
	cmd.AddCommand(a.secretSet(), a.secretSetAttributes(), a.secretDownload(),
		objBackup(a, secretNoun, func(ctx context.Context, sc *azsecrets.Client, name string) ([]byte, error) {
			resp, err := sc.BackupSecret(ctx, name, nil)
			return resp.Value, err
		}),
		objRestore(a, secretNoun, secretCols, func(ctx context.Context, sc *azsecrets.Client, blob []byte) (secretView, error) {
			resp, err := sc.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: blob}, nil)
			if err != nil {
				return secretView{}, err
			}
			return viewSecret(resp.Secret), nil
		}))
	cmd.AddCommand(a.secretReadVerbs()...)
	cmd.AddCommand(a.secretLifecycleVerbs()...)
	return cmd
}

func (a *app) secretSet() *cobra.Command {
	var f objFlags
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
			sc, err := secretNoun.client(a, c, &f, "name")
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
			return show(a, viewSecret(resp.Secret), secretCols)
		},
	}
	f.bind(c, "secret", true, false)
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

func (a *app) secretReadVerbs() []*cobra.Command {
	return []*cobra.Command{
		objVerb(a, secretNoun, "show", "Show a secret with its value", true, secretCols, func(ctx context.Context, sc *azsecrets.Client, f *objFlags) (*secretView, error) {
			resp, err := sc.GetSecret(ctx, f.name, f.version, nil)
			if err != nil {
				return nil, err
			}
			v := viewSecret(resp.Secret)
			return &v, nil
		}),
		objList(a, secretNoun, "list", "List secrets (without values)", false, secretCols,
			func(sc *azsecrets.Client, _ string) *runtime.Pager[azsecrets.ListSecretPropertiesResponse] {
				return sc.NewListSecretPropertiesPager(nil)
			},
			func(p azsecrets.ListSecretPropertiesResponse) []secretView { return mapViews(p.Value, viewProps) }),
		objList(a, secretNoun, "list-versions", "List a secret's versions (without values)", true, secretCols,
			func(sc *azsecrets.Client, name string) *runtime.Pager[azsecrets.ListSecretPropertiesVersionsResponse] {
				return sc.NewListSecretPropertiesVersionsPager(name, nil)
			},
			func(p azsecrets.ListSecretPropertiesVersionsResponse) []secretView {
				return mapViews(p.Value, viewProps)
			}),
		objList(a, secretNoun, "list-deleted", "List soft-deleted secrets", false, deletedCols,
			func(sc *azsecrets.Client, _ string) *runtime.Pager[azsecrets.ListDeletedSecretPropertiesResponse] {
				return sc.NewListDeletedSecretPropertiesPager(nil)
			},
			func(p azsecrets.ListDeletedSecretPropertiesResponse) []secretView {
				return mapViews(p.Value, viewDeletedProps)
			}),
		objVerb(a, secretNoun, "show-deleted", "Show a soft-deleted secret", false, deletedCols, func(ctx context.Context, sc *azsecrets.Client, f *objFlags) (*secretView, error) {
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
		objVerb(a, secretNoun, "delete", "Soft-delete a secret (recoverable until purged)", false, deletedCols, func(ctx context.Context, sc *azsecrets.Client, f *objFlags) (*secretView, error) {
			resp, err := sc.DeleteSecret(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewDeleted(resp.DeletedSecret)
			return &v, nil
		}),
		objVerb(a, secretNoun, "recover", "Recover a soft-deleted secret", false, secretCols, func(ctx context.Context, sc *azsecrets.Client, f *objFlags) (*secretView, error) {
			resp, err := sc.RecoverDeletedSecret(ctx, f.name, nil)
			if err != nil {
				return nil, err
			}
			v := viewSecret(resp.Secret)
			return &v, nil
		}),
		objVerb(a, secretNoun, "purge", "Permanently delete a soft-deleted secret", false, nil, func(ctx context.Context, sc *azsecrets.Client, f *objFlags) (*secretView, error) {
			_, err := sc.PurgeDeletedSecret(ctx, f.name, nil)
			return nil, err
		}),
	}
}

func (a *app) secretSetAttributes() *cobra.Command {
	var f objFlags
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
			sc, err := secretNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			resp, err := sc.UpdateSecretProperties(c.Context(), f.name, f.version, p, nil)
			if err != nil {
				return err
			}
			return show(a, viewSecret(resp.Secret), secretCols)
		},
	}
	f.bind(c, "secret", true, true)
	c.Flags().StringVar(&enabled, "enabled", "", "true or false")
	c.Flags().StringVar(&contentType, "content-type", "", "content type")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE (replaces all tags)")
	c.Flags().StringVar(&expires, "expires", "", "expiry time (RFC 3339)")
	c.Flags().StringVar(&notBefore, "not-before", "", "not-before time (RFC 3339)")
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

func (a *app) secretDownload() *cobra.Command {
	var f objFlags
	var file, encoding string
	c := &cobra.Command{
		Use:   "download",
		Short: "Write a secret's value to a new file",
		Long:  "Write a secret's value to a new file (mode 0600, never overwritten). A certificate's PFX secret needs --encoding base64.",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			if encoding != "utf-8" && encoding != "base64" {
				return usagef("--encoding %q is not one of utf-8, base64", encoding)
			}
			sc, err := secretNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			resp, err := sc.GetSecret(c.Context(), f.name, f.version, nil)
			if err != nil {
				return err
			}
			data := []byte(str(resp.Value))
			if encoding == "base64" {
				if data, err = base64.StdEncoding.DecodeString(str(resp.Value)); err != nil {
					return fmt.Errorf("secret %s is not base64, so --encoding base64 cannot decode it; use --encoding utf-8", f.name)
				}
			}
			return writeNew(file, data)
		},
	}
	f.bind(c, "secret", true, true)
	c.Flags().StringVarP(&file, "file", "f", "", "file to write (must not exist)")
	c.Flags().StringVarP(&encoding, "encoding", "e", "utf-8", "how the value is stored: utf-8 (written as is) or base64 (decoded)")
	return c
}
