package integration

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"software.sslmate.com/src/go-pkcs12"
)

// The certificate and key verbs, as a user of `az keyvault certificate`
// and `az keyvault key` would run them, against the real binary.
func TestCLICertificateAndKeyVerbs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	startDev(t, dir)
	ef := devenv.Path(dir)
	work := t.TempDir()
	args := func(a ...string) []string { return append(append([]string{}, a...), "--vault-name", "demo") }

	// get-default-policy feeds create, as in az; edit the subject on the way.
	policy := strings.Replace(mustCLI(t, ef, "certificate", "get-default-policy"), "CN=CLIGetDefaultPolicy", "CN=cli.example.com", 1)
	policyFile := filepath.Join(work, "policy.json")
	os.WriteFile(policyFile, []byte(policy), 0o600)
	var created struct {
		ID, KID, SID, CER, Name string
		X509ThumbprintHex       string
		Policy                  struct {
			X509Props struct{ Subject string } `json:"x509CertificateProperties"`
		}
	}
	out := mustCLI(t, ef, args("certificate", "create", "--name", "web", "--policy", "@"+policyFile)...)
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Name != "web" || created.CER == "" || len(created.X509ThumbprintHex) != 40 {
		t.Fatalf("create: %s", out)
	}
	if created.Policy.X509Props.Subject != "CN=cli.example.com" {
		t.Fatalf("create kept policy %+v", created.Policy)
	}
	if out := mustCLI(t, ef, args("certificate", "list", "-o", "tsv")...); !strings.HasPrefix(out, "web\t") {
		t.Fatalf("list: %q", out)
	}
	mustCLI(t, ef, args("certificate", "show", "--name", "web")...)

	// download writes the public certificate; secret download the PFX.
	pemFile := filepath.Join(work, "web.pem")
	mustCLI(t, ef, args("certificate", "download", "--name", "web", "--file", pemFile)...)
	data, _ := os.ReadFile(pemFile)
	b, _ := pem.Decode(data)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil || leaf.Subject.CommonName != "cli.example.com" {
		t.Fatalf("downloaded certificate: %v", err)
	}
	pfxFile := filepath.Join(work, "web.pfx")
	mustCLI(t, ef, args("secret", "download", "--name", "web", "--encoding", "base64", "--file", pfxFile)...)
	pfx, _ := os.ReadFile(pfxFile)
	key, cert, err := pkcs12.Decode(pfx, "")
	if err != nil || !cert.Equal(leaf) || key == nil {
		t.Fatalf("downloaded PFX: %v", err)
	}
	if fi, _ := os.Stat(pfxFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("the PFX file is mode %v", fi.Mode().Perm())
	}

	// Import the PFX back under another name with openssl's help: re-export
	// with a password, as a user moving a certificate would.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: run `make test`, which installs it")
	}
	keyPEM := filepath.Join(work, "key.pem")
	run := func(args ...string) {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	run("pkcs12", "-in", pfxFile, "-nocerts", "-nodes", "-passin", "pass:", "-out", keyPEM)
	run("pkcs12", "-export", "-inkey", keyPEM, "-in", pemFile, "-out", filepath.Join(work, "moved.pfx"), "-passout", "pass:pw")
	if r := cli(t, ef, "", args("certificate", "import", "--name", "moved", "--file", filepath.Join(work, "moved.pfx"), "--password", "nope")...); r.code != 1 || !strings.Contains(r.err, "(BadParameter)") {
		t.Fatalf("import with a wrong password: %d %s", r.code, r.err)
	}
	mustCLI(t, ef, args("certificate", "import", "--name", "moved", "--file", filepath.Join(work, "moved.pfx"), "--password", "pw")...)
	moved := mustCLI(t, ef, args("certificate", "show", "--name", "moved", "-o", "tsv")...)
	if !strings.Contains(moved, strings.ToUpper(created.X509ThumbprintHex)) {
		t.Fatalf("imported certificate has another thumbprint: %q", moved)
	}

	// Certificate lifecycle verbs.
	backup := filepath.Join(work, "moved.bak")
	mustCLI(t, ef, args("certificate", "backup", "--name", "moved", "--file", backup)...)
	mustCLI(t, ef, args("certificate", "delete", "--name", "moved")...)
	if out := mustCLI(t, ef, args("certificate", "list-deleted", "-o", "tsv")...); !strings.HasPrefix(out, "moved\t") {
		t.Fatalf("list-deleted: %q", out)
	}
	mustCLI(t, ef, args("certificate", "purge", "--name", "moved")...)
	mustCLI(t, ef, args("certificate", "restore", "--file", backup)...)
	mustCLI(t, ef, args("certificate", "set-attributes", "--name", "moved", "--enabled", "false")...)

	// Issuer Unknown: pending show gives the CSR.
	csrPolicy := `{"issuer":{"name":"Unknown"},"x509_props":{"subject":"CN=csr.example.com"}}`
	out = mustCLI(t, ef, args("certificate", "create", "--name", "csr", "--policy", csrPolicy)...)
	if !strings.Contains(out, "BEGIN CERTIFICATE REQUEST") || !strings.Contains(out, "inProgress") {
		t.Fatalf("create with issuer Unknown: %s", out)
	}
	mustCLI(t, ef, args("certificate", "pending", "delete", "--name", "csr")...)

	// Keys: create, sign-ready, download the public key, rotate, import.
	var k struct {
		Key struct {
			Kid, Kty string
			KeyOps   []string
		}
	}
	out = mustCLI(t, ef, args("key", "create", "--name", "signer", "--kty", "EC", "--curve", "P-384", "--ops", "sign,verify")...)
	if json.Unmarshal([]byte(out), &k); k.Key.Kty != "EC" || strings.Join(k.Key.KeyOps, ",") != "sign,verify" {
		t.Fatalf("key create: %s", out)
	}
	pubFile := filepath.Join(work, "signer.pem")
	mustCLI(t, ef, args("key", "download", "--name", "signer", "--file", pubFile)...)
	data, _ = os.ReadFile(pubFile)
	if b, _ := pem.Decode(data); b == nil || b.Type != "PUBLIC KEY" {
		t.Fatalf("key download: %q", data)
	} else if _, err := x509.ParsePKIXPublicKey(b.Bytes); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, ef, args("key", "rotate", "--name", "signer")...)
	if out := mustCLI(t, ef, args("key", "list-versions", "--name", "signer", "-o", "tsv")...); strings.Count(out, "\n") != 2 {
		t.Fatalf("versions after rotate: %q", out)
	}
	run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", filepath.Join(work, "rsa.pem"))
	out = mustCLI(t, ef, args("key", "import", "--name", "from-pem", "--pem-file", filepath.Join(work, "rsa.pem"))...)
	if !strings.Contains(out, `"kty": "RSA"`) || strings.Contains(out, `"d"`) {
		t.Fatalf("key import: %s", out)
	}
	// The managed key of a certificate cannot be deleted directly.
	if r := cli(t, ef, "", args("key", "delete", "--name", "web")...); r.code != 1 || !strings.Contains(r.err, "KeyManagedByKeyVault") {
		t.Fatalf("delete of a managed key: %d %s", r.code, r.err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{args("key", "create", "--name", "x", "--kty", "RSA-HSM"), "--kty"},
		{args("certificate", "create", "--name", "x", "--policy", "{not json"), "--policy"},
		{args("certificate", "download", "--name", "web", "--file", pemFile), "already exists"},
		{args("key", "import", "--name", "x", "--pem-file", pemFile), "no private key"},
	} {
		if r := cli(t, ef, "", c.args...); r.code == 0 || !strings.Contains(r.err, c.want) {
			t.Errorf("coffer %s: exit %d, %q; want an error with %q", strings.Join(c.args, " "), r.code, r.err, c.want)
		}
	}
}
