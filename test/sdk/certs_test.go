package sdk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/testing/testserver"
	"software.sslmate.com/src/go-pkcs12"
)

func certsClient(t *testing.T, env *testserver.Env) *azcertificates.Client {
	t.Helper()
	c, err := azcertificates.NewClient(env.Admin.VaultURL, adminCredential(t, env), &azcertificates.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: env.Client.HTTP}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// awaitCertificate polls the operation, as an Azure user does, until it
// leaves inProgress, and returns it.
func awaitCertificate(t *testing.T, cc *azcertificates.Client, name string) azcertificates.CertificateOperation {
	t.Helper()
	// A deadline, not a count: RSA key generation under -race on a busy
	// machine takes what it takes.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		op, err := cc.GetCertificateOperation(context.Background(), name, nil)
		if err != nil {
			t.Fatalf("operation of %s: %v", name, err)
		}
		if *op.Status != "inProgress" {
			return op.CertificateOperation
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("certificate %s was not issued in 2 minutes", name)
	return azcertificates.CertificateOperation{}
}

// managedSecret reads a certificate version's secret and parses it, PFX or
// PEM, with libraries independent of the server.
func managedSecret(t *testing.T, sc *azsecrets.Client, name, version string) (crypto.PrivateKey, []*x509.Certificate, azsecrets.GetSecretResponse) {
	t.Helper()
	s, err := sc.GetSecret(context.Background(), name, version, nil)
	if err != nil {
		t.Fatalf("managed secret %s: %v", name, err)
	}
	if s.Managed == nil || !*s.Managed || s.KID == nil || s.KID.Name() != name || s.KID.Version() != version {
		t.Fatalf("secret %s: managed %v, kid %v", name, s.Managed, s.KID)
	}
	switch *s.ContentType {
	case "application/x-pkcs12":
		der, err := base64.StdEncoding.DecodeString(*s.Value)
		if err != nil {
			t.Fatalf("PFX secret is not base64: %v", err)
		}
		key, leaf, cas, err := pkcs12.DecodeChain(der, "")
		if err != nil {
			t.Fatalf("PFX secret does not parse: %v", err)
		}
		return key, append([]*x509.Certificate{leaf}, cas...), s
	case "application/x-pem-file":
		var key crypto.PrivateKey
		var chain []*x509.Certificate
		rest := []byte(*s.Value)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			switch b.Type {
			case "PRIVATE KEY":
				if key, err = x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
					t.Fatal(err)
				}
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, c)
			default:
				t.Fatalf("unexpected PEM block %s", b.Type)
			}
		}
		if key == nil || len(chain) == 0 {
			t.Fatal("PEM secret lacks a key or a certificate")
		}
		return key, chain, s
	}
	t.Fatalf("managed secret content type %q", *s.ContentType)
	return nil, nil, s
}

func samePublicKey(t *testing.T, key crypto.PrivateKey, c *x509.Certificate) {
	t.Helper()
	pub := key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool })
	if !pub.Equal(c.PublicKey) {
		t.Fatal("the secret's private key does not match the certificate's public key")
	}
}

