//go:build !node

package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/spf13/cobra"
)

// certView mirrors `az keyvault certificate show`.
type certView struct {
	Attributes         attrView          `json:"attributes"`
	CER                *string           `json:"cer"`
	ContentType        *string           `json:"contentType"`
	ID                 string            `json:"id"`
	KID                *string           `json:"kid"`
	Name               string            `json:"name"`
	Policy             any               `json:"policy"`
	SID                *string           `json:"sid"`
	Tags               map[string]string `json:"tags"`
	X509ThumbprintHex  string            `json:"x509ThumbprintHex"`
	RecoveryID         *string           `json:"recoveryId,omitempty"`
	DeletedDate        *string           `json:"deletedDate,omitempty"`
	ScheduledPurgeDate *string           `json:"scheduledPurgeDate,omitempty"`
	version            string
}

func certAttrs(a *azcertificates.CertificateAttributes) attrView {
	if a == nil {
		return attrView{}
	}
	return attrView{Created: ts(a.Created), Enabled: a.Enabled, Expires: ts(a.Expires), NotBefore: ts(a.NotBefore),
		RecoverableDays: a.RecoverableDays, RecoveryLevel: a.RecoveryLevel, Updated: ts(a.Updated)}
}

func idStr(id *azcertificates.ID) *string {
	if id == nil {
		return nil
	}
	return to.Ptr(string(*id))
}

func viewCert(c azcertificates.Certificate) certView {
	id, name, version := idParts(c.ID)
	v := certView{Attributes: certAttrs(c.Attributes), ContentType: c.ContentType, ID: id, KID: idStr(c.KID), SID: idStr(c.SID),
		Name: name, Policy: azPolicy(c.Policy), Tags: tags(c.Tags), X509ThumbprintHex: strings.ToUpper(hex.EncodeToString(c.X509Thumbprint)), version: version}
	if len(c.CER) > 0 {
		v.CER = to.Ptr(base64.StdEncoding.EncodeToString(c.CER))
	}
	return v
}

func viewCertProps(c *azcertificates.CertificateProperties) certView {
	id, name, version := idParts(c.ID)
	return certView{Attributes: certAttrs(c.Attributes), ID: id, Name: name, Tags: tags(c.Tags),
		X509ThumbprintHex: strings.ToUpper(hex.EncodeToString(c.X509Thumbprint)), version: version}
}

func viewDeletedCert(c azcertificates.DeletedCertificate) certView {
	v := viewCert(azcertificates.Certificate{Attributes: c.Attributes, CER: c.CER, ContentType: c.ContentType, ID: c.ID, KID: c.KID, SID: c.SID, Policy: c.Policy, Tags: c.Tags, X509Thumbprint: c.X509Thumbprint})
	v.RecoveryID, v.DeletedDate, v.ScheduledPurgeDate = c.RecoveryID, ts(c.DeletedDate), ts(c.ScheduledPurgeDate)
	return v
}

func viewDeletedCertProps(c *azcertificates.DeletedCertificateProperties) certView {
	v := viewCertProps(&azcertificates.CertificateProperties{Attributes: c.Attributes, ID: c.ID, Tags: c.Tags, X509Thumbprint: c.X509Thumbprint})
	v.RecoveryID, v.DeletedDate, v.ScheduledPurgeDate = c.RecoveryID, ts(c.DeletedDate), ts(c.ScheduledPurgeDate)
	return v
}

var certCols = []column[certView]{
	{"Name", func(c certView) string { return c.Name }},
	{"Version", func(c certView) string { return c.version }},
	{"Enabled", func(c certView) string { return boolStr(c.Attributes.Enabled) }},
	{"Expires", func(c certView) string { return str(c.Attributes.Expires) }},
	{"Thumbprint", func(c certView) string { return c.X509ThumbprintHex }},
}

var deletedCertCols = []column[certView]{
	{"Name", func(c certView) string { return c.Name }},
	{"DeletedDate", func(c certView) string { return str(c.DeletedDate) }},
	{"ScheduledPurgeDate", func(c certView) string { return str(c.ScheduledPurgeDate) }},
	{"RecoveryId", func(c certView) string { return str(c.RecoveryID) }},
}

