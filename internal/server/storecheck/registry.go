package storecheck

import (
	"strings"

	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
)

// ref is a record (key) that needs another (a vault, a tenant) to exist.
type ref struct{ key, name string }

// principal is what the indexes of a principal must agree with.
type principal struct {
	key, objectID, resourceID string
}

// indexEntry is one object-id or resource-id index: key, in tenant, names
// the principal appID; id is the indexed id.
type indexEntry struct{ key, tenant, id, appID string }

type assignment struct {
	key, tenant, role string
}

type bootstrapRef struct {
	key string
	bootstrap.State
}

// vault checks a registry entry.
func (c *checker) vault(key string, plain []byte) {
	name := strings.TrimPrefix(key, "vaults/")
	c.counts["vaults"]++
	var v vault.Vault
	if !c.decode(key, plain, &v, "a vault") {
		c.vaults[name] = "" // known to exist, if unreadable: its objects are not orphans
		return
	}
	if v.Name != name {
		c.damage(key, "holds vault %q, not %q", v.Name, name)
	}
	check := v
	check.AccessPolicies = append([]vault.AccessPolicy(nil), v.AccessPolicies...)
	if err := check.Validate(); err != nil {
		c.damage(key, "its settings do not validate: %v", err)
	}
	c.vaults[name] = v.TenantID
}

// assignment checks a role assignment.
func (c *checker) assignment(key string, plain []byte) {
	parts, ok := split(key, "rbac/", 2)
	if !ok {
		c.damage(key, "is not a role assignment's key (rbac/TENANT/ID)")
		return
	}
	c.counts["role assignments"]++
	var a rbac.Assignment
	if !c.decode(key, plain, &a, "a role assignment") {
		return
	}
	if a.TenantID != parts[0] || a.ID != parts[1] {
		c.damage(key, "holds assignment %s of tenant %s", a.ID, a.TenantID)
	}
	if err := rbac.ValidateScope(a.Scope); err != nil {
		c.damage(key, "its scope %q is invalid: %v", a.Scope, err)
	}
	if _, builtIn := rbac.FindRole(a.RoleID); !builtIn {
		c.assigned = append(c.assigned, assignment{key: key, tenant: a.TenantID, role: a.RoleID})
	}
	c.tenantRef(key, a.TenantID)
}

// customRole checks a custom role definition: a tenant id beside the
// role's fields, as rbac stores it.
func (c *checker) customRole(key string, plain []byte) {
	parts, ok := split(key, "rbac-roles/", 2)
	if !ok {
		c.damage(key, "is not a role definition's key (rbac-roles/TENANT/ID)")
		return
	}
	c.counts["custom roles"]++
	var r struct {
		TenantID string `json:"tenantId"`
		rbac.Role
	}
	if !c.decode(key, plain, &r, "a role definition") {
		return
	}
	if r.TenantID != parts[0] || r.ID != parts[1] {
		c.damage(key, "holds role %s of tenant %s", r.ID, r.TenantID)
	}
	c.roles[parts[0]+"/"+parts[1]] = true
	c.tenantRef(key, r.TenantID)
}

// tenantRef notes that key needs tenant, for after the walk.
func (c *checker) tenantRef(key, tenant string) {
	c.needTenant = append(c.needTenant, ref{key: key, name: tenant})
}

// authority checks the directory and the token signing keys.
func (c *checker) authority(key string, plain []byte) {
	rest := strings.TrimPrefix(key, "authority/")
	area, _, _ := strings.Cut(rest, "/")
	switch area {
	case "tenants":
		c.counts["tenants"]++
		var t authority.Tenant
		if c.decode(key, plain, &t, "a tenant") {
			if t.ID != strings.TrimPrefix(rest, "tenants/") {
				c.damage(key, "holds tenant %s", t.ID)
			}
			c.tenants[strings.ToLower(t.ID)] = true
		}
	case "principals":
		parts, ok := split(key, "authority/principals/", 2)
		if !ok {
			c.damage(key, "is not a principal's key (authority/principals/TENANT/APPID)")
			return
		}
		c.counts["principals"]++
		var p authority.Principal
		if !c.decode(key, plain, &p, "a principal") {
			return
		}
		if p.TenantID != parts[0] || strings.ToLower(p.AppID) != parts[1] {
			c.damage(key, "holds principal %s of tenant %s", p.AppID, p.TenantID)
		}
		if p.ObjectID == "" {
			c.damage(key, "the principal has no object id")
		}
		c.principals[parts[0]+"/"+parts[1]] = principal{key: key, objectID: p.ObjectID, resourceID: p.ResourceID}
		c.tenantRef(key, p.TenantID)
	case "objects", "resources":
		parts, ok := split(key, "authority/"+area+"/", 2)
		if !ok {
			c.damage(key, "is not an index key (authority/%s/TENANT/ID)", area)
			return
		}
		c.counts["principal indexes"]++
		var appID string
		if !c.decode(key, plain, &appID, "an index entry (a client id)") {
			return
		}
		e := indexEntry{key: key, tenant: parts[0], id: parts[1], appID: appID}
		if area == "objects" {
			c.objIndex = append(c.objIndex, e)
		} else {
			c.resIndex = append(c.resIndex, e)
		}
	case "signing":
		c.counts["signing keys"]++
		// The authority's own record of a key (unexported there).
		var sk struct {
			ID      string `json:"kid"`
			DER     []byte `json:"pkcs8"`
			Retired int64  `json:"retired"`
		}
		if !c.decode(key, plain, &sk, "a signing key") {
			return
		}
		if sk.ID != strings.TrimPrefix(rest, "signing/") {
			c.damage(key, "holds signing key %s", sk.ID)
		}
		if _, err := token.ParsePrivate(sk.DER); err != nil {
			c.damage(key, "its private key does not parse")
			return
		}
		c.signing++
		if sk.Retired == 0 {
			c.active++
		}
	case "replay":
		c.counts["replay records"]++
		var r struct {
			Expires int64 `json:"exp"`
		}
		c.decode(key, plain, &r, "a replay record")
	default:
		c.counts["other records"]++
		c.notice(key, "no component owns this key: its blob opens, but nothing else about it was checked")
	}
}

