//go:build !node

package cli

import (
	"context"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
)

const vaultAPI = "?api-version=7.6"

type issuerView struct {
	cert.Issuer
	Name string `json:"name"`
}

var issuerCols = []column[issuerView]{
	{"Name", func(v issuerView) string { return v.Name }},
	{"Provider", func(v issuerView) string { return v.Provider }},
	{"Enabled", func(v issuerView) string {
		if v.Attributes == nil || v.Attributes.Enabled == nil {
			return ""
		}
		return boolStr(v.Attributes.Enabled)
	}},
	{"DirectoryUrl", func(v issuerView) string {
		if v.ACME == nil {
			return ""
		}
		return v.ACME.DirectoryURL
	}},
}

func nameOf(id string) string { return id[strings.LastIndex(id, "/")+1:] }

// issuerFlags are create's and update's flags: az's, and Coffer's acme ones.
type issuerFlags struct {
	provider, accountID, password, orgID         string
	adminEmails                                  []string
	directory, challenge, dnsHook, dnsHookSecret string
	disabled                                     bool
}

func (f *issuerFlags) bind(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.provider, "provider-name", "", "the issuer's provider: ACME (Coffer's extension), or DigiCert, GlobalSign (stored only)")
	fl.StringVar(&f.accountID, "account-id", "", "the account at the provider; for ACME, the external account binding's key id")
	fl.StringVar(&f.password, "password", "", "the account's password; for ACME, the binding's base64url HMAC key (never shown again)")
	fl.StringVar(&f.orgID, "organization-id", "", "the organization's id at the provider")
	fl.StringSliceVar(&f.adminEmails, "admin-email", nil, "administrators' emails; for ACME, the account's contacts")
	fl.StringVar(&f.directory, "directory-url", "", "ACME: the CA's directory URL (https)")
	fl.StringVar(&f.challenge, "challenge", "", "ACME: http-01 (default) or dns-01")
	fl.StringVar(&f.dnsHook, "dns-hook-url", "", "ACME dns-01: the https hook that publishes the TXT records")
	fl.StringVar(&f.dnsHookSecret, "dns-hook-secret", "", "ACME dns-01: the secret that signs the hook's requests (never shown again)")
	fl.BoolVar(&f.disabled, "disabled", false, "create or set the issuer disabled")
}

// issuer builds the body from the flags the caller set.
func (f *issuerFlags) issuer(c *cobra.Command) cert.Issuer {
	ch := c.Flags().Changed
	var i cert.Issuer
	i.Provider = f.provider
	if ch("account-id") || ch("password") {
		i.Credentials = &cert.IssuerCredentials{AccountID: f.accountID, Password: f.password}
	}
	if ch("organization-id") || ch("admin-email") {
		i.OrgDetails = &cert.OrgDetails{ID: f.orgID}
		for _, e := range f.adminEmails {
			i.OrgDetails.AdminDetails = append(i.OrgDetails.AdminDetails, cert.AdminContact{Email: e})
		}
	}
	if ch("directory-url") || ch("challenge") || ch("dns-hook-url") || ch("dns-hook-secret") {
		i.ACME = &cert.ACMEConfig{DirectoryURL: f.directory, Challenge: f.challenge, DNSHookURL: f.dnsHook, DNSHookSecret: f.dnsHookSecret}
	}
	if ch("disabled") {
		i.Attributes = &cert.IssuerAttrs{Enabled: to.Ptr(!f.disabled)}
	}
	return i
}

// certIssuerCmd mirrors `az keyvault certificate issuer`, with Coffer's
// ACME flags. It speaks REST directly: the SDK drops the acme member.
func (a *app) certIssuerCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "issuer", Short: "Manage a vault's certificate issuers (mirrors `az keyvault certificate issuer`; ACME is Coffer's)"}
	var vaultName, name string
	var f issuerFlags
	verb := func(use, short string, withName bool, run func(c *cobra.Command) (any, error)) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs, RunE: func(c *cobra.Command, _ []string) error {
			required := []string{"vault-name"}
			if withName {
				required = append(required, "issuer-name")
			}
			if err := requireFlags(c, required...); err != nil {
				return err
			}
			out, err := run(c)
			switch v := out.(type) {
			case nil:
			case issuerView:
				return render(a.stdout, a.output, v, []issuerView{v}, issuerCols)
			case []issuerView:
				return showAll(a, v, issuerCols)
			}
			return err
		}}
		c.Flags().StringVar(&vaultName, "vault-name", "", "name of the vault")
		if withName {
			c.Flags().StringVar(&name, "issuer-name", "", "name of the issuer")
		}
		return c
	}
	one := func(c *cobra.Command, method string, in any) (any, error) {
		cl, err := a.client()
		if err != nil {
			return nil, err
		}
		var out cert.Issuer
		if err := cl.Vault(c.Context(), vaultName, method, "/certificates/issuers/"+url.PathEscape(name)+vaultAPI, in, &out); err != nil {
			return nil, err
		}
		return issuerView{Issuer: out, Name: name}, nil
	}
	create := verb("create", "Create or replace an issuer", true, func(c *cobra.Command) (any, error) {
		if err := requireFlags(c, "provider-name"); err != nil {
			return nil, err
		}
		return one(c, "PUT", f.issuer(c))
	})
	f.bind(create)
	var uf issuerFlags
	update := verb("update", "Change the issuer's settings given", true, func(c *cobra.Command) (any, error) {
		return one(c, "PATCH", uf.issuer(c))
	})
	uf.bind(update)
	show := verb("show", "Show an issuer (never its password)", true, func(c *cobra.Command) (any, error) { return one(c, "GET", nil) })
	del := verb("delete", "Delete an issuer", true, func(c *cobra.Command) (any, error) { return one(c, "DELETE", nil) })
	list := verb("list", "List a vault's issuers", false, func(c *cobra.Command) (any, error) {
		cc, err := a.certsClient(vaultName)
		if err != nil {
			return nil, err
		}
		out := []issuerView{}
		for p := cc.NewListIssuerPropertiesPager(nil); p.More(); {
			page, err := p.NextPage(c.Context())
			if err != nil {
				return nil, err
			}
			for _, it := range page.Value {
				out = append(out, issuerView{Name: nameOf(deref(it.ID)), Issuer: cert.Issuer{Provider: deref(it.Provider)}})
			}
		}
		return out, nil
	})
	cmd.AddCommand(create, update, show, del, list)
	return cmd
}