// opView is a certificate operation.
type opView struct {
	ID                    string  `json:"id"`
	Status                string  `json:"status"`
	StatusDetails         *string `json:"statusDetails"`
	CancellationRequested bool    `json:"cancellationRequested"`
	CSR                   *string `json:"csr"`
	Error                 *string `json:"error"`
	Target                *string `json:"target"`
}

func viewOp(o azcertificates.CertificateOperation) opView {
	v := opView{ID: deref(o.ID), Status: str(o.Status), StatusDetails: o.StatusDetails, CancellationRequested: o.CancellationRequested != nil && *o.CancellationRequested, Target: o.Target}
	if len(o.CSR) > 0 {
		v.CSR = to.Ptr(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: o.CSR})))
	}
	if o.Error != nil {
		v.Error = to.Ptr(o.Error.Error())
	}
	return v
}

var opCols = []column[opView]{
	{"Status", func(o opView) string { return o.Status }},
	{"StatusDetails", func(o opView) string { return str(o.StatusDetails) }},
	{"Error", func(o opView) string { return str(o.Error) }},
}

// defaultPolicy is what `az keyvault certificate get-default-policy`
// prints, in az's camelCase form.
const defaultPolicy = `{
  "issuerParameters": {"name": "Self"},
  "keyProperties": {"exportable": true, "keySize": 2048, "keyType": "RSA", "reuseKey": true},
  "lifetimeActions": [{"action": {"actionType": "AutoRenew"}, "trigger": {"daysBeforeExpiry": 90}}],
  "secretProperties": {"contentType": "application/x-pkcs12"},
  "x509CertificateProperties": {
    "ekus": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
    "keyUsage": ["cRLSign", "dataEncipherment", "digitalSignature", "keyEncipherment", "keyAgreement", "keyCertSign"],
    "subject": "CN=CLIGetDefaultPolicy",
    "validityInMonths": 12
  }
}
`

// azNames maps az's camelCase policy members to the REST names.
var azNames = map[string]string{
	"issuerParameters": "issuer", "keyProperties": "key_props", "secretProperties": "secret_props", "x509CertificateProperties": "x509_props",
	"lifetimeActions": "lifetime_actions", "keySize": "key_size", "keyType": "kty", "reuseKey": "reuse_key", "curve": "crv",
	"subjectAlternativeNames": "sans", "dnsNames": "dns_names", "keyUsage": "key_usage", "validityInMonths": "validity_months",
	"actionType": "action_type", "daysBeforeExpiry": "days_before_expiry", "lifetimePercentage": "lifetime_percentage",
	"certificateType": "cty", "certificateTransparency": "cert_transparency", "userPrincipalNames": "upns",
}

// restNames is azNames reversed.
var restNames = func() map[string]string {
	m := make(map[string]string, len(azNames))
	for az, rest := range azNames {
		m[rest] = az
	}
	return m
}()

func renameMembers(v any, names map[string]string) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			if n, ok := names[k]; ok {
				k = n
			}
			out[k] = renameMembers(val, names)
		}
		return out
	case []any:
		for i := range t {
			t[i] = renameMembers(t[i], names)
		}
	}
	return v
}

// azPolicy is a policy in az's camelCase form, for output.
func azPolicy(p *azcertificates.CertificatePolicy) any {
	if p == nil {
		return nil
	}
	b, _ := json.Marshal(p)
	var raw any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	dec.Decode(&raw)
	return renameMembers(raw, restNames)
}

// parsePolicy reads a policy given inline or as @file, in the REST form
// or in az's camelCase form (what get-default-policy prints).
func (a *app) parsePolicy(arg string) (*azcertificates.CertificatePolicy, error) {
	data := []byte(arg)
	if name, ok := strings.CutPrefix(arg, "@"); ok {
		var err error
		if data, err = readInput(a.stdin, name, 64<<10); err != nil {
			return nil, err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return nil, usagef("--policy is not JSON: %v", err)
	}
	if _, ok := raw.(map[string]any); !ok {
		return nil, usagef("--policy must be a JSON object")
	}
	b, _ := json.Marshal(renameMembers(raw, azNames))
	var p azcertificates.CertificatePolicy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, usagef("--policy does not parse as a certificate policy: %v", err)
	}
	return &p, nil
}

