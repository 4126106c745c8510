package authority

import (
	"context"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// Rotations within one second give keys that tie on their created time
// (whole seconds). After a restart the authority must still sign with the
// key the last rotation made, not a retired one that ties with it.
func TestSignerAfterRotationsWithinOneSecond(t *testing.T) {
	ctx := context.Background()
	frozen := time.Unix(1_700_000_000, 0)
	now := func() time.Time { return frozen }
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.Open(ctx, b, now)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *Authority {
		a, err := Open(ctx, b, Config{Host: "https://auth.test", Resources: []string{resource}, Roles: roles, RateLimit: -1}, now)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := open()
	var last string
	for range 8 {
		if last, err = a.RotateSigningKey(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.signer().ID; got != last {
		t.Fatalf("signing with %s before the restart, want %s", got, last)
	}
	if got := open().signer().ID; got != last {
		t.Fatalf("after a restart, signing with %s, want %s (the last rotation's key)", got, last)
	}
}
