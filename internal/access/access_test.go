package access

import (
	"errors"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/vault"
)

func TestCheck(t *testing.T) {
	v := &vault.Vault{Name: "demo", TenantID: "t1", AccessPolicies: []vault.AccessPolicy{
		{TenantID: "t1", ObjectID: "reader", Permissions: vault.Permissions{Secrets: []string{"Get", "list"}}},
		{TenantID: "t1", ObjectID: "admin", Permissions: vault.AllPermissions()},
		{TenantID: "t1", ObjectID: "keysonly", Permissions: vault.Permissions{Keys: []string{"all"}}},
	}}
	cases := []struct {
		p    Principal
		kind Kind
		op   string
		ok   bool
	}{
		{Principal{TenantID: "t1", ObjectID: "reader"}, Secrets, "get", true},
		{Principal{TenantID: "t1", ObjectID: "reader"}, Secrets, "list", true},
		{Principal{TenantID: "t1", ObjectID: "reader"}, Secrets, "set", false},
		{Principal{TenantID: "t1", ObjectID: "reader"}, Keys, "get", false},
		{Principal{TenantID: "t1", ObjectID: "admin"}, Secrets, "purge", true},
		{Principal{TenantID: "t1", ObjectID: "keysonly"}, Keys, "sign", true},
		{Principal{TenantID: "t1", ObjectID: "keysonly"}, Secrets, "get", false},
		{Principal{TenantID: "t2", ObjectID: "admin"}, Secrets, "get", false}, // same oid, other tenant
		{Principal{TenantID: "t1", ObjectID: "stranger"}, Secrets, "get", false},
	}
	for _, c := range cases {
		err := Check(v, c.p, c.kind, c.op)
		if (err == nil) != c.ok {
			t.Errorf("Check(%s, %s %s) = %v, want allowed=%v", c.p.ObjectID, c.kind, c.op, err, c.ok)
		}
		if err != nil {
			if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), c.p.ObjectID) || !strings.Contains(err.Error(), string(c.kind)+" "+c.op) {
				t.Errorf("denial %q does not name the operation and the caller", err)
			}
		}
	}
}
