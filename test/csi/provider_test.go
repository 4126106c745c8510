package csi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	secretsstore "sigs.k8s.io/secrets-store-csi-driver/pkg/secrets-store"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/oidctest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// testCert is a self-signed EC certificate with its key, as PEM.
func testCert(t testing.TB, cn string) (string, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), cert
}

// seedVault fills vault demo with one object of every kind the content
// rules treat differently, and returns the key's public part and the
// certificates.
func seedVault(t *testing.T, env *testserver.Env) (*azkeys.JSONWebKey, *x509.Certificate, *x509.Certificate) {
	t.Helper()
	ctx := context.Background()
	setSecret(t, env, "plain", "hello")
	setSecret(t, env, "blob", base64.StdEncoding.EncodeToString([]byte("bin\x00\x01\xff")))
	// No pause between versions: the history keeps their true order even
	// when they share a creation second.
	for i := 1; i <= 4; i++ {
		setSecret(t, env, "hist", "v"+string(rune('0'+i)))
	}
	kc, _ := env.Client.Keys("demo")
	k, err := kc.CreateKey(ctx, "signer", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP384)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, _ := env.Client.Certificates("demo")
	pemCert, webCert := testCert(t, "web.example.com")
	if _, err := cc.ImportCertificate(ctx, "web", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pemCert}, nil); err != nil {
		t.Fatal(err)
	}
	pfxPEM, pfxCert := testCert(t, "pfx.example.com")
	if _, err := cc.ImportCertificate(ctx, "pfxcert", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pfxPEM,
		CertificatePolicy: &azcertificates.CertificatePolicy{SecretProperties: &azcertificates.SecretProperties{ContentType: to.Ptr("application/x-pkcs12")}}}, nil); err != nil {
		t.Fatal(err)
	}
	return k.Key, webCert, pfxCert
}

var everyKind = objects(
	"objectName: plain\nobjectType: secret\nobjectAlias: SECRET_1",
	"objectName: blob\nobjectType: secret\nobjectEncoding: base64\nfilePermission: \"0600\"",
	"objectName: hist\nobjectType: secret\nobjectVersionHistory: 3",
	"objectName: signer\nobjectType: key",
	"objectName: web\nobjectType: cert",
	"objectName: web\nobjectType: secret\nobjectAlias: web-bundle.pem",
	"objectName: pfxcert\nobjectType: secret\nobjectAlias: pfx-as-pem",
	"objectName: pfxcert\nobjectType: secret\nobjectFormat: pfx\nobjectEncoding: base64\nobjectAlias: raw.pfx",
)

