// Package devenv reads and writes dev.env, the credentials file `coffer dev`
// leaves in its data directory for the CLI, SDK samples and tests.
package devenv

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// FileName is the env file's name inside a data directory.
const FileName = "dev.env"

// Env is the content of dev.env: exactly these variables, in this order.
type Env struct {
	VaultURL      string // COFFER_VAULT_URL
	TenantID      string // AZURE_TENANT_ID
	ClientID      string // AZURE_CLIENT_ID
	ClientSecret  string // AZURE_CLIENT_SECRET
	AuthorityHost string // AZURE_AUTHORITY_HOST
	CAFile        string // SSL_CERT_FILE
	// CABundle is CAFile again, under the name Python's requests reads
	// (the Azure CLI and the Python SDKs ignore SSL_CERT_FILE).
	CABundle string // REQUESTS_CA_BUNDLE
	DataDir  string // COFFER_DATA_DIR
}

func (e *Env) fields() []struct {
	name string
	ptr  *string
} {
	return []struct {
		name string
		ptr  *string
	}{
		{"COFFER_VAULT_URL", &e.VaultURL},
		{"AZURE_TENANT_ID", &e.TenantID},
		{"AZURE_CLIENT_ID", &e.ClientID},
		{"AZURE_CLIENT_SECRET", &e.ClientSecret},
		{"AZURE_AUTHORITY_HOST", &e.AuthorityHost},
		{"SSL_CERT_FILE", &e.CAFile},
		{"REQUESTS_CA_BUNDLE", &e.CABundle},
		{"COFFER_DATA_DIR", &e.DataDir},
	}
}

// Names returns the variable names dev.env holds.
func Names() []string {
	var e Env
	var out []string
	for _, f := range e.fields() {
		out = append(out, f.name)
	}
	return out
}

// quote single-quotes a value when a shell would otherwise split or expand it.
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n'\"$`\\;&|<>()*?#~") {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// Bytes renders e as the env file's contents.
func (e Env) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString("# Written by `coffer dev`. Holds a client secret: keep it private.\n")
	for _, f := range e.fields() {
		fmt.Fprintf(&b, "%s=%s\n", f.name, quote(*f.ptr))
	}
	return b.Bytes()
}

// Write stores e at path with mode 0600, atomically.
func (e Env) Write(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, e.Bytes(), 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Read parses an env file written by Write (KEY=value lines, values
// optionally single- or double-quoted, # comments, optional "export ").
func Read(path string) (Env, error) {
	f, err := os.Open(path)
	if err != nil {
		return Env{}, err
	}
	defer f.Close()
	e, err := Parse(f)
	if err != nil {
		return Env{}, fmt.Errorf("%s:%w", path, err)
	}
	return e, nil
}

// Parse reads an env file's contents, as Read does (`coffer install`
// reads the administrator's from a Secret).
func Parse(r io.Reader) (Env, error) {
	vals := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return Env{}, fmt.Errorf("%d: expected KEY=value", n)
		}
		vals[strings.TrimSpace(k)] = unquote(strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		return Env{}, err
	}
	var e Env
	for _, f := range e.fields() {
		*f.ptr = vals[f.name]
	}
	return e, nil
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// Path returns dev.env's path in dataDir.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// AzureCLICloud is the cloud name the Azure CLI recipe registers.
const AzureCLICloud = "Coffer"

// AzureCLI returns the Azure CLI commands that sign in to the server e
// describes, as argument lists: `coffer dev` prints them and the az tests
// (test/azcli) run them. An argument "$NAME" stands for the dev.env
// variable NAME. The CLI reads the login endpoint ({authority}/adfs) and
// the management audience from the server's ARM metadata document. The
// resource manager URL goes without its trailing slash: the CLI appends
// "/metadata/endpoints" to it as a string.
func (e Env) AzureCLI() [][]string {
	return [][]string{
		{"az", "cloud", "register", "--name", AzureCLICloud, "--endpoint-resource-manager", strings.TrimSuffix(e.AuthorityHost, "/")},
		{"az", "cloud", "set", "--name", AzureCLICloud},
		{"az", "login", "--service-principal", "--username", "$AZURE_CLIENT_ID", "--password", "$AZURE_CLIENT_SECRET", "--tenant", "$AZURE_TENANT_ID"},
	}
}

// Shell renders a command of AzureCLI for a POSIX shell, leaving "$NAME"
// arguments to the shell.
func Shell(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if strings.HasPrefix(a, "$") {
			out[i] = `"` + a + `"`
		} else {
			out[i] = quote(a)
		}
	}
	return strings.Join(out, " ")
}

// Expand replaces the "$NAME" arguments of argv with e's values.
func (e Env) Expand(argv []string) []string {
	vals := map[string]string{}
	for _, f := range e.fields() {
		vals[f.name] = *f.ptr
	}
	out := make([]string, len(argv))
	for i, a := range argv {
		if name, ok := strings.CutPrefix(a, "$"); ok {
			a = vals[name]
		}
		out[i] = a
	}
	return out
}
