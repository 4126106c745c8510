//go:build !node

package cli

import (
	"strings"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/spf13/cobra"
)

var identityCols = []column[mgmthttp.IdentityOut]{
	{"Name", func(i mgmthttp.IdentityOut) string { return i.Name }},
	{"ResourceGroup", func(i mgmthttp.IdentityOut) string { return i.ResourceGroup }},
	{"ClientId", func(i mgmthttp.IdentityOut) string { return i.ClientID }},
	{"PrincipalId", func(i mgmthttp.IdentityOut) string { return i.PrincipalID }},
	{"Id", func(i mgmthttp.IdentityOut) string { return i.ID }},
}

var federatedCols = []column[mgmthttp.FederatedOut]{
	{"Name", func(f mgmthttp.FederatedOut) string { return f.Name }},
	{"Issuer", func(f mgmthttp.FederatedOut) string { return f.Issuer }},
	{"Subject", func(f mgmthttp.FederatedOut) string { return f.Subject }},
	{"Audiences", func(f mgmthttp.FederatedOut) string { return strings.Join(f.Audiences, ",") }},
	{"ClaimsMatchingExpression", func(f mgmthttp.FederatedOut) string {
		if f.ClaimsMatchingExpression == nil {
			return ""
		}
		return f.ClaimsMatchingExpression.Value
	}},
}

// manageCall builds a verb that sends one management request and prints
// its answer; args returns the method, the path and the body.
func manageCall[T any](a *app, use, short string, cols []column[T], bind func(*cobra.Command), required []string, args func() (string, string, any)) *cobra.Command {
	c := &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, required...); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			method, path, body := args()
			var out T
			if err := cl.Manage(c.Context(), method, path, body, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []T{out}, cols)
		},
	}
	bind(c)
	return c
}

func (a *app) identityCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "Manage user-assigned managed identities (mirrors `az identity`)"}
	var in mgmthttp.CreateIdentityIn
	bindNameRG := func(c *cobra.Command) {
		c.Flags().StringVarP(&in.Name, "name", "n", "", "identity name")
		c.Flags().StringVarP(&in.ResourceGroup, "resource-group", "g", "", "resource group")
	}
	create := manageCall(a, "create", "Create a user-assigned managed identity", identityCols, bindNameRG, []string{"name", "resource-group"},
		func() (string, string, any) { return "POST", "identities", in })
	show := manageCall(a, "show", "Show a managed identity", identityCols, bindNameRG, []string{"name", "resource-group"},
		func() (string, string, any) { return "GET", "identities/" + in.ResourceGroup + "/" + in.Name, nil })
	list := manageList(a, "List managed identities", "identities", identityCols)
	cmd.AddCommand(create, show, list, a.federatedCmd())
	return cmd
}