func (c *checker) bootstrapState(key string, plain []byte) {
	var s bootstrap.State
	if c.decode(key, plain, &s, "the bootstrap state") {
		c.bootstrap = &bootstrapRef{key: key, State: s}
	}
}

// crossCheck checks what one record says of another.
func (c *checker) crossCheck() {
	c.checkObjects()
	for _, r := range c.needTenant {
		if !c.tenants[strings.ToLower(r.name)] {
			c.damage(r.key, "belongs to tenant %s, which does not exist (authority/tenants/%s)", r.name, r.name)
		}
	}
	for _, r := range c.needVault {
		if _, ok := c.vaults[r.name]; !ok {
			c.damage(r.key, "belongs to vault %q, which the registry does not hold (vaults/%s)", r.name, r.name)
		}
	}
	for name, tenant := range c.vaults {
		if tenant != "" && !c.tenants[strings.ToLower(tenant)] {
			c.damage("vaults/"+name, "belongs to tenant %s, which does not exist (authority/tenants/%s)", tenant, tenant)
		}
	}
	for _, a := range c.assigned {
		if !c.roles[a.tenant+"/"+a.role] {
			c.notice(a.key, "its role %s is neither built in nor a custom role of the tenant (deleted?): it grants nothing", a.role)
		}
	}
	// Each principal's indexes point back at it, and each index entry at a
	// principal that has its id.
	indexed := map[string]bool{}
	for _, e := range c.objIndex {
		indexed["o:"+e.tenant+"/"+strings.ToLower(e.id)] = true
		p, ok := c.principals[e.tenant+"/"+strings.ToLower(e.appID)]
		switch {
		case !ok:
			c.damage(e.key, "indexes client id %s, which has no principal (authority/principals/%s/%s)", e.appID, e.tenant, strings.ToLower(e.appID))
		case !strings.EqualFold(p.objectID, e.id):
			c.damage(e.key, "indexes principal %s, whose object id is %s", e.appID, p.objectID)
		}
	}
	for _, e := range c.resIndex {
		indexed["r:"+e.tenant+"/"+strings.ToLower(e.id)] = true
		p, ok := c.principals[e.tenant+"/"+strings.ToLower(e.appID)]
		switch {
		case !ok:
			c.damage(e.key, "indexes client id %s, which has no principal (authority/principals/%s/%s)", e.appID, e.tenant, strings.ToLower(e.appID))
		case !strings.EqualFold(p.resourceID, e.id):
			c.damage(e.key, "indexes managed identity %s, whose resource id is %q", e.appID, p.resourceID)
		}
	}
	for tk, p := range c.principals {
		tenant, _, _ := strings.Cut(tk, "/")
		if p.objectID != "" && !indexed["o:"+tenant+"/"+strings.ToLower(p.objectID)] {
			c.damage(p.key, "its object id %s is not indexed (authority/objects/%s/%s): lookups by object id miss it", p.objectID, tenant, p.objectID)
		}
		if p.resourceID != "" && !indexed["r:"+tenant+"/"+strings.ToLower(p.resourceID)] {
			c.damage(p.key, "its resource id is not indexed (authority/resources/%s/...): lookups by resource id miss it", tenant)
		}
	}
	switch {
	case c.signing == 0:
		c.damage("authority/signing/", "there is no token signing key: the authority cannot issue tokens (a server creates one when it starts)")
	case c.active == 0:
		c.damage("authority/signing/", "every token signing key is retired: none signs")
	case c.active > 1:
		c.notice("authority/signing/", "%d signing keys are active; the newest signs", c.active)
	}
	if s := c.bootstrap; s != nil {
		if !c.tenants[strings.ToLower(s.TenantID)] {
			c.damage(s.key, "names tenant %s, which does not exist", s.TenantID)
		}
		if _, ok := c.principals[s.TenantID+"/"+strings.ToLower(s.AdminAppID)]; !ok {
			c.damage(s.key, "names administrator %s, which has no principal", s.AdminAppID)
		}
	}
}
