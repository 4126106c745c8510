//go:build !node

package cli

import (
	"strconv"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/throttle"
	"github.com/spf13/cobra"
)

var vaultCols = []column[mgmthttp.VaultOut]{
	{"Name", func(v mgmthttp.VaultOut) string { return v.Name }},
	{"VaultUri", func(v mgmthttp.VaultOut) string { return v.VaultURI }},
	{"Tenant", func(v mgmthttp.VaultOut) string { return v.TenantID }},
	{"RetentionDays", func(v mgmthttp.VaultOut) string { return strconv.Itoa(v.RetentionDays) }},
	{"PurgeProtection", func(v mgmthttp.VaultOut) string { return strconv.FormatBool(v.PurgeProtection) }},
}

func (a *app) vaultCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vault", Short: "Manage vaults (mirrors `az keyvault`)"}
	var in mgmthttp.CreateVaultIn
	create := &cobra.Command{
		Use: "create", Short: "Create a vault; you get an access policy with every permission", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.VaultOut
			if err := cl.Manage(c.Context(), "POST", "vaults", in, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.VaultOut{out}, vaultCols)
		},
	}
	create.Flags().StringVarP(&in.Name, "name", "n", "", "vault name: 3-24 letters, digits and hyphens, starting with a letter")
	create.Flags().IntVar(&in.RetentionDays, "retention-days", 90, "soft-delete retention in days (7-90)")
	create.Flags().BoolVar(&in.PurgeProtection, "enable-purge-protection", false, "forbid purging deleted objects before their retention ends")
	create.Flags().BoolVar(&in.EnforceValidity, "enforce-secret-validity", false, "refuse to return secret values outside their nbf/exp window (Azure only advises)")
	create.Flags().StringVarP(&in.ResourceGroup, "resource-group", "g", "", "resource group (default: default)")
	create.Flags().BoolVar(&in.RBAC, "enable-rbac-authorization", false, "authorize data access with role assignments instead of access policies")

	list := manageList(a, "List vaults", "vaults", vaultCols)
	var showName string
	show := &cobra.Command{
		Use: "show", Short: "Show a vault", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.VaultOut
			if err := cl.Manage(c.Context(), "GET", "vaults/"+showName, nil, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.VaultOut{out}, vaultCols)
		},
	}
	show.Flags().StringVarP(&showName, "name", "n", "", "vault name")
	var updateName, limits string
	update := &cobra.Command{
		Use: "update", Short: "Change a vault's settings", Args: cobra.NoArgs,
		Long: `Change a vault's settings. --throttle sets its static limits (429 Throttled
with Retry-After): keyvault copies Key Vault's published limits (4,000
transactions and 20 key creations per 10 seconds, larger RSA keys weighted);
off removes them; requests=N,key-creates=N,per-principal=N sets them (per 10
seconds), after a preset if given (keyvault,per-principal=500). Overload
protection applies either way.`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			var in mgmthttp.UpdateVaultIn
			if c.Flags().Changed("throttle") {
				if _, err := throttle.Parse(limits); err != nil {
					return usagef("--throttle: %v", err)
				}
				in.Throttle = &limits
			} else {
				return usagef("nothing to change: give --throttle")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.VaultOut
			if err := cl.Manage(c.Context(), "PATCH", "vaults/"+updateName, in, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.VaultOut{out}, vaultCols)
		},
	}
	update.Flags().StringVarP(&updateName, "name", "n", "", "vault name")
	update.Flags().StringVar(&limits, "throttle", "", "static limits: keyvault, off, or requests=N,key-creates=N,per-principal=N (per 10 seconds)")
	cmd.AddCommand(create, list, show, update, a.policyCmd("set-policy", false), a.policyCmd("delete-policy", true), a.eventSubCmd())
	return cmd
}

