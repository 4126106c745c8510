package sdk

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/cli"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// The CLI verbs of rotation policies, issuers, contacts and event
// subscriptions, run in-process against a real server, in az's order of
// use: each step's output must hold what the next relies on.
func TestCLIRotationIssuersContactsEvents(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	envFile := filepath.Join(t.TempDir(), "dev.env")
	if err := env.Admin.Write(envFile); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		args []string
		want []string // substrings of stdout
		fail bool
	}{
		{args: []string{"key", "create", "--vault-name", "demo", "--name", "k", "--kty", "EC"}},
		{args: []string{"key", "rotation-policy", "show", "--vault-name", "demo", "--name", "k", "-o", "json"}, want: []string{`"action": "Notify"`, `"timeBeforeExpiry": "P30D"`}},
		// az's flattened form, as `rotation-policy show` prints it.
		{args: []string{"key", "rotation-policy", "update", "--vault-name", "demo", "--name", "k", "-o", "json", "--value",
			`{"lifetimeActions":[{"action":"Rotate","timeAfterCreate":"P90D"}],"attributes":{"expiryTime":"P1Y"}}`}, want: []string{`"action": "Rotate"`, `"expiryTime": "P1Y"`}},
		{args: []string{"key", "rotation-policy", "update", "--vault-name", "demo", "--name", "k", "--value",
			`{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P1D"},"action":{"type":"Rotate"}}]}`}, fail: true},
		{args: []string{"certificate", "issuer", "create", "--vault-name", "demo", "--issuer-name", "le", "--provider-name", "ACME",
			"--directory-url", "https://acme.example.com/dir", "--account-id", "kid", "--password", "c2VjcmV0", "-o", "json"}, want: []string{`"directoryUrl": "https://acme.example.com/dir"`, `"account_id": "kid"`}},
		{args: []string{"certificate", "issuer", "update", "--vault-name", "demo", "--issuer-name", "le", "--disabled", "-o", "json"}, want: []string{`"enabled": false`, `"provider": "ACME"`}},
		{args: []string{"certificate", "issuer", "list", "--vault-name", "demo", "-o", "table"}, want: []string{"le", "ACME"}},
		{args: []string{"certificate", "issuer", "show", "--vault-name", "demo", "--issuer-name", "nope"}, fail: true},
		{args: []string{"certificate", "issuer", "delete", "--vault-name", "demo", "--issuer-name", "le"}},
		{args: []string{"certificate", "contact", "add", "--vault-name", "demo", "--email", "ops@example.com", "--name", "Ops"}},
		{args: []string{"certificate", "contact", "add", "--vault-name", "demo", "--email", "sec@example.com"}},
		{args: []string{"certificate", "contact", "delete", "--vault-name", "demo", "--email", "ops@example.com", "-o", "json"}, want: []string{"sec@example.com"}},
		{args: []string{"certificate", "contact", "list", "--vault-name", "demo", "-o", "table"}, want: []string{"sec@example.com"}},
		{args: []string{"vault", "event-subscription", "create", "--vault-name", "demo", "--name", "hooks", "--endpoint", "https://hooks.example.com/kv",
			"--included-event-types", "Microsoft.KeyVault.SecretNewVersionCreated", "-o", "json"}, want: []string{`"secret": "`, "SecretNewVersionCreated"}},
		{args: []string{"vault", "event-subscription", "create", "--vault-name", "demo", "--name", "loop", "--endpoint", "https://127.0.0.1/kv"}, fail: true},
		{args: []string{"vault", "event-subscription", "list", "--vault-name", "demo", "-o", "table"}, want: []string{"hooks", "https://hooks.example.com/kv"}},
		{args: []string{"vault", "event-subscription", "delete", "--vault-name", "demo", "--name", "hooks"}},
	} {
		var out, errb bytes.Buffer
		code := cli.Main(append(step.args, "--env-file", envFile), strings.NewReader(""), &out, &errb)
		if step.fail != (code != 0) {
			t.Fatalf("coffer %s: exit %d, want failure %v: %s%s", strings.Join(step.args, " "), code, step.fail, out.String(), errb.String())
		}
		for _, w := range step.want {
			if !strings.Contains(out.String(), w) {
				t.Fatalf("coffer %s printed no %q:\n%s", strings.Join(step.args, " "), w, out.String())
			}
		}
		if strings.Contains(out.String(), "c2VjcmV0") {
			t.Fatalf("coffer %s printed the issuer's password", strings.Join(step.args, " "))
		}
	}
}
