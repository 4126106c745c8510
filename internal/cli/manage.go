package cli

import (
	"strconv"

	"github.com/cofferhq/coffer/internal/mgmthttp"
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
	cmd.AddCommand(create, list, show)
	return cmd
}

var spCols = []column[mgmthttp.SPOut]{
	{"DisplayName", func(s mgmthttp.SPOut) string { return s.DisplayName }},
	{"AppId", func(s mgmthttp.SPOut) string { return s.AppID }},
	{"ObjectId", func(s mgmthttp.SPOut) string { return s.ObjectID }},
	{"Tenant", func(s mgmthttp.SPOut) string { return s.Tenant }},
	{"Password", func(s mgmthttp.SPOut) string { return s.Password }},
}

func (a *app) spCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sp", Short: "Manage service principals (mirrors `az ad sp`)"}
	var name string
	create := &cobra.Command{
		Use: "create", Short: "Create a service principal and print its client id and secret (shown once)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.SPOut
			if err := cl.Manage(c.Context(), "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.SPOut{out}, spCols)
		},
	}
	create.Flags().StringVarP(&name, "name", "n", "", "display name")
	list := manageList(a, "List service principals", "service-principals", spCols)
	cred := &cobra.Command{Use: "credential", Short: "Manage a service principal's credentials"}
	var id string
	reset := &cobra.Command{
		Use: "reset", Short: "Replace a service principal's client secrets with a new one", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "id"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.SPOut
			if err := cl.Manage(c.Context(), "POST", "service-principals/"+id+"/reset-secret", nil, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.SPOut{out}, spCols)
		},
	}
	reset.Flags().StringVar(&id, "id", "", "the application (client) id")
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
