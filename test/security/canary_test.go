package security

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// The secret canary (CWE-532, CWE-209): unique values set through every
// server path that takes secret material, then searched for in the
// server's debug log, its audit log, its metrics and every error body.
// Each canary is distinctive enough that a match is a leak, not chance.
func TestSecretCanary(t *testing.T) {
	log := &syncbuf.Buffer{}
	env := testserver.Start(t, testserver.Options{Log: log, TokenRateLimit: -1})
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

	// Everything the server said: its debug log, the audit log, metrics
	// and the error bodies above.
	audit, err := os.ReadFile(filepath.Join(env.DataDir, "audit.log"))
	if err != nil {
		t.Fatalf("the audit log: %v", err)
	}
	rec := httptest.NewRecorder()
	env.Server.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(log.String(), `"level":"DEBUG"`) {
		t.Fatal("the server did not log at debug level: the scan would prove nothing")
	}
	outputs := map[string]string{"debug log": log.String(), "audit log": string(audit), "metrics": rec.Body.String(), "error bodies": strings.Join(bodies, "\n")}
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
