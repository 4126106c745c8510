package security

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/oidctest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// SSRF through a federated issuer URL (CWE-918, OWASP A10): whoever may write a federated credential names a URL that
// the server fetches. Internal addresses are refused unless the operator
// allows private issuers.
func TestFederatedIssuerSSRF(t *testing.T) {
	iss := oidctest.New(t) // on loopback, as an attacker's target would be
	roots := x509.NewCertPool()
	roots.AddCert(iss.Server.Certificate())
	exchange := func(t *testing.T, env *testserver.Env, issuer string) (int, string) {
		t.Helper()
		var mi mgmthttp.IdentityOut
		name := "wi-" + strings.NewReplacer(".", "-", ":", "-", "/", "-", "[", "", "]", "").Replace(strings.TrimPrefix(issuer, "https://"))
		manage(t, env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: name, ResourceGroup: "apps"}, &mi)
		manage(t, env, "PUT", "identities/apps/"+name+"/federated-credentials/k8s", federation.Credential{
			Issuer: issuer, Subject: "system:serviceaccount:default:app", Audiences: []string{federation.DefaultAudience}}, nil)
		a := iss.TokenAs(t, issuer, "system:serviceaccount:default:app", []string{federation.DefaultAudience}, time.Time{}, time.Time{})
		status, body := tokenFor(t, env, env.State.TenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {mi.ClientID},
			"scope": {env.Endpoints.Resource() + "/.default"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {a}})
		d, _ := body["error_description"].(string)
		return status, d
	}
	strict := testserver.Start(t, testserver.Options{FederationRoots: roots, TokenRateLimit: -1})
	port := iss.Server.URL[strings.LastIndex(iss.Server.URL, ":"):]
	for name, issuer := range map[string]string{
		"SSRF: loopback issuer":                      iss.URL,
		"SSRF: loopback issuer by name (localhost)":  "https://localhost" + port,
		"SSRF: IPv6 loopback issuer":                 "https://[::1]" + port,
		"SSRF: link-local issuer (cloud metadata)":   "https://169.254.169.254",
		"SSRF: private-range issuer (RFC 1918)":      "https://10.0.0.1",
		"SSRF: IPv4-mapped IPv6 loopback issuer":     "https://[::ffff:127.0.0.1]" + port,
		"SSRF: unspecified-address issuer (0.0.0.0)": "https://0.0.0.0" + port,
		"SSRF: IPv6 unique-local issuer (fd00::/8)":  "https://[fd00::1]",
		"SSRF: shared-address issuer (100.64/10)":    "https://100.64.0.1",
		"SSRF: private-range issuer (192.168/16)":    "https://192.168.0.1",
	} {
		t.Run(name, func(t *testing.T) {
			code, d := exchange(t, strict, issuer)
			if code != 401 || !strings.Contains(d, "refused") || !strings.Contains(d, "--allow-private-issuers") || strings.Contains(d, "endpoints") {
				t.Fatalf("%d %s", code, d)
			}
		})
	}
	t.Run("SSRF: an operator's allowance lets a private issuer through", func(t *testing.T) {
		open := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
		if code, d := exchange(t, open, iss.URL); code != 200 {
			t.Fatalf("%d %s", code, d)
		}
	})
}