func (a *app) certificateCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "certificate", Short: "Manage certificates in a vault (mirrors `az keyvault certificate`)"}
	one := func(use, short string, withVersion bool, cols []column[certView], fn func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error)) *cobra.Command {
		return objVerb(a, certNoun, use, short, withVersion, cols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (*certView, error) {
			out, err := fn(ctx, cc, f)
			if err != nil || out == nil {
				return nil, err
			}
			var v certView
			switch r := out.(type) {
			case azcertificates.Certificate:
				v = viewCert(r)
			case azcertificates.DeletedCertificate:
				v = viewDeletedCert(r)
			}
			return &v, nil
		})
	}
	getDefault := &cobra.Command{
		Use: "get-default-policy", Short: "Print a default policy to edit and pass to create --policy", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(a.stdout, defaultPolicy)
			return err
		},
	}
	cmd.AddCommand(
		getDefault, a.certCreate(), a.certImport(), a.certDownload(), a.certSetAttributes(), a.certPendingCmd(), a.certIssuerCmd(), a.certContactCmd(),
		one("show", "Show a certificate with its policy", true, certCols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error) {
			r, err := cc.GetCertificate(ctx, f.name, f.version, nil)
			return r.Certificate, err
		}),
		one("delete", "Soft-delete a certificate with its key and secret", false, deletedCertCols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error) {
			r, err := cc.DeleteCertificate(ctx, f.name, nil)
			return r.DeletedCertificate, err
		}),
		one("show-deleted", "Show a soft-deleted certificate", false, deletedCertCols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error) {
			r, err := cc.GetDeletedCertificate(ctx, f.name, nil)
			return r.DeletedCertificate, err
		}),
		one("recover", "Recover a soft-deleted certificate", false, certCols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error) {
			r, err := cc.RecoverDeletedCertificate(ctx, f.name, nil)
			return r.Certificate, err
		}),
		one("purge", "Permanently delete a soft-deleted certificate", false, nil, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (any, error) {
			_, err := cc.PurgeDeletedCertificate(ctx, f.name, nil)
			return nil, err
		}),
		objList(a, certNoun, "list", "List certificates", false, certCols,
			func(cc *azcertificates.Client, _ string) *runtime.Pager[azcertificates.ListCertificatePropertiesResponse] {
				return cc.NewListCertificatePropertiesPager(nil)
			},
			func(p azcertificates.ListCertificatePropertiesResponse) []certView {
				return mapViews(p.Value, viewCertProps)
			}),
		objList(a, certNoun, "list-versions", "List a certificate's versions", true, certCols,
			func(cc *azcertificates.Client, name string) *runtime.Pager[azcertificates.ListCertificatePropertiesVersionsResponse] {
				return cc.NewListCertificatePropertiesVersionsPager(name, nil)
			},
			func(p azcertificates.ListCertificatePropertiesVersionsResponse) []certView {
				return mapViews(p.Value, viewCertProps)
			}),
		objList(a, certNoun, "list-deleted", "List soft-deleted certificates", false, deletedCertCols,
			func(cc *azcertificates.Client, _ string) *runtime.Pager[azcertificates.ListDeletedCertificatePropertiesResponse] {
				return cc.NewListDeletedCertificatePropertiesPager(nil)
			},
			func(p azcertificates.ListDeletedCertificatePropertiesResponse) []certView {
				return mapViews(p.Value, viewDeletedCertProps)
			}),
		objBackup(a, certNoun, func(ctx context.Context, cc *azcertificates.Client, name string) ([]byte, error) {
			r, err := cc.BackupCertificate(ctx, name, nil)
			return r.Value, err
		}),
		objRestore(a, certNoun, certCols, func(ctx context.Context, cc *azcertificates.Client, blob []byte) (certView, error) {
			r, err := cc.RestoreCertificate(ctx, azcertificates.RestoreCertificateParameters{CertificateBackup: blob}, nil)
			if err != nil {
				return certView{}, err
			}
			return viewCert(r.Certificate), nil
		}),
	)
	return cmd
}

