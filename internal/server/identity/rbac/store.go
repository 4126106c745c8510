package rbac

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// ErrNotFound means no assignment has the id.
var ErrNotFound = errors.New("role assignment not found")

// ErrExists means the same role is already assigned to the principal at the
// scope, or a role with the name exists.
var ErrExists = errors.New("already exists")

// ErrInvalidRole means a role, scope or assignment is malformed.
var ErrInvalidRole = errors.New("invalid role assignment")

const (
	prefix     = "rbac/"
	rolePrefix = "rbac-roles/"
)

// Assignment grants a role to a principal at a scope.
type Assignment struct {
	ID            string `json:"name"`
	TenantID      string `json:"tenantId"`
	RoleID        string `json:"roleDefinitionId"`
	PrincipalID   string `json:"principalId"`
	PrincipalType string `json:"principalType"`
	Scope         string `json:"scope"`
	Created       int64  `json:"createdOn"`
	CreatedBy     string `json:"createdBy,omitempty"`
}

// builtIn returns the assignment's role if it is built in.
func (a Assignment) builtIn() (Role, bool) { return FindRole(a.RoleID) }

type customRole struct {
	TenantID string `json:"tenantId"`
	Role
}

func (s *Assignments) addRole(tenant string, r Role) {
	if s.roles[tenant] == nil {
		s.roles[tenant] = map[string]Role{}
	}
	s.roles[tenant][r.ID] = r
}

// Role finds a built-in role or one of the tenant's custom roles, by name or
// id (or full role definition id).
func (s *Assignments) Role(tenant, nameOrID string) (Role, bool) {
	if r, ok := FindRole(nameOrID); ok {
		return r, true
	}
	key := strings.TrimSpace(nameOrID)
	if i := strings.LastIndex(strings.ToLower(key), "/roledefinitions/"); i >= 0 {
		key = key[i+len("/roledefinitions/"):]
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.roles[tenant] {
		if strings.EqualFold(r.Name, key) || strings.EqualFold(r.ID, key) {
			return r, true
		}
	}
	return Role{}, false
}

// Roles returns the built-in roles and the tenant's custom roles.
func (s *Assignments) Roles(tenant string) []Role {
	out := append([]Role(nil), BuiltIn...)
	s.mu.RLock()
	defer s.mu.RUnlock()
	var custom []Role
	for _, r := range s.roles[tenant] {
		custom = append(custom, r)
	}
	sort.Slice(custom, func(i, j int) bool { return custom[i].Name < custom[j].Name })
	return append(out, custom...)
}

// CreateRole stores a custom role, as `az role definition create` does.
// Its actions use Azure's syntax; a name must not clash with another role.
func (s *Assignments) CreateRole(ctx context.Context, tenant string, r Role) (Role, error) {
	r.Name = strings.TrimSpace(r.Name)
	if r.Name == "" || len(r.Name) > 128 {
		return Role{}, fmt.Errorf("%w: a role needs a name of 1 to 128 characters", ErrInvalidRole)
	}
	if len(r.Actions)+len(r.DataActions) == 0 {
		return Role{}, fmt.Errorf("%w: role %q grants nothing: give actions or dataActions", ErrInvalidRole, r.Name)
	}
	for _, a := range append(append(append([]string(nil), r.Actions...), r.NotActions...), r.DataActions...) {
		if strings.TrimSpace(a) == "" || strings.ContainsAny(a, " \t\n") {
			return Role{}, fmt.Errorf("%w: role %q has an invalid action %q", ErrInvalidRole, r.Name, a)
		}
	}
	if _, exists := s.Role(tenant, r.Name); exists {
		return Role{}, fmt.Errorf("%w: a role named %q already exists", ErrExists, r.Name)
	}
	r.ID = newID()
	b, _ := json.Marshal(customRole{TenantID: tenant, Role: r})
	key := rolePrefix + tenant + "/" + r.ID
	if err := s.st.Apply(ctx, []barrier.Cond{{Key: key}}, []barrier.Op{{Key: key, Value: b}}); err != nil {
		return Role{}, err
	}
	s.mu.Lock()
	s.addRole(tenant, r)
	s.mu.Unlock()
	return r, nil
}

// role returns an assignment's role; an unknown id (a deleted custom role)
// grants nothing.
func (s *Assignments) role(a Assignment) Role {
	if r, ok := a.builtIn(); ok {
		return r
	}
	return s.roles[a.TenantID][a.RoleID]
}

// Store is the slice of the barrier assignments are kept in.
type Store interface {
	Scan(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, error)
	Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error
}

// Assignments holds every role assignment, indexed in memory by tenant and
// principal: every request is decided from memory.
type Assignments struct {
	st  Store
	now func() time.Time

	mu    sync.RWMutex
	idx   map[string]map[string][]Assignment // tenant -> principal object id -> assignments
	roles map[string]map[string]Role         // tenant -> custom role id -> role
}

// IsKey reports whether a store key holds a role assignment or a role
// definition: the server tells vault watches to authorize again when one
// changes.
func IsKey(key string) bool {
	return strings.HasPrefix(key, prefix) || strings.HasPrefix(key, rolePrefix)
}

// Open loads every assignment from st.
func Open(ctx context.Context, st Store, now func() time.Time) (*Assignments, error) {
	if now == nil {
		now = time.Now
	}
	s := &Assignments{st: st, now: now}
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	if f, ok := st.(barrier.Follower); ok {
		// Another replica's assignment or revocation holds here from the
		// next request on: a change to either prefix reloads both.
		reload := func(ctx context.Context, _ []string, _ bool) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.load(ctx) // on failure the old state stays until the next change
		}
		f.Follow(prefix, reload)
		f.Follow(rolePrefix, reload)
	}
	return s, nil
}

