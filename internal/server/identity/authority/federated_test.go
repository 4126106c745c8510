package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/oidctest"
)

// countingStore is the real barrier, instrumented to count what a token
// request reads: the test's proof that the lookup is indexed.
type countingStore struct {
	Store
	gets, scans, scanned atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, key string) (barrier.Record, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

func (c *countingStore) Scan(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, error) {
	c.scans.Add(1)
	recs, err := c.Store.Scan(ctx, prefix, after, limit)
	c.scanned.Add(int64(len(recs)))
	return recs, err
}

func (c *countingStore) reset() { c.gets.Store(0); c.scans.Store(0); c.scanned.Store(0) }

type fedEnv struct {
	a   *Authority
	st  *countingStore
	b   *barrier.Barrier
	tn  Tenant
	mi  Principal
	iss *oidctest.Issuer
	cfg Config
}

func newFedEnv(t *testing.T, max int) *fedEnv {
	t.Helper()
	ctx := context.Background()
	b, _ := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	roles, _ := rbac.Open(ctx, b, nil)
	iss := oidctest.New(t)
	cfg := Config{Host: "https://auth.test", Resources: []string{resource}, Roles: roles, RateLimit: -1,
		Federation: federation.New(federation.Config{Egress: egress.Policy{AllowPrivate: true}, Client: iss.Client()}), MaxFederatedCredentials: max}
	st := &countingStore{Store: b}
	a, err := Open(ctx, st, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := a.CreateTenant(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	mi, err := a.CreateManagedIdentity(ctx, tn.ID, "apps", "shared")
	if err != nil {
		t.Fatal(err)
	}
	return &fedEnv{a: a, st: st, b: b, tn: tn, mi: mi, iss: iss, cfg: cfg}
}

func (e *fedEnv) token(t *testing.T, sub string) error {
	_, err := e.a.Token(context.Background(), TokenRequest{Tenant: e.tn.ID, GrantType: "client_credentials", ClientID: e.mi.AppID,
		ClientAssertionType: ClientAssertionType, ClientAssertion: e.iss.Token(t, sub, []string{federation.DefaultAudience}, time.Time{}, time.Time{}),
		Scope: resource + "/.default"})
	return err
}

func sa(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }

func expr(v string) *federation.Expression {
	return &federation.Expression{Value: v, LanguageVersion: 1}
}

// A thousand credentials on one identity, all for one issuer: each token
// still costs a handful of reads, none of which returns the thousand.
func TestThousandFederatedCredentials(t *testing.T) {
	ctx := context.Background()
	e := newFedEnv(t, 1000)
	aud := []string{federation.DefaultAudience}
	for i := range 990 {
		if _, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{
			Name: fmt.Sprintf("sa-%04d", i), Issuer: e.iss.URL, Subject: sa(fmt.Sprintf("ns-%d", i), "app"), Audiences: aud}); err != nil {
			t.Fatal(i, err)
		}
	}
	for i := range 10 {
		if _, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{
			Name: fmt.Sprintf("team-%d", i), Issuer: e.iss.URL, ClaimsMatchingExpression: expr(fmt.Sprintf("claims['sub'] matches 'system:serviceaccount:team-%d:*'", i)), Audiences: aud}); err != nil {
			t.Fatal(i, err)
		}
	}
	creds, err := e.a.ListFederatedCredentials(ctx, e.tn.ID, e.mi.AppID)
	if err != nil || len(creds) != 1000 {
		t.Fatalf("list: %d credentials, %v", len(creds), err)
	}
	// The 1001st is refused: the configured bound, not Entra's 20.
	_, err = e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "one-more", Issuer: e.iss.URL, Subject: sa("x", "y"), Audiences: aud})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "1000") {
		t.Fatalf("1001st: %v", err)
	}

	for _, c := range []struct {
		sub string
		ok  bool
	}{
		{sa("ns-0", "app"), true}, {sa("ns-989", "app"), true}, {sa("team-7", "anything"), true},
		{sa("ns-0", "other"), false}, {sa("team-7", "a:b"), false}, {sa("team-70", "app"), false}, {sa("ns-990", "app"), false},
	} {
		e.st.reset()
		err := e.token(t, c.sub)
		if (err == nil) != c.ok {
			t.Errorf("%s: token error %v, want ok=%v", c.sub, err, c.ok)
		}
		// The tenant and the principal, the exact-subject Get, the issuer
		// probe and one Scan per prefix of the subject (4 for a service
		// account); a refusal adds one Scan of at most 5, for its message.
		maxScans, maxRecords := int64(1+len(federation.SubjectPrefixes(c.sub))), int64(2)
		if !c.ok {
			maxScans, maxRecords = maxScans+1, 7
		}
		if g, s, n := e.st.gets.Load(), e.st.scans.Load(), e.st.scanned.Load(); g > 3 || s > maxScans || n > maxRecords {
			t.Errorf("%s: %d gets, %d scans returning %d records: not an indexed lookup", c.sub, g, s, n)
		}
	}

	// Issuer and subject stay unique per identity.
	_, err = e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "dup", Issuer: e.iss.URL, Subject: sa("ns-3", "app"), Audiences: aud})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "sa-0003") {
		t.Fatalf("duplicate subject: %v", err)
	}
	_, err = e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "dup", Issuer: e.iss.URL, ClaimsMatchingExpression: expr("claims['sub'] matches 'system:serviceaccount:team-1:*'"), Audiences: aud})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "team-1") {
		t.Fatalf("duplicate expression: %v", err)
	}

	// Replacing by name moves the index entry: the old subject is refused.
	if _, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "sa-0000", Issuer: e.iss.URL, Subject: sa("ns-0", "renamed"), Audiences: aud}); err != nil {
		t.Fatal(err)
	}
	if err := e.token(t, sa("ns-0", "app")); err == nil {
		t.Error("the replaced subject still gets tokens")
	}
	if err := e.token(t, sa("ns-0", "renamed")); err != nil {
		t.Errorf("the new subject: %v", err)
	}
	// Replacing a subject credential with an expression, in place.
	if _, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "sa-0001", Issuer: e.iss.URL, ClaimsMatchingExpression: expr("claims['sub'] matches 'system:serviceaccount:ns-1:*'"), Audiences: aud}); err != nil {
		t.Fatal(err)
	}
	if err := e.token(t, sa("ns-1", "someone")); err != nil {
		t.Errorf("the replacing expression: %v", err)
	}

	// Deleting frees a slot and stops the subject.
	if err := e.a.DeleteFederatedCredential(ctx, e.tn.ID, e.mi.AppID, "team-7"); err != nil {
		t.Fatal(err)
	}
	if err := e.token(t, sa("team-7", "anything")); err == nil {
		t.Error("a deleted expression still admits")
	}
	if err := e.a.DeleteFederatedCredential(ctx, e.tn.ID, e.mi.AppID, "team-7"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, federation.Credential{Name: "one-more", Issuer: e.iss.URL, Subject: sa("x", "y"), Audiences: aud}); err != nil {
		t.Errorf("after a delete: %v", err)
	}
	p, _ := e.a.Principal(ctx, e.tn.ID, e.mi.AppID)
	if p.FederatedCount != 1000 {
		t.Errorf("count %d, want 1000", p.FederatedCount)
	}
}

