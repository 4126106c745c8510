package cert

import (
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
)

func TestParseSubject(t *testing.T) {
	n, err := ParseSubject(`CN=app.example.com, O=Contoso\, Ltd, OU=Web; C=US, E=ops@example.com`)
	if err != nil {
		t.Fatal(err)
	}
	if n.CommonName != "app.example.com" || n.Organization[0] != "Contoso, Ltd" || n.OrganizationalUnit[0] != "Web" || n.Country[0] != "US" || len(n.ExtraNames) != 1 {
		t.Fatalf("%+v", n)
	}
	for _, bad := range []string{"CN", "CN=", "XX=y", "CN=a,,"} {
		if _, err := ParseSubject(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestNormalizeDefaultsAndRefusals(t *testing.T) {
	p := &Policy{X509Props: &X509Props{Subject: "CN=x"}}
	if err := Normalize(p); err != nil {
		t.Fatal(err)
	}
	if p.Issuer.Name != IssuerSelf || p.KeyProps.Kty != "RSA" || p.KeyProps.KeySize != 2048 || p.SecretProps.ContentType != "application/x-pkcs12" ||
		p.X509Props.ValidityMonths != 12 || len(p.X509Props.EKUs) != 2 || len(p.LifetimeActions) != 1 || p.LifetimeActions[0].Trigger.LifetimePercentage != 80 {
		t.Fatalf("defaults: %+v", p)
	}
	for label, c := range map[string]struct {
		p    *Policy
		want string
	}{
		"no policy":      {nil, "needs a policy"},
		"no subject":     {&Policy{}, "subject"},
		"rsa 1024":       {&Policy{X509Props: &X509Props{Subject: "CN=x"}, KeyProps: &KeyProps{Kty: "RSA", KeySize: 1024}}, "key_size"},
		"p-256k":         {&Policy{X509Props: &X509Props{Subject: "CN=x"}, KeyProps: &KeyProps{Kty: "EC", Crv: "P-256K"}}, "crv"},
		"hsm":            {&Policy{X509Props: &X509Props{Subject: "CN=x"}, KeyProps: &KeyProps{Kty: "RSA-HSM"}}, "kty"},
		"non-exportable": {&Policy{X509Props: &X509Props{Subject: "CN=x"}, KeyProps: &KeyProps{Exportable: boolp(false)}}, "exportable"},
		"content type":   {&Policy{X509Props: &X509Props{Subject: "CN=x"}, SecretProps: &SecretProps{ContentType: "text/plain"}}, "contentType"},
		"validity":       {&Policy{X509Props: &X509Props{Subject: "CN=x", ValidityMonths: 1201}}, "validity_months"},
		"eku":            {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"serverAuth"}}}, "OID"},
		// DER packs the first two arcs into one number: 133.x and 1.40
		// cannot be issued, so they are refused up front (found by FuzzPolicy).
		"eku first arc":  {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"133.6.1.5.5.7.3.2"}}}, "OID"},
		"eku second arc": {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"1.40.1"}}}, "OID"},
		"eku sign":       {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"1.+3.6"}}}, "OID"},
		"eku zero":       {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"1.3.06"}}}, "OID"},
		"eku huge arc":   {&Policy{X509Props: &X509Props{Subject: "CN=x", EKUs: []string{"2.4294967296"}}}, "OID"},
		"key usage":      {&Policy{X509Props: &X509Props{Subject: "CN=x", KeyUsage: []string{"sign"}}}, "key_usage"},
		"upn":            {&Policy{X509Props: &X509Props{SANs: &SANs{UPNs: []string{"a@b"}}, Subject: "CN=x"}}, "upns"},
		"ip":             {&Policy{X509Props: &X509Props{SANs: &SANs{IPAddresses: []string{"300.1.1.1"}}}}, "ipAddresses"},
		"issuer":         {&Policy{X509Props: &X509Props{Subject: "CN=x"}, Issuer: &IssuerParams{Name: "Digi Cert"}}, "Digi Cert"},
		"renew unknown":  {&Policy{X509Props: &X509Props{Subject: "CN=x"}, Issuer: &IssuerParams{Name: "Unknown"}, LifetimeActions: []LifetimeAction{action(AutoRenew, 0, 30)}}, "AutoRenew"},
		"two triggers":   {&Policy{X509Props: &X509Props{Subject: "CN=x"}, LifetimeActions: []LifetimeAction{action(AutoRenew, 50, 30)}}, "exactly one"},
		"unknown action": {&Policy{X509Props: &X509Props{Subject: "CN=x"}, LifetimeActions: []LifetimeAction{action("Page", 50, 0)}}, "Page"},
	} {
		err := Normalize(c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", label, err, c.want)
		}
	}
}

func action(kind string, pct, days int) LifetimeAction {
	var la LifetimeAction
	la.Action.ActionType, la.Trigger.LifetimePercentage, la.Trigger.DaysBeforeExpiry = kind, pct, days
	return la
}

// A PATCH merges member by member and replaces lists.
func TestMergeIsDeep(t *testing.T) {
	p := Policy{X509Props: &X509Props{Subject: "CN=x", ValidityMonths: 12, EKUs: []string{"1.2.3"}}, KeyProps: &KeyProps{Kty: "RSA", KeySize: 2048}}
	if err := merge(&p, Policy{X509Props: &X509Props{ValidityMonths: 3, EKUs: []string{"1.2.4"}}, ID: "ignored"}); err != nil {
		t.Fatal(err)
	}
	if p.X509Props.Subject != "CN=x" || p.X509Props.ValidityMonths != 3 || len(p.X509Props.EKUs) != 1 || p.X509Props.EKUs[0] != "1.2.4" || p.KeyProps.KeySize != 2048 || p.ID != "" {
		t.Fatalf("%+v %+v", p.X509Props, p.KeyProps)
	}
}

func TestRenewDue(t *testing.T) {
	nbf, exp := int64(1_000_000), int64(1_000_000+100*86400)
	a := object.Attributes{NotBefore: &nbf, Expires: &exp}
	self := &IssuerParams{Name: IssuerSelf}
	at := func(day int) time.Time { return time.Unix(nbf+int64(day)*86400, 0) }
	for _, c := range []struct {
		la   LifetimeAction
		day  int
		want bool
	}{
		{action(AutoRenew, 80, 0), 79, false}, {action(AutoRenew, 80, 0), 80, true},
		{action(AutoRenew, 0, 30), 69, false}, {action(AutoRenew, 0, 30), 70, true},
		{action(EmailContacts, 0, 30), 99, false},
	} {
		p := &Policy{Issuer: self, LifetimeActions: []LifetimeAction{c.la}}
		if got := renewDue(p, a, at(c.day)); got != c.want {
			t.Errorf("%+v on day %d: %v", c.la, c.day, got)
		}
	}
	if renewDue(&Policy{Issuer: &IssuerParams{Name: IssuerUnknown}, LifetimeActions: []LifetimeAction{action(AutoRenew, 1, 0)}}, a, at(99)) {
		t.Error("a CA-signed certificate was due for AutoRenew")
	}
}