func (a *app) federatedCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "federated-credential", Short: "Manage federated identity credentials (mirrors `az identity federated-credential`)"}
	var identity, rg, name string
	var cred federation.Credential
	var expr federation.Expression
	bind := func(withSpec bool) func(*cobra.Command) {
		return func(c *cobra.Command) {
			c.Flags().StringVar(&identity, "identity-name", "", "managed identity name")
			c.Flags().StringVarP(&rg, "resource-group", "g", "", "resource group of the identity")
			c.Flags().StringVarP(&name, "name", "n", "", "federated credential name")
			if withSpec {
				c.Flags().StringVar(&cred.Issuer, "issuer", "", "OIDC issuer URL, such as a Kubernetes cluster's service-account issuer")
				c.Flags().StringVar(&cred.Subject, "subject", "", "exact subject, such as system:serviceaccount:{namespace}:{name}; or give --claims-matching-expression")
				c.Flags().StringVar(&expr.Value, "claims-matching-expression", "", "instead of --subject, an expression in Entra's flexible credential language, such as \"claims['sub'] matches 'system:serviceaccount:team-a:*'\" ('*' never matches ':', '**' does)")
				c.Flags().IntVar(&expr.LanguageVersion, "claims-matching-expression-version", federation.LanguageVersion, "language version of --claims-matching-expression")
				c.Flags().StringSliceVar(&cred.Audiences, "audiences", []string{federation.DefaultAudience}, "audience")
				c.Flags().StringVar(&cred.Description, "description", "", "description")
			}
		}
	}
	path := func() string { return "identities/" + rg + "/" + identity + "/federated-credentials" }
	create := manageCall(a, "create", "Trust an external identity (issuer, and a subject or a claims-matching expression) to act as the managed identity", federatedCols, bind(true),
		[]string{"identity-name", "resource-group", "name", "issuer"},
		func() (string, string, any) {
			body := cred
			if expr.Value != "" {
				body.ClaimsMatchingExpression = &expr
			}
			return "PUT", path() + "/" + name, body
		})
	var listIdentity, listRG string
	list := &cobra.Command{
		Use: "list", Short: "List an identity's federated credentials", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "identity-name", "resource-group"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out struct {
				Value []mgmthttp.FederatedOut `json:"value"`
			}
			if err := cl.Manage(c.Context(), "GET", "identities/"+listRG+"/"+listIdentity+"/federated-credentials", nil, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out.Value, out.Value, federatedCols)
		},
	}
	list.Flags().StringVar(&listIdentity, "identity-name", "", "managed identity name")
	list.Flags().StringVarP(&listRG, "resource-group", "g", "", "resource group of the identity")
	del := &cobra.Command{
		Use: "delete", Short: "Delete a federated credential", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "identity-name", "resource-group", "name"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			return cl.Manage(c.Context(), "DELETE", path()+"/"+name, nil, nil)
		},
	}
	bind(false)(del)
	cmd.AddCommand(create, list, del)
	return cmd
}

var nodePoolCols = []column[mgmthttp.NodePoolOut]{
	{"Name", func(n mgmthttp.NodePoolOut) string { return n.Name }},
	{"AgentClientId", func(n mgmthttp.NodePoolOut) string { return n.AgentClientID }},
	{"AgentClientSecret", func(n mgmthttp.NodePoolOut) string { return n.AgentSecret }},
	{"SystemIdentityClientId", func(n mgmthttp.NodePoolOut) string { return n.SystemAssigned.ClientID }},
	{"Id", func(n mgmthttp.NodePoolOut) string { return n.ID }},
}

func (a *app) nodePoolCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "nodepool", Short: "Manage node pools: the identities node agents use (like an AKS node pool's scale set)"}
	var in mgmthttp.CreateIdentityIn
	create := manageCall(a, "create", "Create a node pool: a system-assigned identity, and credentials for its node agents (shown once)", nodePoolCols,
		func(c *cobra.Command) {
			c.Flags().StringVarP(&in.Name, "name", "n", "", "node pool name")
			c.Flags().StringVarP(&in.ResourceGroup, "resource-group", "g", "", "resource group")
		}, []string{"name", "resource-group"},
		func() (string, string, any) { return "POST", "node-pools", in })
	ident := &cobra.Command{Use: "identity", Short: "Manage the user-assigned identities a node pool may act as"}
	var pool, rg string
	var ids []string
	assign := &cobra.Command{
		Use: "assign", Short: "Let a node pool's agents act as user-assigned identities (grants Managed Identity Operator)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name", "resource-group", "identities"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out struct {
				Value []mgmthttp.AssignmentOut `json:"value"`
			}
			if err := cl.Manage(c.Context(), "POST", "node-pools/"+rg+"/"+pool+"/identities", mgmthttp.AssignIn{Identities: ids}, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out.Value, out.Value, assignmentCols)
		},
	}
	assign.Flags().StringVarP(&pool, "name", "n", "", "node pool name")
	assign.Flags().StringVarP(&rg, "resource-group", "g", "", "resource group of the node pool")
	assign.Flags().StringSliceVar(&ids, "identities", nil, "resource ids of user-assigned identities")
	ident.AddCommand(assign)
	cmd.AddCommand(create, ident)
	return cmd
}
