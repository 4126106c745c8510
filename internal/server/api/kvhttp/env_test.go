package kvhttp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"

	"github.com/cofferhq/coffer/internal/server/api/kvhttp"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// env is the data plane over the real services, wired as server.build
// wires them, on the in-memory engine. Vaults:
//
//   - demo: access policies; the administrator holds every permission,
//     reader holds secrets get and list;
//   - rbac: RBAC, where the administrator's Key Vault Administrator at the
//     root applies, and nobody holds nothing;
//   - locked: access policies, with purge protection.
type env struct {
	h       *kvhttp.Handler
	ep      endpoint.Endpoints
	auth    *authority.Authority
	vaults  *vault.Registry
	feed    *changes.Feed
	state   bootstrap.State
	log     *syncbuf.Buffer
	secrets *secret.Service
	barrier *barrier.Barrier

	admin, reader, nobody, mgmt string // tokens
	readerSP                    authority.Principal
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, envOptions{})
}

// envOptions change how an env is wired.
type envOptions struct {
	// reauthorize is the vault watch's re-authorization period.
	reauthorize time.Duration
	// missAccessChanges leaves out telling the feed of access changes,
	// as if the server missed one: only the watch's timed passes see it.
	missAccessChanges bool
	// noWatch turns the vault watch off.
	noWatch bool
	// writeTimeout is the vault watch's write timeout.
	writeTimeout time.Duration
	// authorityNow is the authority's clock (and its verifier's).
	authorityNow func() time.Time
}

