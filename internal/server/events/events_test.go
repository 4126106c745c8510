package events

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cofferhq/coffer/internal/server/egress"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// endpointStub answers 503 while down, and records what it accepts. A stub
// rather than the CloudEvents SDK (test/sdk has that): this test is about
// what the service stores and retries, not about the wire.
type endpointStub struct {
	down atomic.Bool
	mu   sync.Mutex
	got  []CloudEvent
}

func (e *endpointStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if e.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var ce CloudEvent
	b, _ := io.ReadAll(r.Body)
	json.Unmarshal(b, &ce)
	e.mu.Lock()
	e.got = append(e.got, ce)
	e.mu.Unlock()
}

func (e *endpointStub) events() []CloudEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]CloudEvent(nil), e.got...)
}

type replica struct {
	b       *barrier.Barrier
	vaults  *vault.Registry
	secrets *secret.Service
	events  *Service
	reg     *prometheus.Registry
}

// open starts a "process" on the store behind phys: everything in memory is
// new, only the store is shared with earlier ones.
func open(t *testing.T, phys *inmem.Backend, key rootkey.Key, roots *x509.CertPool, maxAttempts int) *replica {
	return openScanning(t, phys, key, roots, maxAttempts, time.Nanosecond)
}

// openScanning is open with the interval of full passes given; writes are
// reported to the service as the server reports them.
func openScanning(t *testing.T, phys *inmem.Backend, key rootkey.Key, roots *x509.CertPool, maxAttempts int, scan time.Duration) *replica {
	t.Helper()
	ctx := context.Background()
	b, err := barrier.Open(ctx, phys, key)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := vault.Open(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := endpoint.New("vault.test", 443)
	reg := prometheus.NewRegistry()
	r := &replica{b: b, vaults: vs, secrets: secret.New(b, b, nil), reg: reg, events: New(Options{
		Store: b, Vaults: vs, Endpoints: ep, Egress: egress.Policy{AllowPrivate: true, Roots: roots},
		ScanInterval: scan, MaxAttempts: maxAttempts, Registerer: reg,
	})}
	b.Subscribe(func(c physical.Change) {
		for _, k := range c.Keys {
			r.events.Touch(k)
		}
	})
	return r
}

// Between full passes, a write is compared on its own, from the keys the
// store reports: its event goes out, and an untouched object makes none.
func TestWritesSeenBetweenFullPasses(t *testing.T) {
	phys, key := inmem.New(), rootkey.Generate()
	stub := &endpointStub{}
	srv := httptest.NewTLSServer(stub)
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	r := openScanning(t, phys, key, roots, 0, time.Hour)
	ctx := context.Background()
	v, err := r.vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: "t", SubscriptionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.events.Create(ctx, &v, Subscription{Name: "sub", Endpoint: srv.URL, IncludedEventTypes: []string{"Microsoft.KeyVault.SecretNewVersionCreated", "Coffer.KeyVault.SecretDeleted"}}); err != nil {
		t.Fatal(err)
	}
	r.events.Tick(ctx) // the first pass is full
	for _, name := range []string{"a", "b"} {
		if _, err := r.secrets.Set(ctx, &v, name, secret.SetParams{Value: new("x")}); err != nil {
			t.Fatal(err)
		}
	}
	r.events.Tick(ctx)
	if _, err := r.secrets.Delete(ctx, &v, "A"); err != nil {
		t.Fatal(err)
	}
	r.events.Tick(ctx)
	var got []string
	for _, e := range stub.events() {
		got = append(got, e.Type+" "+e.Subject)
	}
	if len(got) >= 2 {
		slices.Sort(got[:2]) // a and b were written in one pass: no order between objects
	}
	want := []string{"Microsoft.KeyVault.SecretNewVersionCreated a", "Microsoft.KeyVault.SecretNewVersionCreated b", "Coffer.KeyVault.SecretDeleted a"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

func setup(t *testing.T, maxAttempts int) (*inmem.Backend, rootkey.Key, *endpointStub, *httptest.Server, *replica) {
	phys, key := inmem.New(), rootkey.Generate()
	stub := &endpointStub{}
	srv := httptest.NewTLSServer(stub)
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	r := open(t, phys, key, roots, maxAttempts)
	if _, err := r.vaults.Create(context.Background(), vault.Vault{Name: "demo", TenantID: "t", SubscriptionID: "s"}); err != nil {
		t.Fatal(err)
	}
	return phys, key, stub, srv, r
}

// An event queued while the endpoint is down survives a restart: the next
// process, with nothing in memory, delivers it, once, with the same id.
func TestUndeliveredEventsSurviveRestart(t *testing.T) {
	phys, key, stub, srv, r1 := setup(t, 0)
	ctx := context.Background()
	v, _ := r1.vaults.Get("demo")
	if _, err := r1.events.Create(ctx, v, Subscription{Name: "sub", Endpoint: srv.URL}); err != nil {
		t.Fatal(err)
	}
	stub.down.Store(true)
	if _, err := r1.secrets.Set(ctx, v, "s", secret.SetParams{Value: new("x")}); err != nil {
		t.Fatal(err)
	}
	r1.events.Tick(ctx)
	if n := testutil.ToFloat64(r1.events.attempts.WithLabelValues("demo")); n != 1 || len(stub.events()) != 0 {
		t.Fatalf("while down: %v failed attempts, %d delivered", n, len(stub.events()))
	}

	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	r2 := open(t, phys, key, roots, 0)
	stub.down.Store(false)
	for deadline := time.Now().Add(30 * time.Second); len(stub.events()) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted service did not deliver the queued event")
		}
		r2.events.Tick(ctx) // retried after its backoff
	}
	r2.events.Tick(ctx)
	got := stub.events()
	if len(got) != 1 || got[0].Type != "Microsoft.KeyVault.SecretNewVersionCreated" || got[0].Data.ObjectName != "s" {
		t.Fatalf("delivered %+v, want one SecretNewVersionCreated for s", got)
	}
}

// After its last attempt an event is dropped and counted, in the metric
// and on the subscription, and the events behind it go on.
func TestDeadLetter(t *testing.T) {
	_, _, stub, srv, r := setup(t, 2)
	ctx := context.Background()
	v, _ := r.vaults.Get("demo")
	if _, err := r.events.Create(ctx, v, Subscription{Name: "sub", Endpoint: srv.URL}); err != nil {
		t.Fatal(err)
	}
	stub.down.Store(true)
	r.secrets.Set(ctx, v, "s", secret.SetParams{Value: new("x")})
	for deadline := time.Now().Add(30 * time.Second); testutil.ToFloat64(r.events.deadLettered.WithLabelValues("demo")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the event was never dead-lettered")
		}
		r.events.Tick(ctx)
	}
	sub, _, err := r.events.get(ctx, "demo", "sub")
	if err != nil || sub.DeadLettered != 1 {
		t.Fatalf("subscription counts %d dead-lettered, %v", sub.DeadLettered, err)
	}
	stub.down.Store(false)
	r.secrets.Set(ctx, v, "t", secret.SetParams{Value: new("y")})
	for deadline := time.Now().Add(30 * time.Second); len(stub.events()) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the next event was not delivered")
		}
		r.events.Tick(ctx)
	}
	if got := stub.events(); got[0].Data.ObjectName != "t" {
		t.Fatalf("delivered %+v, want t's event (s's was dropped)", got)
	}
}

