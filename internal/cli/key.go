//go:build !node

package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/spf13/cobra"
)

// jwkView is a public JWK as `az keyvault key show` prints it.
type jwkView struct {
	KID    string   `json:"kid"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"keyOps"`
	N      *string  `json:"n"`
	E      *string  `json:"e"`
	Crv    *string  `json:"crv"`
	X      *string  `json:"x"`
	Y      *string  `json:"y"`
}

type keyView struct {
	Attributes         attrView          `json:"attributes"`
	Key                jwkView           `json:"key"`
	Managed            *bool             `json:"managed"`
	Name               string            `json:"name"`
	Tags               map[string]string `json:"tags"`
	RecoveryID         *string           `json:"recoveryId,omitempty"`
	DeletedDate        *string           `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *string           `json:"scheduledPurgeDate,omitempty"`
	version            string
}

func b64url(b []byte) *string {
	if len(b) == 0 {
		return nil
	}
	s := base64.RawURLEncoding.EncodeToString(b)
	return &s
}

func keyAttrs(a *azkeys.KeyAttributes) attrView {
	if a == nil {
		return attrView{}
	}
	return attrView{Created: ts(a.Created), Enabled: a.Enabled, Expires: ts(a.Expires), NotBefore: ts(a.NotBefore),
		RecoverableDays: a.RecoverableDays, RecoveryLevel: (*string)(a.RecoveryLevel), Updated: ts(a.Updated)}
}

func viewJWK(j *azkeys.JSONWebKey) jwkView {
	if j == nil {
		return jwkView{KeyOps: []string{}}
	}
	v := jwkView{KID: deref(j.KID), Kty: deref(j.Kty), KeyOps: []string{}, N: b64url(j.N), E: b64url(j.E), X: b64url(j.X), Y: b64url(j.Y)}
	for _, op := range j.KeyOps {
		if op != nil {
			v.KeyOps = append(v.KeyOps, string(*op))
		}
	}
	if j.Crv != nil {
		v.Crv = to.Ptr(string(*j.Crv))
	}
	return v
}

func viewKey(k azkeys.KeyBundle) keyView {
	var kid *azkeys.ID
	if k.Key != nil {
		kid = k.Key.KID
	}
	_, name, version := idParts(kid)
	return keyView{Attributes: keyAttrs(k.Attributes), Key: viewJWK(k.Key), Managed: k.Managed, Name: name, Tags: tags(k.Tags), version: version}
}

func viewKeyProps(k *azkeys.KeyProperties) keyView {
	id, name, version := idParts(k.KID)
	return keyView{Attributes: keyAttrs(k.Attributes), Key: jwkView{KID: id}, Managed: k.Managed, Name: name, Tags: tags(k.Tags), version: version}
}

func viewDeletedKey(k azkeys.DeletedKey) keyView {
	v := viewKey(azkeys.KeyBundle{Attributes: k.Attributes, Key: k.Key, Managed: k.Managed, Tags: k.Tags})
	v.RecoveryID, v.DeletedDate, v.ScheduledPurgeDate = (*string)(k.RecoveryID), ts(k.DeletedDate), ts(k.ScheduledPurgeDate)
	return v
}

func viewDeletedKeyProps(k *azkeys.DeletedKeyProperties) keyView {
	v := viewKeyProps(&azkeys.KeyProperties{Attributes: k.Attributes, KID: k.KID, Managed: k.Managed, Tags: k.Tags})
	v.RecoveryID, v.DeletedDate, v.ScheduledPurgeDate = (*string)(k.RecoveryID), ts(k.DeletedDate), ts(k.ScheduledPurgeDate)
	return v
}

var keyCols = []column[keyView]{
	{"Name", func(k keyView) string { return k.Name }},
	{"Version", func(k keyView) string { return k.version }},
	{"Kty", func(k keyView) string { return k.Key.Kty }},
	{"Enabled", func(k keyView) string { return boolStr(k.Attributes.Enabled) }},
	{"KeyOps", func(k keyView) string { return strings.Join(k.Key.KeyOps, ",") }},
	{"Updated", func(k keyView) string { return str(k.Attributes.Updated) }},
}

var deletedKeyCols = []column[keyView]{
	{"Name", func(k keyView) string { return k.Name }},
	{"DeletedDate", func(k keyView) string { return str(k.DeletedDate) }},
	{"ScheduledPurgeDate", func(k keyView) string { return str(k.ScheduledPurgeDate) }},
	{"RecoveryId", func(k keyView) string { return str(k.RecoveryID) }},
}

func (a *app) keyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage keys in a vault (mirrors `az keyvault key`)"}
	one := func(use, short string, withVersion bool, cols []column[keyView], fn func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error)) *cobra.Command {
		return objVerb(a, keyNoun, use, short, withVersion, cols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (*keyView, error) {
			out, err := fn(ctx, kc, f)
			if err != nil || out == nil {
				return nil, err
			}
			var v keyView
			switch r := out.(type) {
			case azkeys.KeyBundle:
				v = viewKey(r)
			case azkeys.DeletedKey:
				v = viewDeletedKey(r)
			}
			return &v, nil
		})
	}
	cmd.AddCommand(
		a.keyCreate(), a.keyImport(), a.keySetAttributes(), a.keyDownload(), a.keyRotationPolicyCmd(),
		one("show", "Show a key's public part and attributes", true, keyCols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			r, err := kc.GetKey(ctx, f.name, f.version, nil)
			return r.KeyBundle, err
		}),
		one("rotate", "Make a new version of a key with new material", false, keyCols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			r, err := kc.RotateKey(ctx, f.name, nil)
			return r.KeyBundle, err
		}),
		one("delete", "Soft-delete a key (recoverable until purged)", false, deletedKeyCols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			r, err := kc.DeleteKey(ctx, f.name, nil)
			return r.DeletedKey, err
		}),
		one("show-deleted", "Show a soft-deleted key", false, deletedKeyCols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			r, err := kc.GetDeletedKey(ctx, f.name, nil)
			return r.DeletedKey, err
		}),
		one("recover", "Recover a soft-deleted key", false, keyCols, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			r, err := kc.RecoverDeletedKey(ctx, f.name, nil)
			return r.KeyBundle, err
		}),
		one("purge", "Permanently delete a soft-deleted key", false, nil, func(ctx context.Context, kc *azkeys.Client, f *objFlags) (any, error) {
			_, err := kc.PurgeDeletedKey(ctx, f.name, nil)
			return nil, err
		}),
		objList(a, keyNoun, "list", "List keys", false, keyCols,
			func(kc *azkeys.Client, _ string) *runtime.Pager[azkeys.ListKeyPropertiesResponse] {
				return kc.NewListKeyPropertiesPager(nil)
			},
			func(p azkeys.ListKeyPropertiesResponse) []keyView { return mapViews(p.Value, viewKeyProps) }),
		objList(a, keyNoun, "list-versions", "List a key's versions", true, keyCols,
			func(kc *azkeys.Client, name string) *runtime.Pager[azkeys.ListKeyPropertiesVersionsResponse] {
				return kc.NewListKeyPropertiesVersionsPager(name, nil)
			},
			func(p azkeys.ListKeyPropertiesVersionsResponse) []keyView { return mapViews(p.Value, viewKeyProps) }),
		objList(a, keyNoun, "list-deleted", "List soft-deleted keys", false, deletedKeyCols,
			func(kc *azkeys.Client, _ string) *runtime.Pager[azkeys.ListDeletedKeyPropertiesResponse] {
				return kc.NewListDeletedKeyPropertiesPager(nil)
			},
			func(p azkeys.ListDeletedKeyPropertiesResponse) []keyView {
				return mapViews(p.Value, viewDeletedKeyProps)
			}),
		objBackup(a, keyNoun, func(ctx context.Context, kc *azkeys.Client, name string) ([]byte, error) {
			r, err := kc.BackupKey(ctx, name, nil)
			return r.Value, err
		}),
		objRestore(a, keyNoun, keyCols, func(ctx context.Context, kc *azkeys.Client, blob []byte) (keyView, error) {
			r, err := kc.RestoreKey(ctx, azkeys.RestoreKeyParameters{KeyBackup: blob}, nil)
			if err != nil {
				return keyView{}, err
			}
			return viewKey(r.KeyBundle), nil
		}),
	)
	return cmd
}

// keyAttrFlags are the attribute flags of create, import and
// set-attributes.
type keyAttrFlags struct {
	ops                []string
	tagList            []string
	expires, notBefore string
}

func (k *keyAttrFlags) bind(c *cobra.Command) {
	c.Flags().StringSliceVar(&k.ops, "ops", nil, "permitted operations: sign, verify, encrypt, decrypt, wrapKey, unwrapKey (default: all the key type allows)")
	c.Flags().StringSliceVar(&k.tagList, "tags", nil, "tags as KEY=VALUE, comma-separated or repeated")
	c.Flags().StringVar(&k.expires, "expires", "", "expiry time (RFC 3339)")
	c.Flags().StringVar(&k.notBefore, "not-before", "", "not-before time (RFC 3339)")
}

func (k *keyAttrFlags) parse(c *cobra.Command) (ops []*azkeys.KeyOperation, tg map[string]*string, at *azkeys.KeyAttributes, err error) {
	at = &azkeys.KeyAttributes{}
	if at.Expires, err = parseTime("expires", k.expires); err != nil {
		return
	}
	if at.NotBefore, err = parseTime("not-before", k.notBefore); err != nil {
		return
	}
	if c.Flags().Changed("tags") {
		if tg, err = parseTags(k.tagList); err != nil {
			return
		}
	}
	for _, op := range k.ops {
		i := slices.IndexFunc(azkeys.PossibleKeyOperationValues(), func(v azkeys.KeyOperation) bool { return strings.EqualFold(string(v), op) })
		if i < 0 {
			return nil, nil, nil, usagef("--ops %q is not one of sign, verify, encrypt, decrypt, wrapKey, unwrapKey", op)
		}
		ops = append(ops, to.Ptr(azkeys.PossibleKeyOperationValues()[i]))
	}
	return
}

func (a *app) keyCreate() *cobra.Command {
	var f objFlags
	var kf keyAttrFlags
	var kty, curve string
	var size int
	var disabled bool
	c := &cobra.Command{
		Use: "create", Short: "Create a key, or a new version of it", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ops, tg, at, err := kf.parse(c)
			if err != nil {
				return err
			}
			at.Enabled = to.Ptr(!disabled)
			p := azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyType(kty)), KeyOps: ops, Tags: tg, KeyAttributes: at}
			switch kty {
			case "RSA", "oct":
				if size != 0 {
					p.KeySize = to.Ptr(int32(size))
				}
			case "EC":
				if curve != "" {
					p.Curve = to.Ptr(azkeys.CurveName(curve))
				}
			default:
				return usagef("--kty %q is not one of RSA, EC, oct (Coffer keys are software-protected; -HSM types are not offered)", kty)
			}
			kc, err := keyNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := kc.CreateKey(c.Context(), f.name, p, nil)
			if err != nil {
				return err
			}
			return show(a, viewKey(r.KeyBundle), keyCols)
		},
	}
	f.bind(c, "key", true, false)
	kf.bind(c)
	c.Flags().StringVar(&kty, "kty", "RSA", "key type: RSA, EC or oct (AES)")
	c.Flags().IntVar(&size, "size", 0, "RSA: 2048, 3072 or 4096 (default 2048); oct: 128, 192 or 256 (default 256)")
	c.Flags().StringVar(&curve, "curve", "", "EC curve: P-256, P-256K, P-384 or P-521 (default P-256)")
	c.Flags().BoolVar(&disabled, "disabled", false, "create the version disabled")
	return c
}

// jwkFromPEM reads an unencrypted private key (PKCS#8, PKCS#1 or SEC 1)
// as the JWK an import sends.
func jwkFromPEM(data []byte) (*azkeys.JSONWebKey, error) {
	signer, err := certfmt.DecodeKey(data)
	if err != nil {
		return nil, err
	}
	m, err := keyops.FromPrivateKey(signer)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(m.PrivateJWK())
	if err != nil {
		return nil, err
	}
	var j azkeys.JSONWebKey
	return &j, json.Unmarshal(b, &j)
}

func (a *app) keyImport() *cobra.Command {
	var f objFlags
	var kf keyAttrFlags
	var pemFile string
	var disabled bool
	c := &cobra.Command{
		Use: "import", Short: "Import a private key from a PEM file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			data, err := a.readFileFlag(c, "pem-file", pemFile, 64<<10)
			if err != nil {
				return err
			}
			jwk, err := jwkFromPEM(data)
			if err != nil {
				return usagef("--pem-file %s: %v", pemFile, err)
			}
			ops, tg, at, err := kf.parse(c)
			if err != nil {
				return err
			}
			jwk.KeyOps = ops
			at.Enabled = to.Ptr(!disabled)
			kc, err := keyNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := kc.ImportKey(c.Context(), f.name, azkeys.ImportKeyParameters{Key: jwk, Tags: tg, KeyAttributes: at}, nil)
			if err != nil {
				return err
			}
			return show(a, viewKey(r.KeyBundle), keyCols)
		},
	}
	f.bind(c, "key", true, false)
	kf.bind(c)
	c.Flags().StringVar(&pemFile, "pem-file", "", "unencrypted PEM private key (- for stdin)")
	c.Flags().BoolVar(&disabled, "disabled", false, "import the version disabled")
	return c
}

func (a *app) keySetAttributes() *cobra.Command {
	var f objFlags
	var kf keyAttrFlags
	var enabled string
	c := &cobra.Command{
		Use: "set-attributes", Short: "Change a key version's attributes, permitted operations or tags", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ops, tg, at, err := kf.parse(c)
			if err != nil {
				return err
			}
			if enabled != "" {
				b, err := strconv.ParseBool(enabled)
				if err != nil {
					return usagef("--enabled %q: use true or false", enabled)
				}
				at.Enabled = &b
			}
			kc, err := keyNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := kc.UpdateKey(c.Context(), f.name, f.version, azkeys.UpdateKeyParameters{KeyOps: ops, Tags: tg, KeyAttributes: at}, nil)
			if err != nil {
				return err
			}
			return show(a, viewKey(r.KeyBundle), keyCols)
		},
	}
	f.bind(c, "key", true, true)
	kf.bind(c)
	c.Flags().StringVar(&enabled, "enabled", "", "true or false")
	return c
}

// toJWK converts the SDK's key to Coffer's JWK through their shared JSON
// form.
func toJWK(k *azkeys.JSONWebKey) (keyops.JWK, error) {
	var j keyops.JWK
	if k == nil {
		return j, fmt.Errorf("the vault returned no key")
	}
	b, err := json.Marshal(k)
	if err != nil {
		return j, err
	}
	return j, json.Unmarshal(b, &j)
}

func (a *app) keyDownload() *cobra.Command {
	var f objFlags
	var file, encoding string
	c := &cobra.Command{
		Use: "download", Short: "Write a key's public part to a new file (PEM or DER)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			if encoding != "PEM" && encoding != "DER" {
				return usagef("--encoding %q is not one of PEM, DER", encoding)
			}
			kc, err := keyNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := kc.GetKey(c.Context(), f.name, f.version, nil)
			if err != nil {
				return err
			}
			j, err := toJWK(r.Key)
			if err != nil {
				return err
			}
			out, err := keyops.PublicKeyPEM(j)
			if err != nil {
				return err
			}
			if encoding == "DER" {
				b, _ := pem.Decode(out)
				out = b.Bytes
			}
			return writeNew(file, out)
		},
	}
	f.bind(c, "key", true, true)
	c.Flags().StringVarP(&file, "file", "f", "", "file to write (must not exist)")
	c.Flags().StringVarP(&encoding, "encoding", "e", "PEM", "PEM or DER")
	return c
}
