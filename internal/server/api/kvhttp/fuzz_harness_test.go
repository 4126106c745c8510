package kvhttp

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/fuzzstore"
)

// The fuzz targets' vault, its tenant, and the principal every request is
// made as (an access policy gives it every permission).
const (
	fzTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	fzSub    = "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
	fzOID    = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
	fzSuffix = "vault.coffer.example"
	fzHost   = "demo." + fzSuffix + ":8443"
)

// signingKeys is the verifier's key set: the one key the target signs its
// bearer tokens with.
type signingKeys struct{ k *token.SigningKey }

func (s signingKeys) PublicKey(kid string) (*rsa.PublicKey, bool) {
	if kid != s.k.ID {
		return nil, false
	}
	return &s.k.Private.PublicKey, true
}
func (signingKeys) Generation() uint64 { return 1 }

// kv is the data plane of one vault, assembled from the real services over
// the in-memory engine with the committed keyring (so that sealed seeds,
// such as backups, open), as server.New assembles it over a real store.
type kv struct {
	h       *Handler
	v       *vault.Vault
	bearer  string
	secrets *secret.Service
	keys    *key.Service
	certs   *cert.Service
}

func newKV(t testing.TB) *kv {
	t.Helper()
	ctx := context.Background()
	_, b := fuzzstore.Open(t)
	vaults, err := vault.Open(ctx, b, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: fzTenant, SubscriptionID: fzSub, RetentionDays: 7,
		AccessPolicies: []vault.AccessPolicy{{TenantID: fzTenant, ObjectID: fzOID, Permissions: vault.AllPermissions()}}}); err != nil {
		t.Fatal(err)
	}
	v, err := vaults.Get("demo")
	if err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.Open(ctx, b, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := endpoint.New(fzSuffix, 8443)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := token.NewSigningKey(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	issuer := func(tenant string) string { return ep.AuthorityURL() + "/" + tenant + "/v2.0" }
	now := time.Now()
	bearer, err := sk.Sign(token.Claims{Issuer: issuer(fzTenant), Subject: fzOID, Audience: ep.Resource(), IssuedAt: now.Unix(), NotBefore: now.Unix(),
		Expiry: now.Add(48 * time.Hour).Unix(), TenantID: fzTenant, ObjectID: fzOID, AppID: "5e3f2c1a-9b8d-4c7e-a6f5-1d2c3b4a5e6f", Version: "2.0"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	k := &kv{v: v, bearer: bearer, secrets: secret.New(b, b, nil), keys: key.New(b, b, nil)}
	k.certs = cert.New(b, b, k.keys, k.secrets, nil, log)
	t.Cleanup(k.certs.Close)
	k.h = New(Deps{Endpoints: ep, Access: access.New(roles), Vaults: vaults, Secrets: k.secrets, Keys: k.keys, Certs: k.certs,
		Verifier: token.NewVerifier(signingKeys{sk}, nil), Issuer: issuer, Log: log})
	return k
}

// answer is a response, read.
type answer struct {
	status int
	body   []byte
	err    azerror.Body // for a status of 400 and above
}

// do sends a request as the vault's principal; ok is false when the path
// or method is not a request a client could send.
func (k *kv) do(method, path, body string) (answer, bool) {
	r, err := http.NewRequest(method, "https://"+fzHost+path+"?api-version=7.6", strings.NewReader(body))
	if err != nil {
		return answer{}, false
	}
	r.Header.Set("Authorization", "Bearer "+k.bearer)
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	k.h.ServeHTTP(w, r)
	a := answer{status: w.Code}
	a.body, _ = io.ReadAll(w.Result().Body)
	if w.Code >= 400 {
		a.err, _ = azerror.Parse(a.body)
	}
	return a, true
}

// mustDo is do for the harness's own requests.
func (k *kv) mustDo(t testing.TB, method, path, body string, want int) answer {
	t.Helper()
	a, ok := k.do(method, path, body)
	if !ok || a.status != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, a.status, a.body, want)
	}
	return a
}

// check asserts what every answer must be: never a 500, an error in
// Azure's shape with a code and a message, and a success in JSON (or
// empty, for 204). secrets are values no answer may carry.
func check(t *testing.T, a answer, secrets ...string) {
	t.Helper()
	switch {
	case a.status >= 500:
		t.Fatalf("answered %d: %s", a.status, a.body)
	case a.status >= 400 && (a.err.Error.Code == "" || a.err.Error.Message == ""):
		t.Fatalf("error %d is not Azure's error shape: %s", a.status, a.body)
	case a.status < 400 && a.status != http.StatusNoContent && !json.Valid(a.body):
		t.Fatalf("%d with a body that is not JSON: %s", a.status, a.body)
	}
	if a.status >= 400 {
		for _, s := range secrets {
			if len(s) >= 8 && strings.Contains(a.err.Error.Message, s) {
				t.Fatalf("error %d carries a secret value: %s", a.status, a.err.Error.Message)
			}
		}
	}
}

// pathName escapes a fuzzed name as a path segment.
func pathName(s string) string { return url.PathEscape(s) }

// purge removes an object the target made, so the next input finds the
// name free; failures mean there was nothing to remove.
func (k *kv) purge(kind, name string) {
	ctx := context.Background()
	switch kind {
	case "secrets":
		k.secrets.Delete(ctx, k.v, name)
		k.secrets.Purge(ctx, k.v, name)
	case "keys":
		k.keys.Delete(ctx, k.v, name)
		k.keys.Purge(ctx, k.v, name)
	case "certificates":
		k.certs.Delete(ctx, k.v, name)
		k.certs.Purge(ctx, k.v, name)
	}
}