// load reads every role definition and assignment into s.
func (s *Assignments) load(ctx context.Context) error {
	idx, roles := s.idx, s.roles
	s.idx, s.roles = map[string]map[string][]Assignment{}, map[string]map[string]Role{}
	err := s.read(ctx)
	if err != nil {
		s.idx, s.roles = idx, roles
	}
	return err
}

func (s *Assignments) read(ctx context.Context) error {
	roles, err := s.st.Scan(ctx, rolePrefix, "", 0)
	if err != nil {
		return fmt.Errorf("load role definitions: %w", err)
	}
	for _, rec := range roles {
		var cr customRole
		if err := json.Unmarshal(rec.Value, &cr); err != nil {
			return fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		s.addRole(cr.TenantID, cr.Role)
	}
	recs, err := s.st.Scan(ctx, prefix, "", 0)
	if err != nil {
		return fmt.Errorf("load role assignments: %w", err)
	}
	for _, rec := range recs {
		var a Assignment
		if err := json.Unmarshal(rec.Value, &a); err != nil {
			return fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		s.add(a)
	}
	return nil
}

func (s *Assignments) add(a Assignment) {
	t := s.idx[a.TenantID]
	if t == nil {
		t = map[string][]Assignment{}
		s.idx[a.TenantID] = t
	}
	t[a.PrincipalID] = append(t[a.PrincipalID], a)
}

func key(a Assignment) string { return prefix + a.TenantID + "/" + a.ID }

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Create stores a new assignment. The role must be built in and the scope
// well formed.
func (s *Assignments) Create(ctx context.Context, a Assignment) (Assignment, error) {
	role, ok := s.Role(a.TenantID, a.RoleID)
	if !ok {
		return Assignment{}, fmt.Errorf("%w: role %q does not exist; `coffer role definition list` shows the roles", ErrInvalidRole, a.RoleID)
	}
	if err := ValidateScope(a.Scope); err != nil {
		return Assignment{}, fmt.Errorf("%w: %w", ErrInvalidRole, err)
	}
	a.RoleID, a.ID, a.Created = role.ID, newID(), s.now().Unix()
	b, _ := json.Marshal(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, old := range s.idx[a.TenantID][a.PrincipalID] {
		if old.RoleID == a.RoleID && strings.EqualFold(old.Scope, a.Scope) {
			return old, fmt.Errorf("%w: %s already holds %s at %s (assignment %s)", ErrExists, a.PrincipalID, role.Name, a.Scope, old.ID)
		}
	}
	if err := s.st.Apply(ctx, []barrier.Cond{{Key: key(a)}}, []barrier.Op{{Key: key(a), Value: b}}); err != nil {
		return Assignment{}, err
	}
	s.add(a)
	return a, nil
}

// Delete removes an assignment by id.
func (s *Assignments) Delete(ctx context.Context, tenant, id string) (Assignment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for oid, list := range s.idx[tenant] {
		for i, a := range list {
			if strings.EqualFold(a.ID, id) {
				if err := s.st.Apply(ctx, nil, []barrier.Op{{Key: key(a), Delete: true}}); err != nil {
					return Assignment{}, err
				}
				s.idx[tenant][oid] = append(list[:i:i], list[i+1:]...)
				return a, nil
			}
		}
	}
	return Assignment{}, fmt.Errorf("%w: %s", ErrNotFound, id)
}

// List returns a tenant's assignments that keep returns true for, ordered by
// scope, then principal.
func (s *Assignments) List(tenant string, keep func(Assignment) bool) []Assignment {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Assignment
	for _, list := range s.idx[tenant] {
		for _, a := range list {
			if keep == nil || keep(a) {
				out = append(out, a)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Scope != out[j].Scope {
			return out[i].Scope < out[j].Scope
		}
		return out[i].PrincipalID+out[i].RoleID < out[j].PrincipalID+out[j].RoleID
	})
	return out
}

// Allowed reports whether principal holds, at scope or above it, a role that
// grants the management action.
func (s *Assignments) Allowed(tenant, principal, action, scope string) bool {
	return s.find(tenant, principal, scope, func(r Role) bool { return r.Allows(action) })
}

// AllowedData reports whether principal holds, at scope or above it, a role
// that grants the data action.
func (s *Assignments) AllowedData(tenant, principal, action, scope string) bool {
	return s.find(tenant, principal, scope, func(r Role) bool { return r.AllowsData(action) })
}

func (s *Assignments) find(tenant, principal, scope string, grants func(Role) bool) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, a := range s.idx[tenant][principal] {
		if Within(scope, a.Scope) && grants(s.role(a)) {
			return true
		}
	}
	return false
}