// The upstream driver's own provider-client code (PluginClientBuilder and
// MountContent, which also writes the files with the upstream atomic
// writer) mounts through Coffer's provider, named azure as an existing
// SecretProviderClass expects. Every content rule is checked on disk.
func TestUpstreamClientMountsThroughCofferProvider(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	jwk, webCert, pfxCert := seedVault(t, env)
	sp := servicePrincipal(t, env, "csi-reader", []string{"get", "list"}, []string{"get", "list"}, []string{"get", "list"})
	p := startProvider(t, env, "azure")

	builder := secretsstore.NewPluginClientBuilder([]string{p.Dir})
	defer builder.Cleanup()
	ctx := context.Background()
	client, err := builder.Get(ctx, "azure")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := secretsstore.Version(ctx, client); err != nil || v == "" {
		t.Fatalf("Version: %q %v", v, err)
	}
	target := t.TempDir()
	versions, code, err := secretsstore.MountContent(ctx, client, mustJSON(spAttributes(env, everyKind)), mustJSON(spSecrets(sp)), target, "420", nil)
	if err != nil {
		t.Fatalf("MountContent: %s %v", code, err)
	}
	if readFile(t, filepath.Join(target, "SECRET_1")) != "hello" {
		t.Fatal("plain secret under its alias")
	}
	if readFile(t, filepath.Join(target, "blob")) != "bin\x00\x01\xff" {
		t.Fatal("base64 objectEncoding not decoded")
	}
	if fi, _ := os.Stat(filepath.Join(target, "blob")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("filePermission 0600 gave %v", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(filepath.Join(target, "SECRET_1")); fi.Mode().Perm() != 0o644 {
		t.Fatalf("default mode %v", fi.Mode().Perm())
	}
	for i, want := range []string{"v4", "v3", "v2"} {
		if got := readFile(t, filepath.Join(target, "hist", string(rune('0'+i)))); got != want {
			t.Fatalf("hist/%d = %q, want %q (newest first, 3 versions)", i, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "hist", "3")); err == nil {
		t.Fatal("objectVersionHistory 3 wrote a fourth version")
	}
	// key: PKIX public key PEM matching the vault's key.
	b, _ := pem.Decode([]byte(readFile(t, filepath.Join(target, "signer"))))
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil || b.Type != "PUBLIC KEY" {
		t.Fatalf("key file: %v", err)
	}
	if raw, _ := pub.(*ecdsa.PublicKey).Bytes(); !bytes.Equal(raw[1:49], jwk.X) {
		t.Fatal("key file holds another key")
	}
	// cert: the leaf alone.
	b, rest := pem.Decode([]byte(readFile(t, filepath.Join(target, "web"))))
	if b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, webCert.Raw) || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatal("cert file is not the leaf alone")
	}
	// A certificate's secret: PKCS#8 key then the chain, from PEM and from PFX.
	for file, cert := range map[string]*x509.Certificate{"web-bundle.pem": webCert, "pfx-as-pem": pfxCert} {
		kb, rest := pem.Decode([]byte(readFile(t, filepath.Join(target, file))))
		cb, _ := pem.Decode(rest)
		if kb == nil || kb.Type != "PRIVATE KEY" || cb == nil || !bytes.Equal(cb.Bytes, cert.Raw) {
			t.Fatalf("%s is not a PKCS#8 key then the certificate", file)
		}
		key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil || !key.(*ecdsa.PrivateKey).PublicKey.Equal(cert.PublicKey) {
			t.Fatalf("%s: the key does not match the certificate", file)
		}
	}
	// objectFormat pfx with objectEncoding base64: the binary PFX.
	if _, leaf, err := pkcs12.Decode([]byte(readFile(t, filepath.Join(target, "raw.pfx"))), ""); err != nil || !leaf.Equal(pfxCert) {
		t.Fatalf("raw.pfx: %v", err)
	}
	// Object versions, with Azure's ids.
	for _, id := range []string{"secret/plain", "secret/blob", "secret/hist/0", "secret/hist/2", "key/signer", "cert/web", "secret/web", "secret/pfxcert"} {
		if len(versions[id]) != 32 {
			t.Fatalf("object version %s = %q (all: %v)", id, versions[id], versions)
		}
	}

	// Nothing changed: a second mount costs conditional reads only, with no
	// value transferred.
	fetched, notModified := p.vaultRequests(t, "fetched"), p.vaultRequests(t, "not_modified")
	again := t.TempDir()
	if _, code, err := secretsstore.MountContent(ctx, client, mustJSON(spAttributes(env, everyKind)), mustJSON(spSecrets(sp)), again, "420", versions); err != nil {
		t.Fatalf("second MountContent: %s %v", code, err)
	}
	if got := p.vaultRequests(t, "fetched"); got != fetched {
		t.Fatalf("an unchanged volume transferred %v values", got-fetched)
	}
	if got := p.vaultRequests(t, "not_modified"); got-notModified != 10 {
		t.Fatalf("%v conditional reads answered 304, want 10 (one per file)", got-notModified)
	}
	if readFile(t, filepath.Join(again, "SECRET_1")) != "hello" {
		t.Fatal("cached content differs")
	}
	// A change is fetched.
	setSecret(t, env, "plain", "hello again")
	if _, _, err := secretsstore.MountContent(ctx, client, mustJSON(spAttributes(env, everyKind)), mustJSON(spSecrets(sp)), again, "420", versions); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(again, "SECRET_1")) != "hello again" || p.vaultRequests(t, "fetched")-fetched != 1 {
		t.Fatal("a changed secret was not fetched, or more than it was")
	}
}

