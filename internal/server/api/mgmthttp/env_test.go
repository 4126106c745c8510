package mgmthttp_test

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

	"github.com/cofferhq/coffer/internal/testing/syncbuf"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// env is the management API over the real services, as server.build
// wires them, on the in-memory engine: a bootstrapped tenant with its
// administrator, vault demo, and a principal that holds no role.
type env struct {
	h       http.Handler
	ep      endpoint.Endpoints
	auth    *authority.Authority
	vaults  *vault.Registry
	roles   *rbac.Assignments
	barrier *barrier.Barrier
	state   bootstrap.State
	sub     string
	clock   *clock
	log     *syncbuf.Buffer

	admin, nobody string // management tokens
	nobodySP      authority.Principal
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// operator rotates the barrier's keys, as the server does; the server's
// own Operator also persists a root key file, which needs a data
// directory and is tested with it.
type operator struct{ b *barrier.Barrier }

func (o operator) RotateRootKey(ctx context.Context, provided *rootkey.Key) (mgmthttp.RootKeyRotation, error) {
	if provided == nil {
		return mgmthttp.RootKeyRotation{}, mgmthttp.BadRequest("this test server reads its root key from the environment: pass newRootKey")
	}
	if err := o.b.RotateRootKey(ctx, *provided); err != nil {
		return mgmthttp.RootKeyRotation{}, err
	}
	return mgmthttp.RootKeyRotation{RootKeyID: provided.ID(), FromEnv: true}, nil
}

func (o operator) RotateDataKey(ctx context.Context) (uint32, error) { return o.b.RotateDataKey(ctx) }

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{clock: &clock{t: time.Now()}, log: &syncbuf.Buffer{}}
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	e.barrier = b
	seedSigningKey(t, b)
	if e.ep, err = endpoint.New(endpoint.DefaultSuffix, 8443); err != nil {
		t.Fatal(err)
	}
	if e.vaults, err = vault.Open(ctx, b, e.clock.now); err != nil {
		t.Fatal(err)
	}
	if e.roles, err = rbac.Open(ctx, b, e.clock.now); err != nil {
		t.Fatal(err)
	}
	e.auth, err = authority.Open(ctx, b, authority.Config{
		Host: e.ep.AuthorityURL(), Resources: []string{e.ep.Resource(), endpoint.ManagementResource},
		RateLimit: -1, Roles: e.roles, TokenLifetime: time.Hour,
	}, e.clock.now)
	if err != nil {
		t.Fatal(err)
	}
	st, secret, err := bootstrap.Ensure(ctx, b, e.auth, e.roles)
	if err != nil {
		t.Fatal(err)
	}
	e.state = st
	tn, err := e.auth.Tenant(ctx, st.TenantID)
	if err != nil {
		t.Fatal(err)
	}
	e.sub = tn.SubscriptionID
	if _, err := e.vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: st.TenantID, SubscriptionID: e.sub, CreatedBy: st.AdminObjectID}); err != nil {
		t.Fatal(err)
	}
	e.h = mgmthttp.New(mgmthttp.Deps{Endpoints: e.ep, Authority: e.auth, Vaults: e.vaults, Roles: e.roles,
		Access: access.New(e.roles), Operator: operator{b}, Log: slog.New(slog.NewJSONHandler(e.log, nil))})
	e.admin = e.token(t, st.TenantID, st.AdminAppID, secret, endpoint.ManagementResource)
	sp, spSecret, err := e.auth.CreateServicePrincipal(ctx, st.TenantID, "nobody")
	if err != nil {
		t.Fatal(err)
	}
	e.nobodySP = sp
	e.nobody = e.token(t, st.TenantID, sp.AppID, spSecret, endpoint.ManagementResource)
	return e
}

// token gets an access token from the authority itself, as its token
// endpoint would hand it out.
func (e *env) token(t testing.TB, tenant, appID, secret, resource string) string {
	t.Helper()
	r, err := e.auth.Token(context.Background(), authority.TokenRequest{Tenant: tenant, GrantType: "client_credentials",
		ClientID: appID, ClientSecret: secret, Scope: resource + "/.default"})
	if err != nil {
		t.Fatal(err)
	}
	return r.AccessToken
}

// answer is a response: status, headers, the raw body and, for JSON
// bodies, the decoded object.
type answer struct {
	status int
	header http.Header
	raw    string
	body   map[string]any
}

// do sends a request with the token tok ("" for none) and body ("" for
// none).
func (e *env) do(t testing.TB, method, path, tok, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, "https://"+e.ep.Apex()+path, rd)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, r)
	a := answer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &a.body); err != nil {
			t.Fatalf("%s %s: a JSON body that is not an object: %v\n%s", method, path, err, a.raw)
		}
	}
	return a
}

// errCode returns the error body's code and message.
func (a answer) errCode() (string, string) {
	e, _ := a.body["error"].(map[string]any)
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	return code, msg
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
