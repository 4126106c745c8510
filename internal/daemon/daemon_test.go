package daemon

import (
	"fmt"
	"testing"
)

func TestRename(t *testing.T) {
	flags := map[string]string{"TLSCertFile": "--tls-cert-file", "TLSKeyFile": "--tls-key-file", "Listen": "--listen"}
	for name, tc := range map[string]struct {
		err     error
		want    string
		renamed bool
	}{
		"option and mention":  {Invalid("TLSKeyFile", "is required: the private key of TLSCertFile"), "--tls-key-file is required: the private key of --tls-cert-file", true},
		"wrapped":             {fmt.Errorf("start: %w", Invalid("Listen", "%s: in use", ":80")), "--listen :80: in use", true},
		"unknown option kept": {Invalid("Other", "is bad"), "Other is bad", true},
		"part of a word kept": {Invalid("Listen", "is not ListenAddress"), "--listen is not ListenAddress", true},
		"not an option error": {fmt.Errorf("disk full"), "", false},
	} {
		got, ok := Rename(tc.err, flags)
		if got != tc.want || ok != tc.renamed {
			t.Errorf("%s: Rename = %q, %v; want %q, %v", name, got, ok, tc.want, tc.renamed)
		}
	}
}
