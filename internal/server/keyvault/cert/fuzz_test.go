package cert

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"reflect"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzPolicy", func(*testing.T) []fuzzseed.Seed {
		return []fuzzseed.Seed{
			// What azcertificates' CreateCertificate sends, and the Azure
			// portal's and az cli's default policies.
			fuzzseed.S("az-default-policy", `{"issuer":{"name":"Self"},"key_props":{"exportable":true,"kty":"RSA","key_size":2048,"reuse_key":true},"lifetime_actions":[{"action":{"action_type":"AutoRenew"},"trigger":{"days_before_expiry":90}}],"secret_props":{"contentType":"application/x-pkcs12"},"x509_props":{"key_usage":["cRLSign","dataEncipherment","digitalSignature","keyEncipherment","keyAgreement","keyCertSign"],"subject":"CN=CLIGetDefaultPolicy","validity_months":12}}`),
			fuzzseed.S("azcertificates-ec-pem", `{"issuer":{"name":"Self"},"key_props":{"kty":"EC","crv":"P-384"},"secret_props":{"contentType":"application/x-pem-file"},"x509_props":{"subject":"CN=web.coffer.example, O=Coffer, OU=Edge, L=Paris, ST=IDF, C=FR","sans":{"dns_names":["web.coffer.example","*.web.coffer.example"],"emails":["ops@coffer.example"],"ipAddresses":["10.0.0.7","2001:db8::7"],"uris":["spiffe://coffer.example/web"]},"ekus":["1.3.6.1.5.5.7.3.1","1.3.6.1.5.5.7.3.2","1.2.3.4.5"],"validity_months":24}}`),
			fuzzseed.S("csr-unknown-issuer", `{"issuer":{"name":"Unknown","cty":"OV-SSL","cert_transparency":false},"key_props":{"kty":"RSA","key_size":3072},"x509_props":{"subject":"CN=api.coffer.example","sans":{"dns_names":["api.coffer.example"]}},"lifetime_actions":[{"trigger":{"lifetime_percentage":90},"action":{"action_type":"EmailContacts"}}]}`),
			fuzzseed.S("sans-only", `{"x509_props":{"sans":{"dns_names":["only.coffer.example"]}}}`),
			fuzzseed.S("subject-escapes", `{"x509_props":{"subject":"CN=Smith\\, John;O=A\\=B;E=john@coffer.example;SERIALNUMBER=42;STREET=1 Main;POSTALCODE=75001"}}`),
			fuzzseed.S("bad-issuer", `{"issuer":{"name":"DigiCert"},"x509_props":{"subject":"CN=a"}}`),
			fuzzseed.S("non-exportable", `{"key_props":{"exportable":false,"kty":"RSA-HSM"},"x509_props":{"subject":"CN=a"}}`),
			fuzzseed.S("bad-oids", `{"x509_props":{"subject":"CN=a","ekus":["3.1","1.40.1","1.2.99999999999999999999","1.2.-3","1"]}}`),
			fuzzseed.S("bad-sans", `{"x509_props":{"sans":{"dns_names":["bad name","a..b",""],"emails":["not-an-email"],"ipAddresses":["999.1.1.1"],"uris":["/relative"],"upns":["u@x"]}}}`),
			fuzzseed.S("two-actions", `{"x509_props":{"subject":"CN=a"},"lifetime_actions":[{"trigger":{"lifetime_percentage":50},"action":{"action_type":"AutoRenew"}},{"trigger":{"days_before_expiry":3},"action":{"action_type":"EmailContacts"}}]}`),
			fuzzseed.S("validity-extremes", `{"x509_props":{"subject":"CN=a","validity_months":1200}}`),
			fuzzseed.S("subject-attribute-unknown", `{"x509_props":{"subject":"CN=a, DC=example"}}`),
			fuzzseed.S("subject-empty-value", `{"x509_props":{"subject":"CN=, O=x"}}`),
			fuzzseed.S("null-everything", `{"key_props":null,"x509_props":null,"issuer":null,"lifetime_actions":null}`),
			fuzzseed.S("not-json", `CN=a`),
		}
	})
}

// FuzzPolicy checks certificate policies as create and update read them.
// A refusal is the object layer's invalid-parameter error; an accepted
// policy is complete (issuer, key, secret and X.509 properties filled),
// stays the same when normalized again, and is one Coffer can issue: its
// template makes a self-signed certificate that Go's x509 accepts and
// parses back to the policy's subject and names, and its CSR signs.
func FuzzPolicy(f *testing.F) {
	m, err := keyops.Generate(keyops.EC, 0, keyops.P256)
	if err != nil {
		f.Fatal(err)
	}
	signer := m.Signer()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		var p *Policy
		if json.Unmarshal([]byte(body), &p) != nil {
			return
		}
		if err := Normalize(p); err != nil {
			var oe *object.Error
			if !errors.As(err, &oe) || !errors.Is(err, object.ErrInvalid) {
				t.Fatalf("refusal %v is not an invalid-parameter error", err)
			}
			return
		}
		if p.Issuer == nil || p.KeyProps == nil || p.SecretProps == nil || p.X509Props == nil || p.Attributes == nil {
			t.Fatalf("an accepted policy is incomplete: %+v", p)
		}
		again := new(Policy)
		b, _ := json.Marshal(p)
		json.Unmarshal(b, again)
		if err := Normalize(again); err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("normalizing again: %v\n%+v\n%+v", err, again, p)
		}
		tmpl, err := template(p, now, big.NewInt(1))
		if err != nil {
			t.Fatalf("an accepted policy has no template: %v", err)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
		if err != nil {
			t.Fatalf("an accepted policy cannot be issued: %v\n%s", err, b)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("the issued certificate does not parse: %v\n%s", err, b)
		}
		if c.Subject.CommonName != tmpl.Subject.CommonName || !reflect.DeepEqual(c.DNSNames, tmpl.DNSNames) || len(c.IPAddresses) != len(tmpl.IPAddresses) {
			t.Fatalf("issued %v %v for %v %v", c.Subject, c.DNSNames, tmpl.Subject, tmpl.DNSNames)
		}
		if p.Issuer.Name == IssuerUnknown {
			csr, err := makeCSR(p, m)
			if err != nil {
				t.Fatalf("an accepted policy has no CSR: %v\n%s", err, b)
			}
			if _, err := x509.ParseCertificateRequest(csr); err != nil {
				t.Fatalf("the CSR does not parse: %v", err)
			}
		}
	})
}
