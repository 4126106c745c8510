package cert

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// smallBatches is a store that takes at most 24 operations in one Apply,
// as etcd takes 128, so that a certificate of a few versions is restored
// in batches; before its at-th Apply it runs before.
type smallBatches struct {
	*barrier.Barrier
	n, at  int
	before func()
}

func (s *smallBatches) BatchLimits() (int, int, bool) { return 24, 1 << 20, true }

func (s *smallBatches) Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error {
	if s.n++; s.n == s.at && s.before != nil {
		s.before()
	}
	return s.Barrier.Apply(ctx, conds, ops)
}

func serviceOn(t *testing.T, st *smallBatches) *Service { return serviceOver(t, st, st.Barrier) }

// A purge on another replica (a Service of its own, whose locks this one
// does not share) between the batches of a certificate's restore takes it
// over: the restore says it was interrupted and to restore again, not that
// the name is in use, leaves nothing of the certificate, its key or its
// secret, and a second restore succeeds.
func TestRestoreInBatchesInterruptedByAPurge(t *testing.T) {
	ctx := context.Background()
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	s := serviceOn(t, &smallBatches{Barrier: b})
	const versions = 12 // three objects of 12 versions: more than one batch of 24
	importVersions(t, s, v, "big", versions)
	blob, err := s.Backup(ctx, v, "big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, v, "big"); err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, v, "big"); err != nil {
		t.Fatal(err)
	}

	// The restore's batches: 1 the three records and current versions,
	// then the versions, then the last makes all three live. A purge
	// before any batch after the first interrupts it.
	for at := 2; at <= 4; at++ {
		other := serviceOn(t, &smallBatches{Barrier: b})
		var purged error
		restorer := serviceOn(t, &smallBatches{Barrier: b, at: at, before: func() { purged = other.Purge(ctx, v, "big") }})
		_, err := restorer.Restore(ctx, v, blob)
		if purged != nil {
			t.Fatalf("the purge before batch %d of the restore: %v", at, purged)
		}
		if !errors.Is(err, object.ErrExists) || !strings.Contains(err.Error(), "was interrupted") || !strings.Contains(err.Error(), "Restore it again") {
			t.Fatalf("a restore purged before its batch %d = %v; want it to say it was interrupted and to restore again", at, err)
		}
		for what, get := range map[string]func() error{
			"certificate": func() error { _, err := s.GetDeleted(ctx, v, "big"); return err },
			"key":         func() error { _, _, err := s.keys.GetDeleted(ctx, v.Name, "big"); return err },
			"secret":      func() error { _, _, err := s.secrets.GetDeleted(ctx, v.Name, "big"); return err },
		} {
			if err := get(); !errors.Is(err, object.ErrNotFound) {
				t.Fatalf("after a restore interrupted before batch %d, the %s is left: %v", at, what, err)
			}
		}
		if left, err := b.Scan(ctx, "o/demo/", "", 0); err != nil || len(left) != 0 {
			t.Fatalf("after a restore interrupted before batch %d, %d keys of the vault are left (%v)", at, len(left), err)
		}
	}
	c, err := s.Restore(ctx, v, blob)
	if err != nil {
		t.Fatalf("restore again: %v", err)
	}
	if certs, _, err := s.ListVersions(ctx, v, "big", "", 0); err != nil || len(certs) != versions || c.Name != "big" {
		t.Fatalf("after restoring again: %d versions, %v", len(certs), err)
	}
}