// A change of a vault's access policies sends one VaultAccessPolicyChanged
// to the subscriptions that take it (by default, as one of Azure's types),
// seen from the vault's store key between full passes and by a full pass
// of another process; writes that leave the policies alone send none, and
// a subscription made after a change does not get it.
func TestVaultAccessPolicyChanged(t *testing.T) {
	phys, key := inmem.New(), rootkey.Generate()
	stub := &endpointStub{}
	srv := httptest.NewTLSServer(stub)
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	r := openScanning(t, phys, key, roots, 0, time.Hour)
	ctx := context.Background()
	v, err := r.vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: "t", SubscriptionID: "s", CreatedBy: "owner"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.events.Create(ctx, &v, Subscription{Name: "all", Endpoint: srv.URL}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.events.Create(ctx, &v, Subscription{Name: "secrets", Endpoint: srv.URL + "/secrets", IncludedEventTypes: []string{"Microsoft.KeyVault.SecretNewVersionCreated"}}); err != nil {
		t.Fatal(err)
	}
	r.events.Tick(ctx) // the first pass is full: the policies as created are no change
	if got := stub.events(); len(got) != 0 {
		t.Fatalf("the first pass sent %+v", got)
	}
	setPolicy := func(r *replica, oid string, remove bool) {
		t.Helper()
		if _, err := r.vaults.Update(ctx, "demo", func(v *vault.Vault) error {
			if remove {
				v.AccessPolicies = slices.DeleteFunc(v.AccessPolicies, func(ap vault.AccessPolicy) bool { return ap.ObjectID == oid })
			} else {
				v.AccessPolicies = append(v.AccessPolicies, vault.AccessPolicy{TenantID: "t", ObjectID: oid, Permissions: vault.Permissions{Secrets: []string{"get"}}})
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	access := func() []CloudEvent {
		var out []CloudEvent
		for _, e := range stub.events() {
			if e.Type == "Microsoft.KeyVault.VaultAccessPolicyChanged" {
				out = append(out, e)
			}
		}
		return out
	}

	setPolicy(r, "app", false)
	r.events.Tick(ctx)
	r.events.Tick(ctx)
	got := access()
	if len(got) != 1 {
		t.Fatalf("after set-policy: %d VaultAccessPolicyChanged, want 1 (all: %+v)", len(got), stub.events())
	}
	e := got[0]
	want := Data{ID: "https://demo.vault.test/", VaultName: "demo", ObjectType: "Vault", ObjectName: "demo"}
	if e.Data != want || e.Subject != "demo" || e.Source != v.ID() {
		t.Fatalf("event %+v, want data %+v about %s", e, want, v.ID())
	}

	// A secret's write and a setting other than access send no such event.
	if _, err := r.secrets.Set(ctx, &v, "s", secret.SetParams{Value: new("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.vaults.Update(ctx, "demo", func(v *vault.Vault) error { v.EnforceValidity = true; return nil }); err != nil {
		t.Fatal(err)
	}
	r.events.Tick(ctx)
	if got := access(); len(got) != 1 {
		t.Fatalf("a secret's write and a settings change sent %d more VaultAccessPolicyChanged", len(got)-1)
	}

	// Another process's full pass sees what this one did not compare, once
	// for both.
	setPolicy(r, "app", true)
	r2 := open(t, phys, key, roots, 0)
	r2.events.Tick(ctx)
	r.events.Tick(ctx)
	r2.events.Tick(ctx)
	if got := access(); len(got) != 2 {
		t.Fatalf("after delete-policy: %d VaultAccessPolicyChanged in all, want 2", len(got))
	}

	// A subscription made after a change: no event for it, on first sight
	// of the vault.
	late, err := r.vaults.Create(ctx, vault.Vault{Name: "late", TenantID: "t", SubscriptionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	setPolicyOn := func(name string) {
		if _, err := r.vaults.Update(ctx, name, func(v *vault.Vault) error {
			v.AccessPolicies = append(v.AccessPolicies, vault.AccessPolicy{TenantID: "t", ObjectID: "x", Permissions: vault.Permissions{Keys: []string{"get"}}})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	setPolicyOn("late")
	// Date the change a minute back (the registry's clock would need a
	// second to pass otherwise); the digest is the same, so it stays.
	if _, err := r.vaults.Update(ctx, "late", func(v *vault.Vault) error { v.AccessChanged -= 60; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := r.events.Create(ctx, &late, Subscription{Name: "late", Endpoint: srv.URL + "/late"}); err != nil {
		t.Fatal(err)
	}
	r.events.Tick(ctx)
	r2.events.Tick(ctx)
	if got := access(); len(got) != 2 {
		t.Fatalf("a change before the subscription was sent: %+v", got[2:])
	}
	if st, err := r.b.Get(ctx, "evstate/late/vault"); err != nil || !strings.Contains(string(st.Value), `"digest"`) || strings.Contains(string(st.Value), `"x"`) {
		t.Fatalf("the late vault's state: %s, %v; want a digest only", st.Value, err)
	}
	setPolicyOn("late")
	r.events.Tick(ctx)
	if got := access(); len(got) != 3 || got[2].Data.VaultName != "late" {
		t.Fatalf("a change after the subscription: %+v", got)
	}
}