// await polls a certificate's operation until it leaves inProgress, as
// `az keyvault certificate create` does. Issuer Unknown stays in progress
// until a merge, so it returns once the CSR is ready.
func await(ctx context.Context, cc *azcertificates.Client, name string) (azcertificates.CertificateOperation, error) {
	for delay := 50 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		r, err := cc.GetCertificateOperation(ctx, name, nil)
		if err != nil {
			return r.CertificateOperation, err
		}
		if str(r.Status) != "inProgress" || len(r.CSR) > 0 {
			return r.CertificateOperation, nil
		}
		select {
		case <-ctx.Done():
			return r.CertificateOperation, ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (a *app) certCreate() *cobra.Command {
	var f objFlags
	var policy string
	var tagList []string
	var disabled, noWait bool
	c := &cobra.Command{
		Use:   "create",
		Short: "Create a certificate, or a new version of it, from a policy",
		Long:  "Create a certificate, or a new version of it, from a policy (inline JSON or @file; see get-default-policy). It waits for issuance unless --no-wait.",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "policy"); err != nil {
				return err
			}
			p, err := a.parsePolicy(policy)
			if err != nil {
				return err
			}
			tg, err := parseTags(tagList)
			if err != nil {
				return err
			}
			cc, err := certNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			params := azcertificates.CreateCertificateParameters{CertificatePolicy: p, Tags: tg,
				CertificateAttributes: &azcertificates.CertificateAttributes{Enabled: to.Ptr(!disabled)}}
			op, err := cc.CreateCertificate(c.Context(), f.name, params, nil)
			if err != nil {
				return err
			}
			if !noWait {
				if op.CertificateOperation, err = await(c.Context(), cc, f.name); err != nil {
					return err
				}
			}
			switch str(op.Status) {
			case "completed":
				r, err := cc.GetCertificate(c.Context(), f.name, "", nil)
				if err != nil {
					return err
				}
				return show(a, viewCert(r.Certificate), certCols)
			case "failed", "cancelled":
				v := viewOp(op.CertificateOperation)
				return fmt.Errorf("certificate %s was not issued: %s %s", f.name, v.Status, str(v.Error))
			}
			return show(a, viewOp(op.CertificateOperation), opCols)
		},
	}
	f.bind(c, "certificate", true, false)
	c.Flags().StringVarP(&policy, "policy", "p", "", "policy JSON, or @file (- for stdin: @-)")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE, comma-separated or repeated")
	c.Flags().BoolVar(&disabled, "disabled", false, "create the version disabled")
	c.Flags().BoolVar(&noWait, "no-wait", false, "return the pending operation without waiting")
	return c
}

func (a *app) certImport() *cobra.Command {
	var f objFlags
	var file, password, policy string
	var tagList []string
	var disabled bool
	c := &cobra.Command{
		Use: "import", Short: "Import a certificate with its private key, from a PFX or PEM file", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			data, err := a.readFileFlag(c, "file", file, 128<<10)
			if err != nil {
				return err
			}
			value := base64.StdEncoding.EncodeToString(data)
			if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
				value = string(data)
			}
			params := azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &value,
				CertificateAttributes: &azcertificates.CertificateAttributes{Enabled: to.Ptr(!disabled)}}
			if c.Flags().Changed("password") {
				params.Password = &password
			}
			if policy != "" {
				if params.CertificatePolicy, err = a.parsePolicy(policy); err != nil {
					return err
				}
			}
			if params.Tags, err = parseTags(tagList); err != nil {
				return err
			}
			cc, err := certNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := cc.ImportCertificate(c.Context(), f.name, params, nil)
			if err != nil {
				return err
			}
			return show(a, viewCert(r.Certificate), certCols)
		},
	}
	f.bind(c, "certificate", true, false)
	c.Flags().StringVarP(&file, "file", "f", "", "PFX (PKCS#12) or PEM file with the private key and chain (- for stdin)")
	c.Flags().StringVar(&password, "password", "", "the PFX's password")
	c.Flags().StringVarP(&policy, "policy", "p", "", "policy JSON or @file; only secret_props.contentType is used")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE, comma-separated or repeated")
	c.Flags().BoolVar(&disabled, "disabled", false, "import the version disabled")
	return c
}

func (a *app) certDownload() *cobra.Command {
	var f objFlags
	var file, encoding string
	c := &cobra.Command{
		Use:   "download",
		Short: "Write a certificate's public part (no private key) to a new file, PEM or DER",
		Long:  "Write a certificate's public part to a new file, PEM or DER. For the private key too, download its secret: coffer secret download --encoding base64 (PFX).",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "file"); err != nil {
				return err
			}
			if encoding != "PEM" && encoding != "DER" {
				return usagef("--encoding %q is not one of PEM, DER", encoding)
			}
			cc, err := certNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := cc.GetCertificate(c.Context(), f.name, f.version, nil)
			if err != nil {
				return err
			}
			data := r.CER
			if encoding == "PEM" {
				data = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.CER})
			}
			return writeNew(file, data)
		},
	}
	f.bind(c, "certificate", true, true)
	c.Flags().StringVarP(&file, "file", "f", "", "file to write (must not exist)")
	c.Flags().StringVarP(&encoding, "encoding", "e", "PEM", "PEM or DER")
	return c
}

