package cert

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/barrier"
	"github.com/cofferhq/coffer/internal/key"
	"github.com/cofferhq/coffer/internal/physical/inmem"
	"github.com/cofferhq/coffer/internal/rootkey"
	"github.com/cofferhq/coffer/internal/secret"
	"github.com/cofferhq/coffer/internal/vault"
)

func newService(t *testing.T, st *barrier.Barrier) *Service {
	t.Helper()
	s := New(st, st, key.New(st, st, nil), secret.New(st, st, nil), nil, nil)
	t.Cleanup(s.Close)
	return s
}

// An operation in progress when the server stopped (its record written,
// issuance not committed) completes after Resume on the next start.
func TestResumeFinishesInterruptedIssuance(t *testing.T) {
	ctx := context.Background()
	st, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	p := &Policy{X509Props: &X509Props{Subject: "CN=resumed"}, KeyProps: &KeyProps{Kty: "EC"}}
	if err := Normalize(p); err != nil {
		t.Fatal(err)
	}
	// What Create stores before it starts issuing.
	rec := pending{Name: "Resumed", Op: Operation{Issuer: *p.Issuer, Status: InProgress, RequestID: "r"}, Policy: *p}
	b, _ := json.Marshal(rec)
	if err := st.Apply(ctx, []barrier.Cond{{Key: opKey("demo", "Resumed")}}, []barrier.Op{{Key: opKey("demo", "Resumed"), Value: b}}); err != nil {
		t.Fatal(err)
	}
	s := newService(t, st)
	if n, err := s.Resume(ctx, v); err != nil || n != 1 {
		t.Fatalf("Resume = %d, %v", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		op, err := s.GetOperation(ctx, v, "Resumed")
		if err != nil {
			t.Fatal(err)
		}
		if op.Status == Completed {
			break
		}
		if op.Status != InProgress || time.Now().After(deadline) {
			t.Fatalf("operation %s: %+v", op.Status, op.Error)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := s.Get(ctx, v, "resumed", "")
	if err != nil || c.Name != "Resumed" {
		t.Fatalf("certificate after resume: %+v %v", c.Name, err)
	}
	// A completed operation is not resumed again.
	if n, _ := s.Resume(ctx, v); n != 0 {
		t.Fatalf("Resume restarted %d finished operations", n)
	}
}