// mountRaw calls the provider directly and returns its error code and the
// explanation from the trailer.
func mountRaw(t *testing.T, p *runningProvider, attrs, secrets map[string]string) (*v1alpha1.MountResponse, string, string) {
	t.Helper()
	conn, err := grpc.NewClient("unix:"+filepath.Join(p.Dir, p.Name+".sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var trailer metadata.MD
	secretsJSON := "null"
	if secrets != nil {
		secretsJSON = mustJSON(secrets)
	}
	resp, err := v1alpha1.NewCSIDriverProviderClient(conn).Mount(context.Background(),
		&v1alpha1.MountRequest{Attributes: mustJSON(attrs), Secrets: secretsJSON, Permission: "420", TargetPath: "/unused"}, grpc.Trailer(&trailer))
	if err != nil {
		t.Fatalf("Mount RPC failed instead of answering an error code: %v", err)
	}
	detail := ""
	if v := trailer.Get("coffer-error"); len(v) > 0 {
		detail = v[0]
	}
	return resp, resp.GetError().GetCode(), detail
}

// Each failure is a structured code with an explanation that names the
// object and the identity, and never a value.
func TestProviderErrorCodes(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	setSecret(t, env, "there", "top-secret-value")
	reader := servicePrincipal(t, env, "reader", []string{"get"}, nil, nil)
	nobody := servicePrincipal(t, env, "nobody", []string{}, nil, nil)
	p := startProvider(t, env, "coffer")
	one := objects("objectName: there\nobjectType: secret")
	withAttr := func(k, v string) map[string]string {
		a := spAttributes(env, one)
		a[k] = v
		return a
	}
	for _, c := range []struct {
		name     string
		attrs    map[string]string
		secrets  map[string]string
		code     string
		mentions []string
	}{
		{"missing object", spAttributes(env, objects("objectName: absent\nobjectType: secret")), spSecrets(reader), "NotFound", []string{"secret absent"}},
		{"denied identity", spAttributes(env, one), spSecrets(nobody), "Forbidden", []string{"secret there", nobody.AppID}},
		{"wrong client secret", spAttributes(env, one), map[string]string{"clientid": reader.AppID, "clientsecret": "wrong"}, "Forbidden", []string{reader.AppID}},
		{"malformed objects YAML", spAttributes(env, "array: [unclosed"), spSecrets(reader), "InvalidParameter", []string{"objects"}},
		// YAML errors span lines; the trailer must still carry them.
		{"objects not a list", spAttributes(env, "array: notalist"), spSecrets(reader), "InvalidParameter", []string{"objects"}},
		{"alias escaping the volume", spAttributes(env, objects("objectName: there\nobjectType: secret\nobjectAlias: ../../etc/passwd")), spSecrets(reader), "InvalidParameter", []string{".."}},
		{"unknown object type", spAttributes(env, objects("objectName: there\nobjectType: blob")), spSecrets(reader), "InvalidParameter", []string{"objectType"}},
		{"no vault", withAttr("keyvaultName", ""), spSecrets(reader), "InvalidParameter", []string{"keyvaultName"}},
		{"no credentials", spAttributes(env, one), nil, "InvalidParameter", []string{"nodePublishSecretRef"}},
		{"pod identity without a node agent", withAttr("usePodIdentity", "true"), nil, "Unreachable", []string{"node agent"}},
		{"workload identity without a token", withAttr("clientID", "00000000-0000-0000-0000-000000000000"), nil, "InvalidParameter", []string{"tokenRequests"}},
		{"pfx for a key", spAttributes(env, objects("objectName: k\nobjectType: key\nobjectFormat: pfx")), spSecrets(reader), "InvalidParameter", []string{"pfx"}},
		{"vault of another name that does not exist", withAttr("keyvaultName", "nosuchvault"), spSecrets(reader), "NotFound", []string{"there"}},
	} {
		resp, code, detail := mountRaw(t, p, c.attrs, c.secrets)
		if code != c.code || len(resp.GetFiles()) != 0 {
			t.Errorf("%s: code %q (%s), want %s", c.name, code, detail, c.code)
			continue
		}
		for _, m := range c.mentions {
			if !strings.Contains(detail, m) {
				t.Errorf("%s: explanation %q does not mention %q", c.name, detail, m)
			}
		}
		for _, secret := range []string{"top-secret-value", c.secrets["clientsecret"], c.attrs["csi.storage.k8s.io/serviceAccount.tokens"]} {
			if secret != "" && strings.Contains(detail, secret) {
				t.Errorf("%s: the explanation leaks a secret", c.name)
			}
		}
	}

	// objectVersion "latest" is the latest version, as in Azure.
	if resp, code, detail := mountRaw(t, p, spAttributes(env, objects("objectName: there\nobjectType: secret\nobjectVersion: latest")), spSecrets(reader)); code != "" || len(resp.GetFiles()) != 1 {
		t.Errorf("objectVersion latest: %q %s", code, detail)
	}

	// The vault unreachable: a provider pointed at a port nothing listens on.
	down := startProviderAt(t, env, "coffer", "vault.localhost:1")
	_, code, detail := mountRaw(t, down, spAttributes(env, one), spSecrets(reader))
	if code != "Unreachable" || !strings.Contains(detail, "unreachable") {
		t.Errorf("vault down: %q %s", code, detail)
	}
}

// Workload identity: a service-account token from an OIDC issuer the
// authority trusts, exchanged for the managed identity named by clientID.
func TestProviderWorkloadIdentity(t *testing.T) {
	iss := oidctest.New(t)
	roots := x509.NewCertPool()
	roots.AddCert(iss.Server.Certificate())
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true})
	ctx := context.Background()
	var mi mgmthttp.IdentityOut
	if err := env.Client.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "web", ResourceGroup: "apps"}, &mi); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Manage(ctx, "PUT", "identities/apps/web/federated-credentials/k8s", federation.Credential{
		Issuer: iss.URL, Subject: "system:serviceaccount:default:web", Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
		t.Fatal(err)
	}
	secrets := []string{"get"}
	if err := env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &secrets}, nil); err != nil {
		t.Fatal(err)
	}
	setSecret(t, env, "wi", "from-workload-identity")
	p := startProvider(t, env, "coffer")
	tokens := func(sub string) string {
		return mustJSON(map[string]map[string]string{federation.DefaultAudience: {"token": iss.Token(t, sub, []string{federation.DefaultAudience}, time.Time{}, time.Time{}), "expirationTimestamp": time.Now().Add(time.Hour).Format(time.RFC3339)}})
	}
	attrs := spAttributes(env, objects("objectName: wi\nobjectType: secret"))
	attrs["clientID"] = mi.ClientID
	attrs["csi.storage.k8s.io/serviceAccount.tokens"] = tokens("system:serviceaccount:default:web")
	resp, code, detail := mountRaw(t, p, attrs, nil)
	if code != "" || len(resp.GetFiles()) != 1 || string(resp.GetFiles()[0].GetContents()) != "from-workload-identity" {
		t.Fatalf("workload identity mount: %q %s", code, detail)
	}
	if fs.FileMode(resp.GetFiles()[0].GetMode()) != 0o644 {
		t.Fatalf("mode %o", resp.GetFiles()[0].GetMode())
	}
	// Another service account naming the same clientID is refused: the
	// cached token of the first is never handed to it.
	attrs["csi.storage.k8s.io/serviceAccount.tokens"] = tokens("system:serviceaccount:default:intruder")
	if _, code, detail := mountRaw(t, p, attrs, nil); code != "Forbidden" || !strings.Contains(detail, mi.ClientID) {
		t.Fatalf("another service account got %q: %s", code, detail)
	}
}