func (a *app) certsClient(vaultName string) (*azcertificates.Client, error) {
	cl, err := a.client()
	if err != nil {
		return nil, err
	}
	return cl.Certificates(vaultName)
}

type contactView struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
	Phone string `json:"phone,omitempty"`
}

var contactCols = []column[contactView]{
	{"Email", func(v contactView) string { return v.Email }},
	{"Name", func(v contactView) string { return v.Name }},
	{"Phone", func(v contactView) string { return v.Phone }},
}

func contactViews(cs []*azcertificates.Contact) []contactView {
	out := []contactView{}
	for _, c := range cs {
		out = append(out, contactView{Email: deref(c.Email), Name: deref(c.Name), Phone: deref(c.Phone)})
	}
	return out
}

// certContactCmd mirrors `az keyvault certificate contact`: add and
// delete change the list one contact at a time.
func (a *app) certContactCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "contact", Short: "Manage a vault's certificate contacts (mirrors `az keyvault certificate contact`)"}
	var vaultName, email, cname, phone string
	verb := func(use, short string, withEmail bool, run func(ctx context.Context, cc *azcertificates.Client) ([]*azcertificates.Contact, error)) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs, RunE: func(c *cobra.Command, _ []string) error {
			required := []string{"vault-name"}
			if withEmail {
				required = append(required, "email")
			}
			if err := requireFlags(c, required...); err != nil {
				return err
			}
			cc, err := a.certsClient(vaultName)
			if err != nil {
				return err
			}
			cs, err := run(c.Context(), cc)
			if err != nil {
				return err
			}
			return showAll(a, contactViews(cs), contactCols)
		}}
		c.Flags().StringVar(&vaultName, "vault-name", "", "name of the vault")
		if withEmail {
			c.Flags().StringVar(&email, "email", "", "the contact's email")
		}
		return c
	}
	current := func(ctx context.Context, cc *azcertificates.Client) ([]*azcertificates.Contact, error) {
		r, err := cc.GetContacts(ctx, nil)
		return r.ContactList, err
	}
	set := func(ctx context.Context, cc *azcertificates.Client, cs []*azcertificates.Contact) ([]*azcertificates.Contact, error) {
		if len(cs) == 0 {
			_, err := cc.DeleteContacts(ctx, nil)
			return nil, err
		}
		r, err := cc.SetContacts(ctx, azcertificates.Contacts{ContactList: cs}, nil)
		return r.ContactList, err
	}
	add := verb("add", "Add a contact", true, func(ctx context.Context, cc *azcertificates.Client) ([]*azcertificates.Contact, error) {
		cs, err := current(ctx, cc)
		if err != nil {
			return nil, err
		}
		c := &azcertificates.Contact{Email: to.Ptr(email)}
		if cname != "" {
			c.Name = to.Ptr(cname)
		}
		if phone != "" {
			c.Phone = to.Ptr(phone)
		}
		return set(ctx, cc, append(cs, c))
	})
	add.Flags().StringVar(&cname, "name", "", "the contact's name")
	add.Flags().StringVar(&phone, "phone", "", "the contact's phone number")
	del := verb("delete", "Remove the contact with an email", true, func(ctx context.Context, cc *azcertificates.Client) ([]*azcertificates.Contact, error) {
		cs, err := current(ctx, cc)
		if err != nil {
			return nil, err
		}
		var keep []*azcertificates.Contact
		for _, c := range cs {
			if !strings.EqualFold(deref(c.Email), email) {
				keep = append(keep, c)
			}
		}
		if len(keep) == len(cs) {
			return nil, usagef("vault %s has no contact %s", vaultName, email)
		}
		return set(ctx, cc, keep)
	})
	list := verb("list", "List the contacts", false, current)
	cmd.AddCommand(add, del, list)
	return cmd
}