func TestFederatedValidation(t *testing.T) {
	ctx := context.Background()
	e := newFedEnv(t, 0)
	aud := []string{federation.DefaultAudience}
	cases := map[string]struct {
		c    federation.Credential
		want string
	}{
		"neither":       {federation.Credential{Name: "c1x", Issuer: e.iss.URL, Audiences: aud}, "give a subject"},
		"both":          {federation.Credential{Name: "c1x", Issuer: e.iss.URL, Subject: sa("a", "b"), ClaimsMatchingExpression: expr("claims['sub'] eq 'x'"), Audiences: aud}, "not both"},
		"bad expr":      {federation.Credential{Name: "c1x", Issuer: e.iss.URL, ClaimsMatchingExpression: expr("claims['sub'] matchs 'x'"), Audiences: aud}, "column 15"},
		"version":       {federation.Credential{Name: "c1x", Issuer: e.iss.URL, ClaimsMatchingExpression: &federation.Expression{Value: "claims['sub'] eq 'x'"}, Audiences: aud}, "languageVersion 0"},
		"wildcard sub":  {federation.Credential{Name: "c1x", Issuer: e.iss.URL, Subject: "system:serviceaccount:team-a:*", Audiences: aud}, "claims['sub'] matches 'system:serviceaccount:team-a:*'"},
		"spaced sub":    {federation.Credential{Name: "c1x", Issuer: e.iss.URL, Subject: " system:serviceaccount:a:b", Audiences: aud}, "spaces"},
		"two audiences": {federation.Credential{Name: "c1x", Issuer: e.iss.URL, Subject: sa("a", "b"), Audiences: []string{"a", "b"}}, "exactly one audience"},
		"http issuer":   {federation.Credential{Name: "c1x", Issuer: "http://x", Subject: sa("a", "b"), Audiences: aud}, "https"},
	}
	for name, c := range cases {
		_, err := e.a.AddFederatedCredential(ctx, e.tn.ID, e.mi.AppID, c.c)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalid mentioning %q", name, err, c.want)
		}
	}
	if p, _ := e.a.Principal(ctx, e.tn.ID, e.mi.AppID); p.FederatedCount != 0 {
		t.Errorf("refused credentials counted: %d", p.FederatedCount)
	}
}

// A store written before credentials had their own records keeps them
// inside the principal; opening the authority moves them, and tokens
// work throughout.
func TestLegacyFederatedMigrates(t *testing.T) {
	ctx := context.Background()
	e := newFedEnv(t, 0)
	aud := []string{federation.DefaultAudience}
	rec, err := e.b.Get(ctx, principalKey(e.tn.ID, e.mi.AppID))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	json.Unmarshal(rec.Value, &raw)
	raw["federatedCredentials"] = []federation.Credential{
		{Name: "old", Issuer: e.iss.URL, Subject: sa("legacy", "app"), Audiences: aud},
		{Name: "old-star", Issuer: e.iss.URL, Subject: "system:serviceaccount:legacy:*", Audiences: aud}, // valid then, exact still
	}
	b, _ := json.Marshal(raw)
	if err := e.b.Apply(ctx, nil, []barrier.Op{{Key: principalKey(e.tn.ID, e.mi.AppID), Value: b}}); err != nil {
		t.Fatal(err)
	}
	// Before any migration the inline credentials still admit.
	if err := e.token(t, sa("legacy", "app")); err != nil {
		t.Fatalf("legacy inline: %v", err)
	}
	a2, err := Open(ctx, e.st, e.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.a = a2
	p, _ := a2.Principal(ctx, e.tn.ID, e.mi.AppID)
	if len(p.LegacyFederated) != 0 || p.FederatedCount != 2 {
		t.Fatalf("after Open: %d inline, count %d", len(p.LegacyFederated), p.FederatedCount)
	}
	if err := e.token(t, sa("legacy", "app")); err != nil {
		t.Fatalf("migrated: %v", err)
	}
	if err := e.token(t, sa("legacy", "other")); err == nil {
		t.Fatal("the old '*' subject became a wildcard")
	}
	if err := e.token(t, "system:serviceaccount:legacy:*"); err != nil {
		t.Fatalf("the old '*' subject lost its exact meaning: %v", err)
	}
}
