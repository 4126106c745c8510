package egress

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCheckURL(t *testing.T) {
	for raw, allowedWhenPrivateOff := range map[string]bool{
		"https://hooks.example.com/kv":        true,
		"https://203.0.113.7:8443/kv":         true,
		"https://[2001:db8::1]/kv":            true,
		"http://hooks.example.com/kv":         false,
		"https://user:pw@hooks.example.com/":  false,
		"hooks.example.com/kv":                false,
		"https:///kv":                         false,
		"https://127.0.0.1/kv":                false,
		"https://127.1.2.3/kv":                false,
		"https://[::1]/kv":                    false,
		"https://[::ffff:127.0.0.1]/kv":       false,
		"https://10.0.0.1/kv":                 false,
		"https://172.16.5.4/kv":               false,
		"https://192.168.1.1/kv":              false,
		"https://169.254.169.254/metadata":    false,
		"https://100.64.0.1/kv":               false,
		"https://0.0.0.0/kv":                  false,
		"https://[fd00::1]/kv":                false,
		"https://[fe80::1]/kv":                false,
		"https://localhost/kv":                false,
		"https://demo.vault.localhost:8443/x": false,
	} {
		_, err := Policy{}.CheckURL(raw)
		if (err == nil) != allowedWhenPrivateOff {
			t.Errorf("CheckURL(%q) = %v, want allowed %v", raw, err, allowedWhenPrivateOff)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("CheckURL(%q) = %v, not an ErrRefused", raw, err)
		}
		// The operator's setting lets internal addresses through, never
		// plain http, credentials or a relative URL.
		_, err = Policy{AllowPrivate: true}.CheckURL(raw)
		structural := raw == "http://hooks.example.com/kv" || raw == "https://user:pw@hooks.example.com/" || raw == "hooks.example.com/kv" || raw == "https:///kv"
		if (err == nil) == structural {
			t.Errorf("with private endpoints allowed, CheckURL(%q) = %v", raw, err)
		}
	}
}

// The dial-time check refuses what a name resolved to, which CheckURL
// cannot see: here the server's own loopback listener.
func TestClientRefusesInternalAddressesWhenDialed(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	if _, err := (Policy{Roots: roots}).Client(0).Get(srv.URL); !errors.Is(err, ErrRefused) {
		t.Fatalf("a loopback dial: %v, want ErrRefused", err)
	}
	resp, err := (Policy{Roots: roots, AllowPrivate: true}).Client(0).Get(srv.URL)
	if err != nil {
		t.Fatalf("with private endpoints allowed: %v", err)
	}
	resp.Body.Close()
}

// A redirect is not followed: it could lead anywhere.
func TestClientFollowsNoRedirect(t *testing.T) {
	srv := httptest.NewTLSServer(http.RedirectHandler("https://169.254.169.254/", http.StatusFound))
	defer srv.Close()
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	resp, err := (Policy{Roots: roots, AllowPrivate: true}).Client(0).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status %d: the redirect was followed", resp.StatusCode)
	}
}

// A refusal names the setting that would allow the address, the one its
// policy was given: an issuer's refusal must not send an operator to the
// event endpoints' flag.
func TestRefusalNamesTheSetting(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{}, "--allow-private-endpoints"},
		{Policy{Setting: "coffer server --allow-private-issuers"}, "--allow-private-issuers"},
	} {
		for _, raw := range []string{"https://10.0.0.1/", "https://localhost/"} {
			_, err := tc.p.CheckURL(raw)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%+v refused %s with %v, want ErrRefused naming %s", tc.p, raw, err, tc.want)
			}
		}
		err := tc.p.control("tcp", "127.0.0.1:443", nil)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v refused a dial with %v, want ErrRefused naming %s", tc.p, err, tc.want)
		}
	}
}