func (a *app) certSetAttributes() *cobra.Command {
	var f objFlags
	var enabled string
	var tagList []string
	c := &cobra.Command{
		Use: "set-attributes", Short: "Enable or disable a certificate version (with its key and secret), or change its tags", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			p := azcertificates.UpdateCertificateParameters{CertificateAttributes: &azcertificates.CertificateAttributes{}}
			if enabled != "" {
				b, err := strconv.ParseBool(enabled)
				if err != nil {
					return usagef("--enabled %q: use true or false", enabled)
				}
				p.CertificateAttributes.Enabled = &b
			}
			if c.Flags().Changed("tags") {
				var err error
				if p.Tags, err = parseTags(tagList); err != nil {
					return err
				}
			}
			cc, err := certNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := cc.UpdateCertificate(c.Context(), f.name, f.version, p, nil)
			if err != nil {
				return err
			}
			return show(a, viewCert(r.Certificate), certCols)
		},
	}
	f.bind(c, "certificate", true, true)
	c.Flags().StringVar(&enabled, "enabled", "", "true or false")
	c.Flags().StringSliceVar(&tagList, "tags", nil, "tags as KEY=VALUE (replaces all tags)")
	return c
}

// readChain reads certificates from PEM or DER (a single certificate).
func readChain(data []byte) ([][]byte, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		return [][]byte{data}, nil
	}
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, b.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no CERTIFICATE block in the file")
	}
	return out, nil
}

func (a *app) certPendingCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "pending", Short: "Show, merge or delete a certificate's pending operation"}
	op := func(use, short string, fn func(ctx context.Context, cc *azcertificates.Client, name string) (azcertificates.CertificateOperation, error)) *cobra.Command {
		return objVerb(a, certNoun, use, short, false, opCols, func(ctx context.Context, cc *azcertificates.Client, f *objFlags) (*opView, error) {
			o, err := fn(ctx, cc, f.name)
			if err != nil {
				return nil, err
			}
			v := viewOp(o)
			return &v, nil
		})
	}
	var f objFlags
	var file string
	merge := &cobra.Command{
		Use: "merge", Short: "Complete a pending certificate (issuer Unknown) with its signed certificate and chain", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			data, err := a.readFileFlag(c, "file", file, 128<<10)
			if err != nil {
				return err
			}
			chain, err := readChain(data)
			if err != nil {
				return usagef("--file %s: %v", file, err)
			}
			cc, err := certNoun.client(a, c, &f, "name")
			if err != nil {
				return err
			}
			r, err := cc.MergeCertificate(c.Context(), f.name, azcertificates.MergeCertificateParameters{X509Certificates: chain}, nil)
			if err != nil {
				return err
			}
			return show(a, viewCert(r.Certificate), certCols)
		},
	}
	f.bind(merge, "certificate", true, false)
	merge.Flags().StringVarP(&file, "file", "f", "", "the signed certificate, and its chain, PEM or DER")
	cmd.AddCommand(merge,
		op("show", "Show a certificate's operation (with its CSR, for issuer Unknown)", func(ctx context.Context, cc *azcertificates.Client, name string) (azcertificates.CertificateOperation, error) {
			r, err := cc.GetCertificateOperation(ctx, name, nil)
			return r.CertificateOperation, err
		}),
		op("cancel", "Cancel a certificate's operation in progress", func(ctx context.Context, cc *azcertificates.Client, name string) (azcertificates.CertificateOperation, error) {
			r, err := cc.UpdateCertificateOperation(ctx, name, azcertificates.UpdateCertificateOperationParameter{CancellationRequested: to.Ptr(true)}, nil)
			return r.CertificateOperation, err
		}),
		op("delete", "Delete a certificate's operation", func(ctx context.Context, cc *azcertificates.Client, name string) (azcertificates.CertificateOperation, error) {
			r, err := cc.DeleteCertificateOperation(ctx, name, nil)
			return r.CertificateOperation, err
		}),
	)
	return cmd
}
