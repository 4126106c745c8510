//go:build !node

package cli

import (
	"bytes"
	"strings"
	"testing"
)

// Flag mistakes are usage errors (exit 2) that name the flag, found before
// anything talks to a cluster.
func TestWebhookFlags(t *testing.T) {
	for name, c := range map[string]struct {
		args    []string
		mention []string
	}{
		"no authority":         {nil, []string{"--authority-host"}},
		"http authority":       {[]string{"--authority-host", "http://login.example.com/"}, []string{"--authority-host", "https"}},
		"service without ns":   {[]string{"--authority-host", "https://login.example.com/", "--service-namespace", ""}, []string{"--service-namespace"}},
		"no hosts at all":      {[]string{"--authority-host", "https://login.example.com/", "--service-name", ""}, []string{"--cert-hosts"}},
		"bad cert host":        {[]string{"--authority-host", "https://login.example.com/", "--cert-hosts", "https://x"}, []string{`"https://x"`}},
		"no secret namespace":  {[]string{"--authority-host", "https://login.example.com/", "--service-name", "", "--service-namespace", "", "--cert-hosts", "127.0.0.1"}, []string{"--cert-secret-namespace"}},
		"empty webhook config": {[]string{"--authority-host", "https://login.example.com/", "--webhook-config-name", ""}, []string{"--webhook-config-name"}},
	} {
		var stderr bytes.Buffer
		code := Main(append([]string{"webhook"}, c.args...), strings.NewReader(""), &bytes.Buffer{}, &stderr)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2 (%s)", name, code, stderr.String())
			continue
		}
		for _, m := range c.mention {
			if !strings.Contains(stderr.String(), m) {
				t.Errorf("%s: %q does not mention %s", name, stderr.String(), m)
			}
		}
	}
}
