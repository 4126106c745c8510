package security

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// eventSink is an HTTPS endpoint for vault events that keeps every
// request's headers and body, for the canary to search.
type eventSink struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []string
}

func startEventSink(t *testing.T) *eventSink {
	s := &eventSink{}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var hdr strings.Builder
		r.Header.Write(&hdr)
		s.mu.Lock()
		s.got = append(s.got, hdr.String()+"\n"+string(b))
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *eventSink) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.srv.Certificate())
	return p
}

func (s *eventSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.got, "\n")
}

// The secret canary (CWE-532, CWE-209): unique values set through every
// server path that takes secret material or credentials, then searched for
// in the server's debug log, its audit log, its metrics, the vault events
// it sent, every error body and a handler panic's output. Each canary is
// distinctive enough that a match is a leak, not chance. (The driver's
// Kubernetes events are searched by TestCrossNamespaceSecretProviderClass.)
func TestSecretCanary(t *testing.T) {
	log := &syncbuf.Buffer{}
	sink := startEventSink(t)
	env := testserver.Start(t, testserver.Options{Log: log, TokenRateLimit: -1,
		AllowPrivateEndpoints: true, EgressRoots: sink.roots(), EventInterval: 20 * time.Millisecond})
	ctx := context.Background()
	sc, _ := env.Client.Secrets("demo")
	kc, _ := env.Client.Keys("demo")
	cc, _ := env.Client.Certificates("demo")
	tok := adminToken(t, env, env.Endpoints.Resource())
	canaries := map[string]string{} // path -> value that must not leak
	var bodies []string             // error bodies the server sent
	fresh := func(path string) string {
		v := "CANARY-" + strings.ReplaceAll(path, " ", "-") + "-" + rand.Text()
		canaries[path] = v
		return v
	}
	// A bearer token is a credential too: used on every request below.
	canaries["bearer token"] = tok
	// Every change below is delivered as an event, to be searched.
	var sub struct {
		Secret string `json:"secret"`
	}
	manage(t, env, "PUT", "vaults/demo/event-subscriptions/canary", mgmthttp.EventSubscriptionIn{Endpoint: sink.srv.URL + "/events",
		IncludedEventTypes: []string{"Microsoft.KeyVault.SecretNewVersionCreated", "Microsoft.KeyVault.KeyNewVersionCreated",
			"Microsoft.KeyVault.CertificateNewVersionCreated", "Coffer.KeyVault.SecretDeleted"}}, &sub)
	if sub.Secret == "" {
		t.Fatal("the subscription has no signing secret")
	}
	canaries["event subscription signing secret"] = sub.Secret

	t.Run("secret set", func(t *testing.T) {
		if _, err := sc.SetSecret(ctx, "canary", azsecrets.SetSecretParameters{Value: to.Ptr(fresh("secret set"))}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := sc.GetSecret(ctx, "canary", "", nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("secret backup and restore", func(t *testing.T) {
		if _, err := sc.SetSecret(ctx, "canary-backup", azsecrets.SetSecretParameters{Value: to.Ptr(fresh("backup"))}, nil); err != nil {
			t.Fatal(err)
		}
		b, err := sc.BackupSecret(ctx, "canary-backup", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sc.DeleteSecret(ctx, "canary-backup", nil); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the deleted secret to be purgeable", func() bool {
			_, err := sc.PurgeDeletedSecret(ctx, "canary-backup", nil)
			return err == nil
		})
		eventually(t, "the restore", func() bool {
			_, err := sc.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: b.Value}, nil)
			return err == nil
		})
		// The same blob again: a conflict whose error must not carry it.
		code, _, body := vaultCall(t, env, "POST", "/secrets/restore?api-version=7.6", tok, `{"value":"`+base64.RawURLEncoding.EncodeToString(b.Value)+`"}`)
		if code < 400 {
			t.Fatalf("a second restore: %d", code)
		}
		bodies = append(bodies, body)
	})
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	dB64 := base64.RawURLEncoding.EncodeToString(key.D.Bytes())
	t.Run("key import", func(t *testing.T) {
		canaries["key import (d)"] = dB64
		jwk := &azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeRSA), N: key.N.Bytes(), E: big.NewInt(int64(key.E)).Bytes(), D: key.D.Bytes(),
			P: key.Primes[0].Bytes(), Q: key.Primes[1].Bytes(), DP: key.Precomputed.Dp.Bytes(), DQ: key.Precomputed.Dq.Bytes(), QI: key.Precomputed.Qinv.Bytes()}
		if _, err := kc.ImportKey(ctx, "canary-key", azkeys.ImportKeyParameters{Key: jwk}, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("certificate import (PFX with a password)", func(t *testing.T) {
		ck, _ := rsa.GenerateKey(rand.Reader, 2048)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "canary"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ck.PublicKey, ck)
		cert, _ := x509.ParseCertificate(der)
		password := fresh("pfx password")
		pfx, err := pkcs12.Modern.Encode(ck, cert, nil, password)
		if err != nil {
			t.Fatal(err)
		}
		canaries["certificate import (key)"] = base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(ck))[40:120]
		if _, err := cc.ImportCertificate(ctx, "canary-cert", azcertificates.ImportCertificateParameters{
			Base64EncodedCertificate: to.Ptr(base64.StdEncoding.EncodeToString(pfx)), Password: to.Ptr(password)}, nil); err != nil {
			t.Fatal(err)
		}
		// A wrong password: the error names the failure, not the password.
		code, _, body := vaultCall(t, env, "POST", "/certificates/canary-cert2/import?api-version=7.6", tok,
			`{"value":"`+base64.StdEncoding.EncodeToString(pfx)+`","pwd":"`+fresh("wrong pfx password")+`"}`)
		if code < 400 {
			t.Fatalf("a wrong PFX password: %d", code)
		}
		bodies = append(bodies, body)
	})
	t.Run("certificate import (PEM with its key)", func(t *testing.T) {
		ck, _ := rsa.GenerateKey(rand.Reader, 2048)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: "canary-pem"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ck.PublicKey, ck)
		p8, _ := x509.MarshalPKCS8PrivateKey(ck)
		canaries["certificate import (PEM key)"] = base64.StdEncoding.EncodeToString(p8)[40:120]
		bundle := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		if _, err := cc.ImportCertificate(ctx, "canary-pem", azcertificates.ImportCertificateParameters{
			Base64EncodedCertificate: to.Ptr(bundle), CertificatePolicy: &azcertificates.CertificatePolicy{
				SecretProperties: &azcertificates.SecretProperties{ContentType: to.Ptr("application/x-pem-file")}}}, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("token request (client secret)", func(t *testing.T) {
		sp := servicePrincipal(t, env, "canary-sp")
		canaries["service principal password"] = sp.Password
		spToken(t, env, sp, env.Endpoints.Resource())
		// A wrong secret: refused, and not echoed.
		resp, err := env.Client.HTTP.PostForm(env.Endpoints.AuthorityURL()+"/"+env.State.TenantID+"/oauth2/v2.0/token", url.Values{
			"grant_type": {"client_credentials"}, "client_id": {sp.AppID}, "client_secret": {fresh("wrong client secret")},
			"scope": {env.Endpoints.Resource() + "/.default"}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("a wrong client secret: %d", resp.StatusCode)
		}
		bodies = append(bodies, string(b))
	})
	t.Run("handler panic", func(t *testing.T) {
		// A bug that panics with request data in hand: the middleware must
		// log neither the panic's value nor the body.
		v := fresh("panic value")
		srv := httptest.NewServer(env.Server.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			panic(fmt.Errorf("cannot handle %s", b))
		})))
		defer srv.Close()
		resp, err := http.Post(srv.URL+"/secrets/boom", "application/json", strings.NewReader(`{"value":"`+v+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 500 {
			t.Fatalf("a panicking handler: %d", resp.StatusCode)
		}
		bodies = append(bodies, string(b))
		if !strings.Contains(log.String(), "handler panic") {
			t.Fatal("the panic was not logged: the scan would prove nothing")
		}
	})
	t.Run("malformed bodies carrying values", func(t *testing.T) {
		for _, b := range []string{
			`{"value":"` + fresh("malformed: wrong type") + `","contentType":5}`,
			`{"value":"` + fresh("malformed: unterminated") + `"`,
			`{"value":"` + fresh("malformed: unknown attribute") + `","attributes":{"exp":"tomorrow"}}`,
		} {
			code, _, body := vaultCall(t, env, "PUT", "/secrets/canary-bad?api-version=7.6", tok, b)
			if code < 400 {
				t.Fatalf("%d for %s", code, b)
			}
			bodies = append(bodies, body)
		}
		// A value under an invalid name, and a value to a vault that does
		// not exist.
		code, _, body := vaultCall(t, env, "PUT", "/secrets/bad_name!?api-version=7.6", tok, `{"value":"`+fresh("invalid name")+`"}`)
		if code < 400 {
			t.Fatalf("invalid name: %d", code)
		}
		bodies = append(bodies, body)
	})

	// The events of the writes above have been delivered.
	eventually(t, "the events of the canary writes", func() bool {
		got := sink.String()
		for _, name := range []string{`"canary"`, `"canary-backup"`, `"canary-key"`, `"canary-cert"`, `"canary-pem"`} {
			if !strings.Contains(got, name) {
				return false
			}
		}
		return true
	})

	// Everything the server said: its debug log, the audit log, metrics,
	// events and the error bodies above.
	audit, err := os.ReadFile(filepath.Join(env.DataDir, "audit.log"))
	if err != nil {
		t.Fatalf("the audit log: %v", err)
	}
	rec := httptest.NewRecorder()
	env.Server.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(log.String(), `"level":"DEBUG"`) {
		t.Fatal("the server did not log at debug level: the scan would prove nothing")
	}
	outputs := map[string]string{"debug log": log.String(), "audit log": string(audit), "metrics": rec.Body.String(), "error bodies": strings.Join(bodies, "\n"), "events": sink.String()}
	for what, out := range outputs {
		if out == "" && what != "error bodies" {
			t.Errorf("%s is empty: the scan would prove nothing", what)
		}
		for path, v := range canaries {
			t.Run("canary: "+path+" not in the "+what, func(t *testing.T) {
				if strings.Contains(out, v) {
					t.Fatalf("the value set through %q is in the %s", path, what)
				}
			})
		}
	}
}
