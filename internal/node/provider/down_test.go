package provider

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// Only an outage counts as down (and may be bridged by last-known-good
// files); a refusal, a certificate that does not verify or a cancelled
// call does not. Only the vault's object-not-found codes make an optional
// object missing.
func TestDownAndMissing(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED} // what a dial to a closed port returns
	transport := func(err error) error { return &url.Error{Op: "Get", URL: "https://demo.vault.invalid/", Err: err} }
	for label, c := range map[string]struct {
		err  error
		down bool
	}{
		"connection refused":   {&kvclient.Error{Message: "x", Err: transport(refused)}, true},
		"authority refused":    {&authclient.Error{Description: "x", Err: transport(refused)}, true},
		"timeout":              {&kvclient.Error{Message: "x", Err: transport(context.DeadlineExceeded)}, true},
		"gateway":              {&kvclient.Error{Status: 503}, true},
		"cancelled":            {&kvclient.Error{Message: "x", Err: transport(context.Canceled)}, false},
		"unknown authority":    {&kvclient.Error{Message: "x", Err: transport(x509.UnknownAuthorityError{})}, false},
		"refusal":              {&kvclient.Error{Status: 403}, false},
		"authority 404":        {&authclient.Error{Status: 404}, false},
		"wrapped connect fail": {fmt.Errorf("reading: %w", &kvclient.Error{Err: transport(refused)}), true},
	} {
		if got := down(c.err); got != c.down {
			t.Errorf("%s: down = %v, want %v", label, got, c.down)
		}
	}
	for code, missing := range map[string]bool{"SecretNotFound": true, "KeyNotFound": true, "CertificateNotFound": true, "VaultNotFound": false, "NotFound": false} {
		if got := objectMissing(&kvclient.Error{Status: 404, Code: code}); got != missing {
			t.Errorf("404 %s: missing = %v, want %v", code, got, missing)
		}
	}
}
