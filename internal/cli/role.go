//go:build !node

package cli

import (
	"encoding/json"
	"net/url"
	"strings"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/spf13/cobra"
)

var assignmentCols = []column[mgmthttp.AssignmentOut]{
	{"Principal", func(a mgmthttp.AssignmentOut) string { return a.PrincipalID }},
	{"Role", func(a mgmthttp.AssignmentOut) string { return a.RoleDefinitionName }},
	{"Scope", func(a mgmthttp.AssignmentOut) string { return a.Scope }},
	{"Name", func(a mgmthttp.AssignmentOut) string { return a.Name }},
}

var roleCols = []column[mgmthttp.RoleOut]{
	{"Name", func(r mgmthttp.RoleOut) string { return r.RoleName }},
	{"Id", func(r mgmthttp.RoleOut) string { return r.ID }},
	{"Description", func(r mgmthttp.RoleOut) string { return r.Description }},
}

func (a *app) roleCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "role", Short: "Manage role assignments (mirrors `az role`)"}
	asg := &cobra.Command{Use: "assignment", Short: "Manage role assignments"}
	var in mgmthttp.CreateAssignmentIn
	create := manageCall(a, "create", "Assign a role to a principal at a scope (the root /, a subscription, resource group, vault, or one object)", assignmentCols,
		func(c *cobra.Command) {
			c.Flags().StringVar(&in.Role, "role", "", "role name or id, such as \"Key Vault Secrets User\"")
			c.Flags().StringVar(&in.Assignee, "assignee", "", "object id, client id, identity resource id, or display name")
			c.Flags().StringVar(&in.Scope, "scope", "", "scope (default: the subscription)")
		}, []string{"role", "assignee"},
		func() (string, string, any) { return "POST", "role-assignments", in })

	var assignee, role, scope string
	list := &cobra.Command{
		Use: "list", Short: "List role assignments you may read", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"assignee": assignee, "role": role, "scope": scope} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var out struct {
				Value []mgmthttp.AssignmentOut `json:"value"`
			}
			if err := cl.Manage(c.Context(), "GET", "role-assignments?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out.Value, out.Value, assignmentCols)
		},
	}
	list.Flags().StringVar(&assignee, "assignee", "", "only this principal's assignments")
	list.Flags().StringVar(&role, "role", "", "only this role's assignments")
	list.Flags().StringVar(&scope, "scope", "", "only assignments at exactly this scope")

	var ids []string
	del := &cobra.Command{
		Use: "delete", Short: "Delete role assignments by id", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "ids"); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			for _, id := range ids {
				id = id[strings.LastIndex(id, "/")+1:] // a full assignment id works too
				if err := cl.Manage(c.Context(), "DELETE", "role-assignments/"+id, nil, nil); err != nil {
					return err
				}
			}
			return nil
		},
	}
	del.Flags().StringSliceVar(&ids, "ids", nil, "assignment names or ids")
	asg.AddCommand(create, list, del)

	def := &cobra.Command{Use: "definition", Short: "Show and create role definitions"}
	var spec string
	createDef := &cobra.Command{
		Use: "create", Short: "Create a custom role from a JSON definition ({Name, Description, Actions, NotActions, DataActions})", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "role-definition"); err != nil {
				return err
			}
			data := []byte(spec)
			if rest, ok := strings.CutPrefix(spec, "@"); ok {
				var err error
				if data, err = readInput(a.stdin, rest, maxInputFile); err != nil {
					return err
				}
			}
			var in mgmthttp.CreateRoleIn
			if err := json.Unmarshal(data, &in); err != nil {
				return usagef("--role-definition is not valid JSON: %v", err)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out mgmthttp.RoleOut
			if err := cl.Manage(c.Context(), "POST", "role-definitions", in, &out); err != nil {
				return err
			}
			return render(a.stdout, a.output, out, []mgmthttp.RoleOut{out}, roleCols)
		},
	}
	createDef.Flags().StringVar(&spec, "role-definition", "", "the definition as JSON, or @FILE")
	def.AddCommand(manageList(a, "List the built-in and custom roles", "role-definitions", roleCols), createDef)
	cmd.AddCommand(asg, def)
	return cmd
}