func newEnvWith(t testing.TB, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{log: &syncbuf.Buffer{}}
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	e.barrier = b
	seedSigningKey(t, b)
	if e.ep, err = endpoint.New(endpoint.DefaultSuffix, 8443); err != nil {
		t.Fatal(err)
	}
	if e.vaults, err = vault.Open(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.Open(ctx, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.auth, err = authority.Open(ctx, b, authority.Config{
		Host: e.ep.AuthorityURL(), Resources: []string{e.ep.Resource(), endpoint.ManagementResource}, RateLimit: -1, Roles: roles,
	}, o.authorityNow)
	if err != nil {
		t.Fatal(err)
	}
	st, adminSecret, err := bootstrap.Ensure(ctx, b, e.auth, roles)
	if err != nil {
		t.Fatal(err)
	}
	e.state = st
	tn, err := e.auth.Tenant(ctx, st.TenantID)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(e.log, nil))
	e.secrets = secret.New(b, b, nil)
	keys := key.New(b, b, nil)
	certs := cert.New(b, b, keys, e.secrets, nil, log)
	e.feed = changes.New()
	b.Subscribe(func(c physical.Change) {
		accessChanged := false
		for _, k := range c.Keys {
			if v, kind, name, ok := object.Named(k); ok {
				e.feed.Publish(changes.Subject(v, kind, name))
			}
			accessChanged = accessChanged || vault.IsKey(k) || rbac.IsKey(k)
		}
		if accessChanged && !o.missAccessChanges {
			e.feed.AccessChanged()
		}
	})
	e.h = kvhttp.New(kvhttp.Deps{Endpoints: e.ep, Access: access.New(roles), Vaults: e.vaults, Secrets: e.secrets, Keys: keys, Certs: certs,
		Verifier: e.auth.Verifier(), Issuer: e.auth.Issuer, Changes: e.feed, Log: log, WatchReauthorize: o.reauthorize, WatchWriteTimeout: o.writeTimeout, NoWatch: o.noWatch})
	t.Cleanup(e.feed.Close)

	e.admin = e.token(t, st.TenantID, st.AdminAppID, adminSecret, e.ep.Resource())
	e.mgmt = e.token(t, st.TenantID, st.AdminAppID, adminSecret, endpoint.ManagementResource)
	var readerSecret, nobodySecret string
	if e.readerSP, readerSecret, err = e.auth.CreateServicePrincipal(ctx, st.TenantID, "reader"); err != nil {
		t.Fatal(err)
	}
	e.reader = e.token(t, st.TenantID, e.readerSP.AppID, readerSecret, e.ep.Resource())
	nobodySP, nobodySecret, err := e.auth.CreateServicePrincipal(ctx, st.TenantID, "nobody")
	if err != nil {
		t.Fatal(err)
	}
	e.nobody = e.token(t, st.TenantID, nobodySP.AppID, nobodySecret, e.ep.Resource())
	for _, v := range []vault.Vault{
		{Name: "demo", AccessPolicies: []vault.AccessPolicy{
			{TenantID: st.TenantID, ObjectID: st.AdminObjectID, Permissions: vault.AllPermissions()},
			{TenantID: st.TenantID, ObjectID: e.readerSP.ObjectID, Permissions: vault.Permissions{Secrets: []string{"get", "list"}}},
		}},
		{Name: "rbac", RBAC: true},
		{Name: "locked", PurgeProtection: true, CreatedBy: st.AdminObjectID},
	} {
		v.TenantID, v.SubscriptionID = st.TenantID, tn.SubscriptionID
		if _, err := e.vaults.Create(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) token(t testing.TB, tenant, appID, secret, resource string) string {
	t.Helper()
	r, err := e.auth.Token(context.Background(), authority.TokenRequest{Tenant: tenant, GrantType: "client_credentials",
		ClientID: appID, ClientSecret: secret, Scope: resource + "/.default"})
	if err != nil {
		t.Fatal(err)
	}
	return r.AccessToken
}

// req is one data-plane request.
type req struct {
	vault  string // demo by default
	method string
	path   string // with its query; api-version=7.4 is added if absent
	body   string
	tok    string // "-" for none
	header map[string]string
}

type answer struct {
	status int
	header http.Header
	raw    string
	body   map[string]any
}

func (e *env) do(t testing.TB, r req) answer {
	t.Helper()
	return e.doCtx(t, context.Background(), r)
}

func (e *env) doCtx(t testing.TB, ctx context.Context, r req) answer {
	t.Helper()
	path := r.path
	if !strings.Contains(path, "api-version=") {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "api-version=7.4"
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr := httptest.NewRequestWithContext(ctx, cmpOr(r.method, "GET"), "https://"+cmpOr(r.vault, "demo")+".vault.localhost:8443"+path, body)
	switch r.tok {
	case "-":
	case "":
		hr.Header.Set("Authorization", "Bearer "+e.admin)
	default:
		hr.Header.Set("Authorization", "Bearer "+r.tok)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, hr)
	a := answer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &a.body); err != nil {
			t.Fatalf("%s %s: a JSON body that is not an object: %v\n%s", hr.Method, path, err, a.raw)
		}
	}
	return a
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// field reads a dotted path of object keys from the body.
func (a answer) field(path string) any {
	var v any = a.body
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func (a answer) str(path string) string {
	s, _ := a.field(path).(string)
	return s
}

// want is an expected answer: its status and, for errors, Key Vault's
// {"error":{"code","message","innererror":{"code"}}}.
type want struct {
	status int
	code   string
	inner  string
	msg    string
}

func check(t *testing.T, a answer, w want) {
	t.Helper()
	if a.status != w.status {
		t.Fatalf("status %d, want %d: %s", a.status, w.status, a.raw)
	}
	if w.status < 400 {
		return
	}
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("an error as %q, want Key Vault's JSON: %s", ct, a.raw)
	}
	e, ok := a.body["error"].(map[string]any)
	if !ok || len(a.body) != 1 {
		t.Fatalf("not Key Vault's error shape: %s", a.raw)
	}
	inner := ""
	if in, ok := e["innererror"].(map[string]any); ok {
		inner, _ = in["code"].(string)
	}
	msg, _ := e["message"].(string)
	if e["code"] != w.code || inner != w.inner || !strings.Contains(msg, w.msg) || msg == "" {
		t.Fatalf("error %v / %q %q, want %q / %q containing %q", e["code"], inner, msg, w.code, w.inner, w.msg)
	}
}

// waitHeld waits until n reads are held on the change feed.
func (e *env) waitHeld(t testing.TB, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); e.feed.Watching() != n; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads held, want %d", e.feed.Watching(), n)
		}
	}
}

// signingKeys are the records of one authority signing key, made once per
// package and copied into each env's store before the authority opens:
// generating an RSA-2048 key per env took most of the package's time
// under -race. Tests never depend on the key being their own.
var signingKeys = sync.OnceValues(func() ([]barrier.Op, error) {
	ctx := context.Background()
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		return nil, err
	}
	if _, err := authority.Open(ctx, b, authority.Config{Host: "https://seed.invalid", RateLimit: -1}, nil); err != nil {
		return nil, err
	}
	recs, err := b.Scan(ctx, "authority/signing/", "", 0)
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("no signing key to seed (%v)", err)
	}
	ops := make([]barrier.Op, len(recs))
	for i, r := range recs {
		ops[i] = barrier.Op{Key: r.Key, Value: r.Value}
	}
	return ops, nil
})

// seedSigningKey copies the package's signing key into b.
func seedSigningKey(t testing.TB, b *barrier.Barrier) {
	t.Helper()
	ops, err := signingKeys()
	if err == nil {
		err = b.Apply(context.Background(), nil, ops)
	}
	if err != nil {
		t.Fatal(err)
	}
}