// policyCmd builds `vault set-policy` and `vault delete-policy`.
func (a *app) policyCmd(use string, remove bool) *cobra.Command {
	var name string
	var in mgmthttp.PolicyIn
	var secrets, keys, certs []string
	short := "Grant a principal permissions on a vault (access-policy vaults); the kinds given replace its lists"
	if remove {
		short = "Remove a principal's access policy from a vault"
	}
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			if (in.ObjectID == "") == (in.Spn == "") {
				return usagef("give exactly one of --object-id and --spn")
			}
			if !remove {
				for flag, dst := range map[string]**[]string{"secret-permissions": &in.Secrets, "key-permissions": &in.Keys, "certificate-permissions": &in.Certificates} {
					if c.Flags().Changed(flag) {
						v := map[string][]string{"secret-permissions": secrets, "key-permissions": keys, "certificate-permissions": certs}[flag]
						*dst = &v
					}
				}
				if in.Secrets == nil && in.Keys == nil && in.Certificates == nil {
					return usagef("give at least one of --secret-permissions, --key-permissions, --certificate-permissions")
				}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.VaultOut
			if err := cl.Manage(c.Context(), "POST", "vaults/"+name+"/"+use, in, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.VaultOut{out}, vaultCols)
		},
	}
	c.Flags().StringVarP(&name, "name", "n", "", "vault name")
	c.Flags().StringVar(&in.ObjectID, "object-id", "", "object id of the principal")
	c.Flags().StringVar(&in.Spn, "spn", "", "client (app) id or display name of the service principal or identity")
	if !remove {
		c.Flags().StringSliceVar(&secrets, "secret-permissions", nil, "secret permissions: get, list, set, delete, backup, restore, recover, purge, all")
		c.Flags().StringSliceVar(&keys, "key-permissions", nil, "key permissions (Azure's names), or all")
		c.Flags().StringSliceVar(&certs, "certificate-permissions", nil, "certificate permissions (Azure's names), or all")
	}
	return c
}

var spCols = []column[mgmthttp.SPOut]{
	{"DisplayName", func(s mgmthttp.SPOut) string { return s.DisplayName }},
	{"AppId", func(s mgmthttp.SPOut) string { return s.AppID }},
	{"ObjectId", func(s mgmthttp.SPOut) string { return s.ObjectID }},
	{"Tenant", func(s mgmthttp.SPOut) string { return s.Tenant }},
	{"Password", func(s mgmthttp.SPOut) string { return s.Password }},
}

// postSP posts in to path, after reading certFile (if given) into *pem,
// and prints the service principal the server answers with.
func (a *app) postSP(c *cobra.Command, path, certFile string, pem *string, in any) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	if certFile != "" {
		b, err := readInput(a.stdin, certFile, maxInputFile)
		if err != nil {
			return err
		}
		*pem = string(b)
	}
	var out mgmthttp.SPOut
	if err := cl.Manage(c.Context(), "POST", path, in, &out); err != nil {
		return err
	}
	return render(a.stdout, a.output, out, []mgmthttp.SPOut{out}, spCols)
}

func (a *app) spCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sp", Short: "Manage service principals (mirrors `az ad sp`)"}
	var name, certFile string
	create := &cobra.Command{
		Use: "create", Short: "Create a service principal and print its client id and secret (shown once)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			in := mgmthttp.CreateSPIn{DisplayName: name}
			return a.postSP(c, "service-principals", certFile, &in.CertificatePEM, &in)
		},
	}
	create.Flags().StringVarP(&name, "name", "n", "", "display name")
	create.Flags().StringVar(&certFile, "cert-file", "", "also register this PEM certificate as a credential")
	list := manageList(a, "List service principals", "service-principals", spCols)
	cred := &cobra.Command{Use: "credential", Short: "Manage a service principal's credentials"}
	var id, resetCert string
	var appendCred bool
	reset := &cobra.Command{
		Use: "reset", Short: "Replace (or with --append, add) a service principal's client secret, or with --cert-file its certificate", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "id"); err != nil {
				return err
			}
			in := mgmthttp.CredentialsIn{Append: appendCred}
			return a.postSP(c, "service-principals/"+id+"/credentials", resetCert, &in.CertificatePEM, &in)
		},
	}
	reset.Flags().StringVar(&id, "id", "", "the application (client) id")
	reset.Flags().StringVar(&resetCert, "cert-file", "", "register this PEM certificate instead of issuing a secret")
	reset.Flags().BoolVar(&appendCred, "append", false, "keep the existing credentials of that kind")
	cred.AddCommand(reset)
	cmd.AddCommand(create, list, cred)
	return cmd
}

// manageList builds a `list` verb over a management collection.
func manageList[T any](a *app, short, path string, cols []column[T]) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out struct {
				Value []T `json:"value"`
			}
			if err := cl.Manage(c.Context(), "GET", path, nil, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out.Value, out.Value, cols)
		},
	}
}
