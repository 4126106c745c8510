// Package bench holds the performance benchmarks of the vault server over
// real HTTPS keep-alive connections. They run with `make bench`, never as
// timed unit tests. The load generator shares the machine with the server.
//
// BenchmarkCeilingHTTPS serves a fixed response of the same size from a
// bare net/http handler through the same client: it measures what this
// machine's TLS and network stack allow, so the vault's figures can be read
// as a ratio to it.
package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/cli/bench"
	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

const workers = 32

func dialAll(b *testing.B, url, caFile string) []*bench.Conn {
	roots, err := httpclient.RootPool(caFile)
	if err != nil {
		b.Fatal(err)
	}
	conns := make([]*bench.Conn, workers)
	for i := range conns {
		c, err := bench.Dial(context.Background(), url, roots, httpclient.LoopbackLocalhost)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}

// runParallel spreads b.N requests over the connections and reports
// throughput and latency percentiles.
func runParallel(b *testing.B, conns []*bench.Conn, op func(c *bench.Conn) (int, error)) {
	for _, c := range conns { // warm every connection
		if status, err := op(c); err != nil || status != 200 {
			b.Fatalf("warm-up: %d %v", status, err)
		}
	}
	bench.RunB(b, len(conns), "req/s", func(w int) error {
		if status, err := op(conns[w]); err != nil || status != 200 {
			return fmt.Errorf("request: %d %v", status, err)
		}
		return nil
	})
}

func token(b *testing.B, env *testserver.Env) string {
	tok, err := env.Client.Token(context.Background(), env.Endpoints.Resource())
	if err != nil {
		b.Fatal(err)
	}
	return tok
}

const getPath = "/secrets/bench?api-version=7.6"

func BenchmarkSecretGetHTTPS(b *testing.B) {
	env := testserver.Start(b, testserver.Options{})
	tok := token(b, env)
	conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
	if status, err := conns[0].Do("PUT", getPath, tok, []byte(`{"value":"`+strings.Repeat("v", 64)+`"}`)); err != nil || status != 200 {
		b.Fatalf("PUT: %d %v", status, err)
	}
	runParallel(b, conns, func(c *bench.Conn) (int, error) { return c.Do("GET", getPath, tok, nil) })
}

func BenchmarkSecretPutDurable(b *testing.B) {
	env := testserver.Start(b, testserver.Options{})
	tok := token(b, env)
	conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
	body := []byte(`{"value":"` + strings.Repeat("v", 64) + `"}`)
	var n atomic.Int64
	runParallel(b, conns, func(c *bench.Conn) (int, error) {
		return c.Do("PUT", fmt.Sprintf("/secrets/w%d?api-version=7.6", n.Add(1)%256), tok, body)
	})
}

func BenchmarkCeilingHTTPS(b *testing.B) {
	// The same response a vault GET returns, from a handler that does nothing.
	body := []byte(`{"value":"` + strings.Repeat("v", 64) + `","id":"https://demo.vault.localhost:8443/secrets/bench/0123456789abcdef0123456789abcdef","attributes":{"enabled":true,"created":1795000000,"updated":1795000000,"recoveryLevel":"Recoverable+Purgeable","recoverableDays":90}}`)
	files, err := pki.EnsureDev(filepath.Join(b.TempDir(), "tls"), "vault.localhost", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Write(body)
	}))
	srv.TLS = tlsConfig(b, files)
	srv.StartTLS()
	b.Cleanup(srv.Close)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	conns := dialAll(b, "https://demo.vault.localhost:"+port+"/", files.CACert)
	tok := strings.Repeat("t", 1100) // about the size of a real access token
	runParallel(b, conns, func(c *bench.Conn) (int, error) { return c.Do("GET", getPath, tok, nil) })
}

// BenchmarkTokenIssuance runs the client-credentials grant over HTTPS: a
// secret check and an RS256 signature per token.
func BenchmarkTokenIssuance(b *testing.B) {
	env := testserver.Start(b, testserver.Options{TokenRateLimit: -1})
	conns := dialAll(b, env.Endpoints.AuthorityURL()+"/", env.Admin.CAFile)
	form := []byte(url.Values{"grant_type": {"client_credentials"}, "client_id": {env.Admin.ClientID},
		"client_secret": {env.Admin.ClientSecret}, "scope": {env.Endpoints.Resource() + "/.default"}}.Encode())
	path := "/" + env.State.TenantID + "/oauth2/v2.0/token"
	runParallel(b, conns, func(c *bench.Conn) (int, error) {
		return c.Send("POST", path, "", "application/x-www-form-urlencoded", form)
	})
}

// BenchmarkSecretGetHTTPS100Policies is BenchmarkSecretGetHTTPS on a vault
// with 100 access policies, the caller's last.
func BenchmarkSecretGetHTTPS100Policies(b *testing.B) {
	env := testserver.Start(b, testserver.Options{})
	fill100Policies(b, env)
	tok := token(b, env)
	conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
	if status, err := conns[0].Do("PUT", getPath, tok, []byte(`{"value":"`+strings.Repeat("v", 64)+`"}`)); err != nil || status != 200 {
		b.Fatalf("PUT: %d %v", status, err)
	}
	runParallel(b, conns, func(c *bench.Conn) (int, error) { return c.Do("GET", getPath, tok, nil) })
}