// A certificate created from a policy is issued, parsed and checked
// field by field, with its managed secret (PFX and PEM) and managed key.
func TestCertificateCreateFromPolicy(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc, sc, kc := certsClient(t, env), adminClient(t, env), keysClient(t, env)
	ctx := context.Background()

	policy := &azcertificates.CertificatePolicy{
		IssuerParameters: &azcertificates.IssuerParameters{Name: to.Ptr("Self")},
		KeyProperties:    &azcertificates.KeyProperties{KeyType: to.Ptr(azcertificates.KeyTypeRSA), KeySize: to.Ptr[int32](3072), Exportable: to.Ptr(true)},
		SecretProperties: &azcertificates.SecretProperties{ContentType: to.Ptr("application/x-pkcs12")},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{
			Subject: to.Ptr("CN=app.example.com, O=Contoso, C=US"),
			SubjectAlternativeNames: &azcertificates.SubjectAlternativeNames{
				DNSNames: to.SliceOfPtrs("app.example.com", "www.example.com"), IPAddresses: to.SliceOfPtrs("10.0.0.1"), Emails: to.SliceOfPtrs("ops@example.com")},
			EnhancedKeyUsage: to.SliceOfPtrs("1.3.6.1.5.5.7.3.1"),
			KeyUsage:         []*azcertificates.KeyUsageType{to.Ptr(azcertificates.KeyUsageTypeDigitalSignature), to.Ptr(azcertificates.KeyUsageTypeKeyEncipherment)},
			ValidityInMonths: to.Ptr[int32](6),
		},
	}
	started := time.Now()
	op, err := cc.CreateCertificate(ctx, "web", azcertificates.CreateCertificateParameters{CertificatePolicy: policy, Tags: map[string]*string{"team": to.Ptr("web")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if *op.Status != "inProgress" || !strings.HasSuffix(string(*op.ID), "/certificates/web/pending") {
		t.Fatalf("create answered %s %s", *op.Status, *op.ID)
	}
	if done := awaitCertificate(t, cc, "web"); *done.Status != "completed" || done.Target == nil {
		t.Fatalf("operation ended %s (%+v)", *done.Status, done.Error)
	}
	got, err := cc.GetCertificate(ctx, "web", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	version := got.ID.Version()
	if got.KID.Version() != version || got.SID.Version() != version || got.KID.Name() != "web" || *got.Tags["team"] != "web" {
		t.Fatalf("ids: %s %s %s", *got.ID, *got.KID, *got.SID)
	}
	leaf, err := x509.ParseCertificate(got.CER)
	if err != nil {
		t.Fatal(err)
	}
	thumb := sha1.Sum(got.CER)
	if !bytes.Equal(got.X509Thumbprint, thumb[:]) {
		t.Fatal("x5t is not the SHA-1 of cer")
	}
	if leaf.Subject.CommonName != "app.example.com" || !slices.Equal(leaf.Subject.Organization, []string{"Contoso"}) || !slices.Equal(leaf.Subject.Country, []string{"US"}) {
		t.Fatalf("subject %s", leaf.Subject)
	}
	if !slices.Equal(leaf.DNSNames, []string{"app.example.com", "www.example.com"}) || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) ||
		!slices.Equal(leaf.EmailAddresses, []string{"ops@example.com"}) {
		t.Fatalf("SANs %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Fatalf("EKU %v, key usage %v", leaf.ExtKeyUsage, leaf.KeyUsage)
	}
	if leaf.NotBefore.After(started) || leaf.NotAfter.Before(started.AddDate(0, 6, -1)) || leaf.NotAfter.After(time.Now().AddDate(0, 6, 1)) {
		t.Fatalf("validity %s to %s", leaf.NotBefore, leaf.NotAfter)
	}
	if leaf.PublicKey.(*rsa.PublicKey).N.BitLen() != 3072 {
		t.Fatal("not an RSA-3072 key")
	}
	if !isSelfSigned(leaf) {
		t.Fatal("not self-signed")
	}
	if !got.Attributes.NotBefore.Equal(leaf.NotBefore) || !got.Attributes.Expires.Equal(leaf.NotAfter) {
		t.Fatal("attributes nbf/exp differ from the certificate's validity")
	}
	if p := got.Policy; p == nil || *p.X509CertificateProperties.Subject != "CN=app.example.com, O=Contoso, C=US" || *p.KeyProperties.KeySize != 3072 {
		t.Fatalf("policy %+v", got.Policy)
	}

	// The managed secret is a PFX whose key matches; the managed key is the
	// same key, and signs for the certificate.
	key, chain, _ := managedSecret(t, sc, "web", version)
	samePublicKey(t, key, leaf)
	if !chain[0].Equal(leaf) {
		t.Fatal("the secret's certificate is not the certificate")
	}
	// outContentType converts the PFX secret to PEM on the way out.
	asPEM, err := sc.GetSecret(ctx, "web", version, &azsecrets.GetSecretOptions{OutContentType: to.Ptr(azsecrets.ContentTypePEM)})
	if err != nil {
		t.Fatal(err)
	}
	kb, rest := pem.Decode([]byte(*asPEM.Value))
	cb, _ := pem.Decode(rest)
	if kb == nil || kb.Type != "PRIVATE KEY" || cb == nil || !bytes.Equal(cb.Bytes, got.CER) {
		t.Fatal("outContentType PEM is not the key then the certificate")
	}
	mk, err := kc.GetKey(ctx, "web", version, nil)
	if err != nil || mk.Managed == nil || !*mk.Managed || !bytes.Equal(mk.Key.N, leaf.PublicKey.(*rsa.PublicKey).N.Bytes()) {
		t.Fatalf("managed key: %v", err)
	}
	d := sha256.Sum256([]byte("to sign"))
	sig, err := kc.Sign(ctx, "web", version, azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmPS256), Value: d[:]}, nil)
	if err != nil || rsa.VerifyPSS(leaf.PublicKey.(*rsa.PublicKey), crypto.SHA256, d[:], sig.Result, nil) != nil {
		t.Fatalf("sign with the certificate's key: %v", err)
	}

	// A PEM certificate with an EC key.
	pemPolicy := &azcertificates.CertificatePolicy{
		KeyProperties:             &azcertificates.KeyProperties{KeyType: to.Ptr(azcertificates.KeyTypeEC), Curve: to.Ptr(azcertificates.CurveNameP384)},
		SecretProperties:          &azcertificates.SecretProperties{ContentType: to.Ptr("application/x-pem-file")},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=pem.example.com")},
	}
	if _, err := cc.CreateCertificate(ctx, "pem", azcertificates.CreateCertificateParameters{CertificatePolicy: pemPolicy}, nil); err != nil {
		t.Fatal(err)
	}
	awaitCertificate(t, cc, "pem")
	pc, err := cc.GetCertificate(ctx, "pem", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pleaf, _ := x509.ParseCertificate(pc.CER)
	key, chain, ps := managedSecret(t, sc, "pem", pc.ID.Version())
	if *ps.ContentType != "application/x-pem-file" || *pc.ContentType != "application/x-pem-file" {
		t.Fatal("content type")
	}
	if _, ok := key.(*ecdsa.PrivateKey); !ok || !chain[0].Equal(pleaf) {
		t.Fatal("PEM secret holds the wrong key or certificate")
	}
	samePublicKey(t, key, pleaf)
	// The default EKUs are server and client authentication, as in Azure.
	if !slices.Equal(pleaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Fatalf("default EKUs %v", pleaf.ExtKeyUsage)
	}

	// A second version from the stored policy, with a new key.
	if _, err := cc.CreateCertificate(ctx, "web", azcertificates.CreateCertificateParameters{}, nil); err != nil {
		t.Fatal(err)
	}
	awaitCertificate(t, cc, "web")
	v2, _ := cc.GetCertificate(ctx, "web", "", nil)
	if v2.ID.Version() == version || bytes.Equal(v2.CER, got.CER) {
		t.Fatal("the second version is the first")
	}
	versions, _ := collect(t, cc.NewListCertificatePropertiesVersionsPager("web", nil), func(p azcertificates.ListCertificatePropertiesVersionsResponse) []string {
		return each(p.Value, func(c *azcertificates.CertificateProperties) string { return c.ID.Version() })
	})
	if len(versions) != 2 {
		t.Fatalf("versions %v", versions)
	}
	// The private key is in the store file only sealed.
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	if inStore(t, env, pk) || inStore(t, env, mustBytes(key.(*ecdsa.PrivateKey))) {
		t.Fatal("a certificate's private key is in the store file in the clear")
	}
}

// openssl runs the openssl binary (a Debian package that make test
// installs).
func openssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: run `make test`, which installs it, or apt-get install openssl")
	}
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// A PFX made by openssl, with a CA chain and a password, imports; its
// managed secret holds the key and the chain, leaf to root.
func TestCertificateImportOpenSSL(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc, sc := certsClient(t, env), adminClient(t, env)
	ctx := context.Background()
	dir := t.TempDir()
	openssl(t, dir, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=Test Root CA")
	openssl(t, dir, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=imported.example.com")
	os.WriteFile(filepath.Join(dir, "ext.cnf"), []byte("subjectAltName=DNS:imported.example.com\nextendedKeyUsage=serverAuth\n"), 0o600)
	openssl(t, dir, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.crt", "-days", "10", "-extfile", "ext.cnf")
	openssl(t, dir, "pkcs12", "-export", "-inkey", "leaf.key", "-in", "leaf.crt", "-certfile", "ca.crt", "-out", "bundle.pfx", "-passout", "pass:s3cret!")
	pfx, _ := os.ReadFile(filepath.Join(dir, "bundle.pfx"))
	value := base64.StdEncoding.EncodeToString(pfx)

	// The wrong password is Azure's 400 BadParameter.
	_, err := cc.ImportCertificate(ctx, "imported", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &value, Password: to.Ptr("wrong")}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")

	imp, err := cc.ImportCertificate(ctx, "imported", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &value, Password: to.Ptr("s3cret!")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, _ := os.ReadFile(filepath.Join(dir, "leaf.crt"))
	b, _ := pem.Decode(leafPEM)
	if !bytes.Equal(imp.CER, b.Bytes) {
		t.Fatal("cer is not the imported leaf")
	}
	if p := imp.Policy; p == nil || *p.IssuerParameters.Name != "Unknown" || *p.X509CertificateProperties.Subject != "CN=imported.example.com" ||
		*p.X509CertificateProperties.SubjectAlternativeNames.DNSNames[0] != "imported.example.com" {
		t.Fatalf("policy of the imported certificate: %+v", imp.Policy)
	}
	key, chain, _ := managedSecret(t, sc, "imported", imp.ID.Version())
	if len(chain) != 2 || chain[0].Subject.CommonName != "imported.example.com" || chain[1].Subject.CommonName != "Test Root CA" {
		t.Fatalf("chain is not leaf then root: %d certificates", len(chain))
	}
	if err := chain[0].CheckSignatureFrom(chain[1]); err != nil {
		t.Fatal(err)
	}
	samePublicKey(t, key, chain[0])
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "leaf.key"))
	kb, _ := pem.Decode(keyPEM)
	if inStore(t, env, kb.Bytes) {
		t.Fatal("the imported private key is in the store file in the clear")
	}

	// PEM with the key and chain imports too, in either order; the secret
	// keeps the PEM form.
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	pemValue := string(caPEM) + string(keyPEM) + string(leafPEM)
	pimp, err := cc.ImportCertificate(ctx, "imported-pem", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pemValue,
		CertificatePolicy: &azcertificates.CertificatePolicy{SecretProperties: &azcertificates.SecretProperties{ContentType: to.Ptr("application/x-pem-file")}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, chain, _ = managedSecret(t, sc, "imported-pem", pimp.ID.Version())
	if len(chain) != 2 || chain[0].Subject.CommonName != "imported.example.com" {
		t.Fatal("PEM chain is not leaf first")
	}

	// PEM without a key, a key that does not match, and a corrupt value.
	for label, v := range map[string]string{
		"no key":    string(leafPEM) + string(caPEM),
		"wrong key": string(leafPEM) + string(mustRead(t, filepath.Join(dir, "ca.key"))),
		"garbage":   base64.StdEncoding.EncodeToString([]byte("not a pfx")),
	} {
		_, err := cc.ImportCertificate(ctx, "bad", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &v}, nil)
		if !isStatus(err, http.StatusBadRequest, "BadParameter") {
			t.Fatalf("import %s: %v", label, err)
		}
	}
	// An oversized body.
	tok := adminToken(t, env, env.Endpoints.Resource())
	resp, e := raw(t, env, "POST", "/certificates/big/import?api-version=7.6", tok, `{"value":"`+strings.Repeat("A", 300<<10)+`"}`)
	expect(t, resp, e, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge")
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isStatus(err error, status int, code string) bool {
	re, ok := err.(*azcore.ResponseError)
	return ok && re.StatusCode == status && re.ErrorCode == code
}

// Update, policy, delete, recover, purge, backup and restore move the
// certificate with its managed key and secret, which cannot be changed
// directly.
func TestCertificateLifecycle(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc, sc, kc := certsClient(t, env), adminClient(t, env), keysClient(t, env)
	ctx := context.Background()
	pemValue := testPEM(t, "life.example.com")
	imp, err := cc.ImportCertificate(ctx, "life", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pemValue}, nil)
	if err != nil {
		t.Fatal(err)
	}
	version := imp.ID.Version()

	// The managed secret and key refuse direct changes, with Azure's error.
	_, err = sc.SetSecret(ctx, "life", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil)
	managedRefusal(t, err, "SecretManagedByKeyVault")
	_, err = sc.DeleteSecret(ctx, "life", nil)
	managedRefusal(t, err, "SecretManagedByKeyVault")
	_, err = kc.DeleteKey(ctx, "life", nil)
	managedRefusal(t, err, "KeyManagedByKeyVault")
	_, err = kc.CreateKey(ctx, "life", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC)}, nil)
	managedRefusal(t, err, "KeyManagedByKeyVault")
	// A certificate cannot take the name of an ordinary secret.
	if _, err := sc.SetSecret(ctx, "plain", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = cc.ImportCertificate(ctx, "plain", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pemValue}, nil)
	respErr(t, err, http.StatusConflict, "Conflict")

	// Disabling the certificate disables its secret; tags follow too.
	up, err := cc.UpdateCertificate(ctx, "life", "", azcertificates.UpdateCertificateParameters{
		CertificateAttributes: &azcertificates.CertificateAttributes{Enabled: to.Ptr(false)}, Tags: map[string]*string{"k": to.Ptr("v")}}, nil)
	if err != nil || *up.Attributes.Enabled || *up.Tags["k"] != "v" {
		t.Fatalf("update: %v", err)
	}
	_, err = sc.GetSecret(ctx, "life", "", nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")
	if _, err := cc.UpdateCertificate(ctx, "life", version, azcertificates.UpdateCertificateParameters{CertificateAttributes: &azcertificates.CertificateAttributes{Enabled: to.Ptr(true)}}, nil); err != nil {
		t.Fatal(err)
	}
	if s, err := sc.GetSecret(ctx, "life", "", nil); err != nil || *s.Tags["k"] != "v" {
		t.Fatalf("secret after re-enable: %v", err)
	}

	// Policy: get, and a partial update that keeps the rest.
	pol, err := cc.GetCertificatePolicy(ctx, "life", nil)
	if err != nil || *pol.X509CertificateProperties.Subject != "CN=life.example.com" {
		t.Fatalf("policy: %v", err)
	}
	np, err := cc.UpdateCertificatePolicy(ctx, "life", azcertificates.CertificatePolicy{X509CertificateProperties: &azcertificates.X509CertificateProperties{ValidityInMonths: to.Ptr[int32](3)},
		IssuerParameters: &azcertificates.IssuerParameters{Name: to.Ptr("Self")}}, nil)
	if err != nil || *np.X509CertificateProperties.ValidityInMonths != 3 || *np.X509CertificateProperties.Subject != "CN=life.example.com" || *np.IssuerParameters.Name != "Self" {
		t.Fatalf("policy update: %+v %v", np, err)
	}
	// The next version follows the new policy: self-signed, 3 months.
	if _, err := cc.CreateCertificate(ctx, "life", azcertificates.CreateCertificateParameters{}, nil); err != nil {
		t.Fatal(err)
	}
	awaitCertificate(t, cc, "life")
	cur, _ := cc.GetCertificate(ctx, "life", "", nil)
	leaf, _ := x509.ParseCertificate(cur.CER)
	if !isSelfSigned(leaf) || leaf.NotAfter.Sub(leaf.NotBefore) > 93*24*time.Hour {
		t.Fatal("the renewed version does not follow the updated policy")
	}

	// List shows it; the ordinary secret is not a certificate.
	var names []string
	for p := cc.NewListCertificatePropertiesPager(nil); p.More(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Value {
			names = append(names, it.ID.Name())
			if len(it.X509Thumbprint) != 20 {
				t.Fatal("list item without x5t")
			}
		}
	}
	if !slices.Equal(names, []string{"life"}) {
		t.Fatalf("certificates: %v", names)
	}

	backup, err := cc.BackupCertificate(ctx, "life", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Delete takes the key and secret with it; recover brings them back.
	del, err := cc.DeleteCertificate(ctx, "life", nil)
	if err != nil || del.RecoveryID == nil || del.ScheduledPurgeDate == nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = sc.GetSecret(ctx, "life", "", nil)
	respErr(t, err, http.StatusNotFound, "SecretNotFound")
	_, err = kc.GetKey(ctx, "life", "", nil)
	respErr(t, err, http.StatusNotFound, "KeyNotFound")
	if _, err := cc.GetDeletedCertificate(ctx, "life", nil); err != nil {
		t.Fatal(err)
	}
	deleted, _ := collect(t, cc.NewListDeletedCertificatePropertiesPager(nil), func(p azcertificates.ListDeletedCertificatePropertiesResponse) []string {
		return each(p.Value, func(c *azcertificates.DeletedCertificateProperties) string { return c.ID.Name() })
	})
	if !slices.Equal(deleted, []string{"life"}) {
		t.Fatalf("deleted: %v", deleted)
	}
	if _, err := cc.RecoverDeletedCertificate(ctx, "life", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.GetSecret(ctx, "life", "", nil); err != nil {
		t.Fatalf("secret after recover: %v", err)
	}
	// Purge removes all three; restore brings all three back, every version.
	cc.DeleteCertificate(ctx, "life", nil)
	if _, err := cc.PurgeDeletedCertificate(ctx, "life", nil); err != nil {
		t.Fatal(err)
	}
	_, err = kc.GetDeletedKey(ctx, "life", nil)
	respErr(t, err, http.StatusNotFound, "KeyNotFound")
	res, err := cc.RestoreCertificate(ctx, azcertificates.RestoreCertificateParameters{CertificateBackup: backup.Value}, nil)
	if err != nil || res.ID.Name() != "life" {
		t.Fatalf("restore: %v", err)
	}
	key, _, _ := managedSecret(t, sc, "life", version)
	orig, _ := x509.ParseCertificate(imp.CER)
	samePublicKey(t, key, orig)
	if _, err := kc.GetKey(ctx, "life", cur.ID.Version(), nil); err != nil {
		t.Fatalf("managed key after restore: %v", err)
	}
	// A second restore conflicts.
	_, err = cc.RestoreCertificate(ctx, azcertificates.RestoreCertificateParameters{CertificateBackup: backup.Value}, nil)
	respErr(t, err, http.StatusConflict, "Conflict")

	// An unknown issuer in a policy is refused up front.
	_, err = cc.CreateCertificate(ctx, "ca", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		IssuerParameters:          &azcertificates.IssuerParameters{Name: to.Ptr("DigiCert")},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=x")}}}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
}

func managedRefusal(t *testing.T, err error, inner string) {
	t.Helper()
	respErr(t, err, http.StatusForbidden, "Forbidden")
	if !strings.Contains(err.Error(), inner) {
		t.Fatalf("refusal lacks inner code %s: %v", inner, err)
	}
}

// Issuer Unknown: the operation holds a CSR; a CA outside Coffer signs it
// and the merge completes the certificate. A second such operation is
// cancelled and deleted.
func TestCertificateCSRMergeAndCancel(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc, sc := certsClient(t, env), adminClient(t, env)
	ctx := context.Background()
	policy := &azcertificates.CertificatePolicy{
		IssuerParameters:          &azcertificates.IssuerParameters{Name: to.Ptr("Unknown")},
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=csr.example.com"), SubjectAlternativeNames: &azcertificates.SubjectAlternativeNames{DNSNames: to.SliceOfPtrs("csr.example.com")}},
	}
	if _, err := cc.CreateCertificate(ctx, "csr", azcertificates.CreateCertificateParameters{CertificatePolicy: policy}, nil); err != nil {
		t.Fatal(err)
	}
	// The operation stays inProgress with a CSR once the key exists.
	var op azcertificates.CertificateOperation
	for deadline := time.Now().Add(2 * time.Minute); ; {
		r, err := cc.GetCertificateOperation(ctx, "csr", nil)
		if err != nil {
			t.Fatal(err)
		}
		if op = r.CertificateOperation; len(op.CSR) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CSR after 2 minutes: the operation is %s", *op.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	csr, err := x509.ParseCertificateRequest(op.CSR)
	if err != nil || csr.CheckSignature() != nil || csr.Subject.CommonName != "csr.example.com" || !slices.Equal(csr.DNSNames, []string{"csr.example.com"}) {
		t.Fatalf("CSR: %v", err)
	}
	// Sign it with a CA made here.
	caKey, _ := ecdsa.GenerateKey(ecdsaCurve(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Merge CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject, DNSNames: csr.DNSNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, csr.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate for another key is refused.
	other, _ := x509.CreateCertificate(rand.Reader, caTmpl, ca, &caKey.PublicKey, caKey)
	_, err = cc.MergeCertificate(ctx, "csr", azcertificates.MergeCertificateParameters{X509Certificates: [][]byte{other}}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	merged, err := cc.MergeCertificate(ctx, "csr", azcertificates.MergeCertificateParameters{X509Certificates: [][]byte{caDER, leafDER}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(merged.CER, leafDER) {
		t.Fatal("merged cer is not the signed leaf")
	}
	if done, _ := cc.GetCertificateOperation(ctx, "csr", nil); *done.Status != "completed" {
		t.Fatalf("operation after merge: %s", *done.Status)
	}
	key, chain, _ := managedSecret(t, sc, "csr", merged.ID.Version())
	if len(chain) != 2 || !bytes.Equal(chain[0].Raw, leafDER) || !bytes.Equal(chain[1].Raw, caDER) {
		t.Fatal("merged chain is not leaf then CA")
	}
	samePublicKey(t, key, chain[0])

	// Cancel, then delete, a second pending operation.
	if _, err := cc.CreateCertificate(ctx, "csr2", azcertificates.CreateCertificateParameters{CertificatePolicy: policy}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := cc.UpdateCertificateOperation(ctx, "csr2", azcertificates.UpdateCertificateOperationParameter{CancellationRequested: to.Ptr(true)}, nil)
	if err != nil || !*c.CancellationRequested || *c.Status != "cancelled" {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	_, err = cc.MergeCertificate(ctx, "csr2", azcertificates.MergeCertificateParameters{X509Certificates: [][]byte{leafDER}}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	if _, err := cc.DeleteCertificateOperation(ctx, "csr2", nil); err != nil {
		t.Fatal(err)
	}
	_, err = cc.GetCertificateOperation(ctx, "csr2", nil)
	respErr(t, err, http.StatusNotFound, "CertificateNotFound")
	if _, err := cc.GetCertificate(ctx, "csr2", "", nil); err == nil {
		t.Fatal("a cancelled operation made a certificate")
	}
}

// AutoRenew: once a certificate passes its lifetime trigger, the server's
// scheduled pass makes a new version.
func TestCertificateAutoRenew(t *testing.T) {
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	env := testserver.Start(t, testserver.Options{Now: now})
	cc := certsClient(t, env)
	ctx := context.Background()
	policy := &azcertificates.CertificatePolicy{
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=renew.example.com"), ValidityInMonths: to.Ptr[int32](1)},
		LifetimeActions: []*azcertificates.LifetimeAction{{Trigger: &azcertificates.LifetimeActionTrigger{DaysBeforeExpiry: to.Ptr[int32](10)},
			Action: &azcertificates.LifetimeActionType{ActionType: to.Ptr(azcertificates.CertificatePolicyActionAutoRenew)}}},
	}
	if _, err := cc.CreateCertificate(ctx, "renew", azcertificates.CreateCertificateParameters{CertificatePolicy: policy}, nil); err != nil {
		t.Fatal(err)
	}
	awaitCertificate(t, cc, "renew")
	first, _ := cc.GetCertificate(ctx, "renew", "", nil)
	env.Server.PurgeDue(ctx) // not yet due
	awaitCertificate(t, cc, "renew")
	if again, _ := cc.GetCertificate(ctx, "renew", "", nil); again.ID.Version() != first.ID.Version() {
		t.Fatal("renewed before the trigger")
	}
	offset.Store(int64(25 * 24 * time.Hour)) // inside the last 10 days
	cc = certsClient(t, env)                 // the old token has expired by the server's clock
	env.Server.PurgeDue(ctx)
	awaitCertificate(t, cc, "renew")
	renewed, _ := cc.GetCertificate(ctx, "renew", "", nil)
	if renewed.ID.Version() == first.ID.Version() || !renewed.Attributes.Expires.After(*first.Attributes.Expires) {
		t.Fatal("the certificate was not renewed after its trigger")
	}
}

func ecdsaCurve() elliptic.Curve { return elliptic.P256() }

// isSelfSigned reports whether c is signed by its own key, under its own name.
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

func mustBytes(k *ecdsa.PrivateKey) []byte {
	b, err := k.Bytes()
	if err != nil {
		panic(err)
	}
	return b
}
