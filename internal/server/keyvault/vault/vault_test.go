package vault

import (
	"context"
	"errors"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func TestValidateName(t *testing.T) {
	for name, ok := range map[string]bool{
		"demo": true, "a1b": true, "Team-A": true, "abcdefghijklmnopqrstuvwx": true,
		"ab": false, "abcdefghijklmnopqrstuvwxy": false, "1abc": false, "abc-": false, "a--b": false,
		"a_bc": false, "a.bc": false, "": false,
	} {
		if err := ValidateName(name); (err == nil) != ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	r, err := Open(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.Create(ctx, Vault{Name: "Demo", TenantID: "t", SubscriptionID: "s", CreatedBy: "o"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "demo" || v.RetentionDays != 90 || len(v.AccessPolicies) != 1 || v.AccessPolicies[0].ObjectID != "o" {
		t.Fatalf("created %+v", v)
	}
	if v.RecoveryLevel() != "Recoverable+Purgeable" {
		t.Fatalf("recovery level %s", v.RecoveryLevel())
	}
	if _, err := r.Create(ctx, Vault{Name: "DEMO", TenantID: "t", SubscriptionID: "s"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate = %v", err)
	}
	for _, days := range []int{6, 91} {
		if _, err := r.Create(ctx, Vault{Name: "other", TenantID: "t", SubscriptionID: "s", RetentionDays: days}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("retention %d = %v", days, err)
		}
	}
	if _, err := r.Update(ctx, "demo", func(v *Vault) error { v.PurgeProtection = true; v.RetentionDays = 30; return nil }); err != nil {
		t.Fatal(err)
	}
	// A fresh registry over the same store sees every change.
	r2, _ := Open(ctx, b, nil)
	got, err := r2.Get("DeMo")
	if err != nil || !got.PurgeProtection || got.RecoveryLevel() != "CustomizedRecoverable" {
		t.Fatalf("reloaded %+v, %v", got, err)
	}
	if _, err := r2.Get("absent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(absent) = %v", err)
	}
}

func TestValidatePermissions(t *testing.T) {
	got, err := ValidatePermissions("secrets", []string{"GET", "list", "get"})
	if err != nil || len(got) != 2 || got[0] != "get" {
		t.Fatalf("ValidatePermissions = %v, %v", got, err)
	}
	if all, _ := ValidatePermissions("keys", []string{"all"}); len(all) != len(KeyPermissions) {
		t.Fatal("all does not expand")
	}
	if _, err := ValidatePermissions("secrets", []string{"sign"}); err == nil || !errors.Is(err, ErrInvalid) {
		t.Fatalf("a key permission accepted for secrets: %v", err)
	}
}
