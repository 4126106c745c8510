package integration

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"software.sslmate.com/src/go-pkcs12"
)

func run(t *testing.T, timeout time.Duration, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

func TestServerRequiresTLSAndRootKey(t *testing.T) {
	dir := t.TempDir()
	out, code := run(t, 30*time.Second, []string{rootkey.EnvVar + "="}, "server", "--data-dir", dir, "--dns-suffix", "kv.test", "--listen", "127.0.0.1:0")
	// A missing flag is a usage error that names it.
	if code != 2 || !strings.Contains(out, "--tls-cert-file is required") || !strings.Contains(out, "TLS is mandatory") {
		t.Fatalf("server without a certificate: %d %s", code, out)
	}
	out, code = run(t, 30*time.Second, []string{rootkey.EnvVar + "="}, "server", "--data-dir", dir, "--dns-suffix", "kv.test", "--listen", "127.0.0.1:0", "--insecure-http")
	if code != 1 || !strings.Contains(out, "no root key") {
		t.Fatalf("server without a root key: %d %s", code, out)
	}
	out, code = run(t, 30*time.Second, []string{rootkey.EnvVar + "=c2hvcnQ="}, "server", "--data-dir", dir, "--dns-suffix", "kv.test", "--listen", "127.0.0.1:0", "--insecure-http")
	if code != 1 || !strings.Contains(out, "decodes to 5 bytes") || strings.Contains(out, "c2hvcnQ=") {
		t.Fatalf("server with a malformed root key: %d %s", code, out)
	}
	out, code = run(t, 30*time.Second, nil, "server", "--dns-suffix", "localhost", "--data-dir", dir)
	if code != 2 || !strings.Contains(out, "DNS suffix") {
		t.Fatalf("one-label suffix: %d %s", code, out)
	}
	// --insecure-http runs, with a loud warning, until it is stopped.
	// It is stopped once it says it serves, however long a first start
	// takes on a busy machine.
	key := rootkey.Generate()
	cmd := exec.Command(binary, "server", "--data-dir", dir, "--dns-suffix", "kv.test", "--listen", "127.0.0.1:0", "--insecure-http", "--metrics-addr", "")
	cmd.Env = append(cmd.Environ(), rootkey.EnvVar+"="+key.Encode())
	var buf syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); !strings.Contains(buf.String(), "SERVING PLAIN HTTP"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the insecure server did not start serving in a minute:\n%s", buf.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	out = buf.String()
	if !strings.Contains(out, "SERVING PLAIN HTTP") || !strings.Contains(out, "operator init") {
		t.Fatalf("insecure server output lacks the warning or the init hint:\n%s", out)
	}
	if strings.Contains(out, key.Encode()) {
		t.Fatal("the server logged its root key")
	}
}

// Every value, client secret and token that crosses the server must stay out
// of its output, even at debug level and on error paths.
func TestNoSecretInLogs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dir)
	ef := devenv.Path(dir)
	values := []string{"LOGSCAN-value-one", "LOGSCAN-value-two", "LOGSCAN-stdin"}
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "a", "--value", values[0])
	mustCLI(t, ef, "secret", "set", "--vault-name", "demo", "--name", "a", "--value", values[1], "--tags", "k=LOGSCAN-tag")
	cli(t, ef, values[2], "secret", "set", "--vault-name", "demo", "--name", "bad_name", "--file", "-")
	cli(t, ef, "", "secret", "set", "--vault-name", "demo", "--name", "big", "--value", strings.Repeat("LOGSCAN-big", 3000))
	mustCLI(t, ef, "secret", "show", "--vault-name", "demo", "--name", "a")
	bak := filepath.Join(t.TempDir(), "a.bak")
	mustCLI(t, ef, "secret", "backup", "--vault-name", "demo", "--name", "a", "--file", bak)
	var sp struct{ Password string }
	out := mustCLI(t, ef, "sp", "create", "--name", "x")
	if i := strings.Index(out, `"password": "`); i >= 0 {
		sp.Password = strings.SplitN(out[i+13:], `"`, 2)[0]
	}
	// A private key imported, a certificate with its key, and a PFX password
	// on an error path.
	work := t.TempDir()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	os.WriteFile(filepath.Join(work, "key.pem"), keyPEM, 0o600)
	mustCLI(t, ef, "key", "import", "--vault-name", "demo", "--name", "k", "--pem-file", filepath.Join(work, "key.pem"))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "logscan"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rsaKey.PublicKey, rsaKey)
	os.WriteFile(filepath.Join(work, "cert.pem"), append(keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})...), 0o600)
	mustCLI(t, ef, "certificate", "import", "--vault-name", "demo", "--name", "c", "--file", filepath.Join(work, "cert.pem"))
	mustCLI(t, ef, "secret", "show", "--vault-name", "demo", "--name", "c")
	pfx, _ := pkcs12.Modern.Encode(rsaKey, tmpl, nil, "LOGSCAN-pfx-password")
	os.WriteFile(filepath.Join(work, "c.pfx"), pfx, 0o600)
	cli(t, ef, "", "certificate", "import", "--vault-name", "demo", "--name", "c2", "--file", filepath.Join(work, "c.pfx"), "--password", "LOGSCAN-wrong-password")
	keyLines := strings.Split(string(keyPEM), "\n")
	values = append(values, keyLines[3], keyLines[10], base64.StdEncoding.EncodeToString(keyDER[40:80]))

	hc, tok := vaultClient(t, d.Env)
	get(hc, tok, strings.TrimSuffix(d.Env.VaultURL, "/")+"/secrets/a?api-version=7.6")
	get(hc, tok+"x", strings.TrimSuffix(d.Env.VaultURL, "/")+"/secrets/a?api-version=7.6") // rejected token
	d.stop(t)

	logs := d.Stdout.String() + d.Stderr.String()
	if !strings.Contains(logs, `"request"`) && !strings.Contains(logs, "msg=request") {
		t.Fatalf("debug request logging is not on; the scan would prove nothing:\n%.2000s", logs)
	}
	for _, s := range append(values, "LOGSCAN", d.Env.ClientSecret, sp.Password, tok, tok[len(tok)-40:]) {
		if s != "" && strings.Contains(logs, s) {
			t.Fatalf("server output contains a secret (%.20s...)", s)
		}
	}
}
