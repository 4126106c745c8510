package mgmthttp

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// AssignmentOut is a role assignment, shaped as `az role assignment` prints it.
type AssignmentOut struct {
	ID                 string `json:"id"`
	Name               string `json:"name"`
	PrincipalID        string `json:"principalId"`
	PrincipalType      string `json:"principalType"`
	RoleDefinitionID   string `json:"roleDefinitionId"`
	RoleDefinitionName string `json:"roleDefinitionName"`
	Scope              string `json:"scope"`
}

func (h *Handler) assignmentOut(sub string, a rbac.Assignment) AssignmentOut {
	role, _ := h.Roles.Role(a.TenantID, a.RoleID)
	return AssignmentOut{
		ID: strings.TrimSuffix(a.Scope, "/") + "/providers/Microsoft.Authorization/roleAssignments/" + a.ID, Name: a.ID,
		PrincipalID: a.PrincipalID, PrincipalType: a.PrincipalType,
		RoleDefinitionID:   "/subscriptions/" + sub + "/providers/Microsoft.Authorization/roleDefinitions/" + a.RoleID,
		RoleDefinitionName: role.Name, Scope: a.Scope,
	}
}

func (h *Handler) listAssignments(r *http.Request, p access.Principal, _ none) (any, error) {
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	var assignee, roleID string
	if ref := q.Get("assignee"); ref != "" {
		pr, err := h.Authority.Resolve(r.Context(), p.TenantID, ref)
		if err != nil {
			return nil, err
		}
		assignee = pr.ObjectID
	}
	if name := q.Get("role"); name != "" {
		role, ok := h.Roles.Role(p.TenantID, name)
		if !ok {
			return nil, badRequest(fmt.Sprintf("role %q does not exist", name))
		}
		roleID = role.ID
	}
	scope := q.Get("scope")
	var out []AssignmentOut
	for _, a := range h.Roles.List(p.TenantID, func(a rbac.Assignment) bool {
		return (assignee == "" || a.PrincipalID == assignee) && (roleID == "" || a.RoleID == roleID) &&
			(scope == "" || strings.EqualFold(a.Scope, scope)) &&
			h.Access.Manage(p, rbac.ActionRoleAssignmentRead, a.Scope) == nil
	}) {
		out = append(out, h.assignmentOut(sub, a))
	}
	return list(out), nil
}

// CreateAssignmentIn is the body of a role assignment creation. Assignee is
// an object id, an app (client) id, a managed identity resource id, or a
// unique display name.
type CreateAssignmentIn struct {
	Role     string `json:"role"`
	Assignee string `json:"assignee"`
	Scope    string `json:"scope"`
}

// checkScope validates a scope and keeps it inside the caller's tenant: its
// subscription, and, for vault scopes, an existing vault of the tenant.
func (h *Handler) checkScope(sub, tenant, scope string) error {
	if err := rbac.ValidateScope(scope); err != nil {
		return badRequest(err.Error())
	}
	if scope == rbac.Root {
		return nil
	}
	segs := strings.Split(strings.TrimPrefix(scope, "/"), "/")
	if !strings.EqualFold(segs[1], sub) {
		return badRequest(fmt.Sprintf("scope %s is outside this tenant's subscription %s", scope, sub))
	}
	if len(segs) >= 8 && strings.EqualFold(segs[5], "Microsoft.KeyVault") && strings.EqualFold(segs[6], "vaults") {
		v, err := h.Vaults.Get(segs[7])
		if err != nil || v.TenantID != tenant || !strings.EqualFold(v.ResourceGroup, segs[3]) {
			return fmt.Errorf("%w: scope %s names vault %s, which does not exist in resource group %s", vault.ErrNotFound, scope, segs[7], segs[3])
		}
		if len(segs) > 8 && (len(segs) != 10 || !map[string]bool{"secrets": true, "keys": true, "certificates": true}[strings.ToLower(segs[8])]) {
			return badRequest(fmt.Sprintf("scope %s: below a vault, a scope is secrets/{name}, keys/{name} or certificates/{name}", scope))
		}
	}
	return nil
}

func (h *Handler) createAssignment(r *http.Request, p access.Principal, in CreateAssignmentIn) (any, error) {
	sub, err := h.subscription(r.Context(), p)
	if err != nil {
		return nil, err
	}
	if in.Scope == "" {
		in.Scope = rbac.SubscriptionScope(sub)
	}
	if err := h.checkScope(sub, p.TenantID, in.Scope); err != nil {
		return nil, err
	}
	if err := h.authorize(r, p, rbac.ActionRoleAssignmentWrite, in.Scope); err != nil {
		return nil, err
	}
	assignee, err := h.Authority.Resolve(r.Context(), p.TenantID, in.Assignee)
	if err != nil {
		return nil, err
	}
	a, err := h.Roles.Create(r.Context(), rbac.Assignment{TenantID: p.TenantID, RoleID: in.Role, PrincipalID: assignee.ObjectID,
		PrincipalType: assignee.Type, Scope: in.Scope, CreatedBy: p.ObjectID})
	return h.assignmentOut(sub, a), err
}

func (h *Handler) deleteAssignment(r *http.Request, p access.Principal, _ none) (any, error) {
	id := r.PathValue("id")
	found := h.Roles.List(p.TenantID, func(a rbac.Assignment) bool { return strings.EqualFold(a.ID, id) })
	if len(found) == 0 {
		return nil, fmt.Errorf("%w: %s", rbac.ErrNotFound, id)
	}
	if err := h.authorize(r, p, rbac.ActionRoleAssignmentDel, found[0].Scope); err != nil {
		return nil, err
	}
	_, err := h.Roles.Delete(r.Context(), p.TenantID, id)
	return nil, err
}

// RoleOut is a role definition.
type RoleOut struct {
	ID          string   `json:"name"`
	RoleName    string   `json:"roleName"`
	Description string   `json:"description"`
	Actions     []string `json:"actions"`
	NotActions  []string `json:"notActions"`
	DataActions []string `json:"dataActions"`
}

func roleOut(role rbac.Role) RoleOut {
	return RoleOut{ID: role.ID, RoleName: role.Name, Description: role.Description, Actions: role.Actions, NotActions: role.NotActions, DataActions: role.DataActions}
}

func (h *Handler) listRoles(r *http.Request, p access.Principal, _ none) (any, error) {
	var out []RoleOut
	for _, role := range h.Roles.Roles(p.TenantID) {
		out = append(out, roleOut(role))
	}
	return list(out), nil
}

// actionRoleDefinitionWrite creates custom roles.
const actionRoleDefinitionWrite = "Microsoft.Authorization/roleDefinitions/write"

// CreateRoleIn is a custom role definition, in az's JSON shape.
type CreateRoleIn struct {
	Name        string   `json:"Name"`
	Description string   `json:"Description"`
	Actions     []string `json:"Actions"`
	NotActions  []string `json:"NotActions"`
	DataActions []string `json:"DataActions"`
}

func (h *Handler) createRole(r *http.Request, p access.Principal, in CreateRoleIn) (any, error) {
	if err := h.authorize(r, p, actionRoleDefinitionWrite, rbac.Root); err != nil {
		return nil, err
	}
	role, err := h.Roles.CreateRole(r.Context(), p.TenantID, rbac.Role{Name: in.Name, Description: in.Description,
		Actions: in.Actions, NotActions: in.NotActions, DataActions: in.DataActions})
	return roleOut(role), err
}