// fill100Policies puts 99 other principals' policies before the caller's.
func fill100Policies(b *testing.B, env *testserver.Env) {
	_, err := env.Server.Vaults.Update(context.Background(), "demo", func(v *vault.Vault) error {
		admin := v.AccessPolicies[0]
		v.AccessPolicies = nil
		for range 99 {
			v.AccessPolicies = append(v.AccessPolicies, vault.AccessPolicy{TenantID: v.TenantID, ObjectID: authority.NewGUID(),
				Permissions: vault.Permissions{Secrets: []string{"list", "set"}}})
		}
		v.AccessPolicies = append(v.AccessPolicies, admin)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAuthorize measures the authorization decision alone, for the
// caller whose policy is the last of 100, and for an RBAC vault where the
// caller's grant is the last of 100 assignments.
func BenchmarkAuthorize(b *testing.B) {
	env := testserver.Start(b, testserver.Options{})
	fill100Policies(b, env)
	v, _ := env.Server.Vaults.Get("demo")
	p := access.Principal{TenantID: env.State.TenantID, ObjectID: env.State.AdminObjectID}
	b.Run("policies=100", func(b *testing.B) {
		for range b.N {
			if err := env.Server.Access.Data(v, p, access.SecretGet, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
	rv := *v
	rv.RBAC = true
	caller := access.Principal{TenantID: env.State.TenantID, ObjectID: authority.NewGUID()}
	for i := range 100 {
		oid := authority.NewGUID()
		if i == 99 {
			oid = caller.ObjectID
		}
		env.Server.Roles.Create(context.Background(), rbac.Assignment{TenantID: rv.TenantID, RoleID: rbac.KeyVaultSecretsUserID, PrincipalID: oid, Scope: rv.ID()})
	}
	b.Run("rbac-assignments=100", func(b *testing.B) {
		for range b.N {
			if err := env.Server.Access.Data(&rv, caller, access.SecretGet, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkKeySign signs a SHA-256 digest through POST /keys/{name}/sign
// over HTTPS (api/...) and with Go's crypto called directly on a key of the
// same type (go/...), with the same 32 workers; the ratio of their ops/s is
// the API's overhead.
func BenchmarkKeySign(b *testing.B) {
	env := testserver.Start(b, testserver.Options{})
	tok := token(b, env)
	conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
	digest := sha256.Sum256([]byte("the message"))
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, k := range []struct {
		name, create, alg string
		local             func() error
	}{
		{"rsa2048", `{"kty":"RSA","key_size":2048}`, "RS256", func() error {
			_, err := rsa.SignPKCS1v15(nil, rsaKey, crypto.SHA256, digest[:])
			return err
		}},
		{"p256", `{"kty":"EC","crv":"P-256"}`, "ES256", func() error {
			_, err := ecdsa.SignASN1(rand.Reader, ecKey, digest[:])
			return err
		}},
	} {
		if status, err := conns[0].Do("POST", "/keys/"+k.name+"/create?api-version=7.6", tok, []byte(k.create)); err != nil || status != 200 {
			b.Fatalf("create %s: %d %v", k.name, status, err)
		}
		body := []byte(`{"alg":"` + k.alg + `","value":"` + base64.RawURLEncoding.EncodeToString(digest[:]) + `"}`)
		b.Run("api/"+k.name, func(b *testing.B) {
			runParallel(b, conns, func(c *bench.Conn) (int, error) {
				return c.Do("POST", "/keys/"+k.name+"/sign?api-version=7.6", tok, body)
			})
		})
		b.Run("go/"+k.name, func(b *testing.B) {
			bench.RunB(b, workers, "req/s", func(int) error { return k.local() })
		})
	}
}

// BenchmarkSecretGetHandler is BenchmarkSecretGetHTTPS without TLS, the
// network or the client: the server's whole handler chain (middleware,
// authentication, authorization, the read, the response and the audit
// line) called directly, so that its own CPU and allocations per request
// can be read exactly. The audit writer runs on its own goroutine, so its
// cost shows in the CPU profile, not in ns/op. Overload protection is off:
// called directly, the handler outruns what it judges a healthy rate.
func BenchmarkSecretGetHandler(b *testing.B) {
	env := testserver.Start(b, testserver.Options{OverloadCapacity: -1})
	tok := token(b, env)
	conns := dialAll(b, env.Admin.VaultURL, env.Admin.CAFile)
	if status, err := conns[0].Do("PUT", getPath, tok, []byte(`{"value":"`+strings.Repeat("v", 64)+`"}`)); err != nil || status != 200 {
		b.Fatalf("PUT: %d %v", status, err)
	}
	h := env.Server.Handler()
	u, err := url.Parse(env.Admin.VaultURL)
	if err != nil {
		b.Fatal(err)
	}
	target, err := url.Parse(getPath)
	if err != nil {
		b.Fatal(err)
	}
	auth := []string{"Bearer " + tok}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			// Built by hand: httptest.NewRequest parses a request line
			// through a fresh 4 KiB reader, which outweighed the handler.
			r := &http.Request{Method: "GET", URL: target, RequestURI: getPath, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Authorization": auth}, Host: u.Host, RemoteAddr: "127.0.0.1:40000", Body: http.NoBody}
			clear(w.h)
			w.status = 0
			h.ServeHTTP(w, r)
			if w.status != http.StatusOK {
				b.Errorf("GET: %d", w.status)
				return
			}
		}
	})
}

// discardWriter is the least a ResponseWriter can do, so that the
// benchmark measures the handler rather than a recorder.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
func (w *discardWriter) WriteHeader(s int) { w.status = s }
