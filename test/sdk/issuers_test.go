package sdk

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// Certificate contacts with the real azcertificates client: empty, set,
// read, refused, deleted.
func TestCertificateContacts(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc := certsClient(t, env)
	ctx := context.Background()

	got, err := cc.GetContacts(ctx, nil)
	if err != nil || len(got.ContactList) != 0 {
		t.Fatalf("GetContacts before any = %+v, %v", got.ContactList, err)
	}
	want := []*azcertificates.Contact{
		{Email: to.Ptr("ops@example.com"), Name: to.Ptr("Ops"), Phone: to.Ptr("+1 555 0100")},
		{Email: to.Ptr("sec@example.com")},
	}
	set, err := cc.SetContacts(ctx, azcertificates.Contacts{ContactList: want}, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if *set.ID != strings.TrimSuffix(env.Admin.VaultURL, "/")+"/certificates/contacts" || len(set.ContactList) != 2 {
		t.Fatalf("SetContacts = %+v", set.Contacts)
	}
	got, err = cc.GetContacts(ctx, nil)
	if err != nil || len(got.ContactList) != 2 || *got.ContactList[0].Name != "Ops" || *got.ContactList[0].Phone != "+1 555 0100" || *got.ContactList[1].Email != "sec@example.com" {
		t.Fatalf("GetContacts = %+v, %v", got.ContactList, err)
	}
	_, err = cc.SetContacts(ctx, azcertificates.Contacts{ContactList: []*azcertificates.Contact{{Email: to.Ptr("not an address")}}}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	_, err = cc.SetContacts(ctx, azcertificates.Contacts{ContactList: []*azcertificates.Contact{{Name: to.Ptr("no email")}}}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	del, err := cc.DeleteContacts(ctx, nil)
	if err != nil || len(del.ContactList) != 2 {
		t.Fatalf("DeleteContacts = %+v, %v", del.ContactList, err)
	}
	if got, err := cc.GetContacts(ctx, nil); err != nil || len(got.ContactList) != 0 {
		t.Fatalf("GetContacts after delete = %+v, %v", got.ContactList, err)
	}
}

// Certificate issuers with the real azcertificates client: set, get
// (never the password), update, list, delete, and the errors, including
// a policy naming an issuer the vault lacks or cannot order from.
func TestCertificateIssuers(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	cc := certsClient(t, env)
	ctx := context.Background()
	params := azcertificates.SetIssuerParameters{
		Provider:    to.Ptr("DigiCert"),
		Credentials: &azcertificates.IssuerCredentials{AccountID: to.Ptr("acct-1"), Password: to.Ptr("s3cret-api-key")},
		OrganizationDetails: &azcertificates.OrganizationDetails{ID: to.Ptr("org-7"), AdminContacts: []*azcertificates.AdministratorContact{
			{FirstName: to.Ptr("Ada"), LastName: to.Ptr("Lovelace"), Email: to.Ptr("ada@example.com"), Phone: to.Ptr("555")},
		}},
	}
	set, err := cc.SetIssuer(ctx, "digi", params, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if *set.ID != strings.TrimSuffix(env.Admin.VaultURL, "/")+"/certificates/issuers/digi" || *set.Provider != "DigiCert" ||
		set.Attributes == nil || !*set.Attributes.Enabled || set.Attributes.Created == nil {
		t.Fatalf("SetIssuer = %+v", set.Issuer)
	}
	if set.Credentials == nil || *set.Credentials.AccountID != "acct-1" || set.Credentials.Password != nil {
		t.Fatalf("SetIssuer credentials = %+v: the account id, never the password", set.Credentials)
	}
	got, err := cc.GetIssuer(ctx, "digi", nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if got.Credentials.Password != nil || *got.OrganizationDetails.ID != "org-7" || *got.OrganizationDetails.AdminContacts[0].LastName != "Lovelace" {
		t.Fatalf("GetIssuer = %+v", got.Issuer)
	}
	upd, err := cc.UpdateIssuer(ctx, "digi", azcertificates.UpdateIssuerParameters{Attributes: &azcertificates.IssuerAttributes{Enabled: to.Ptr(false)}}, nil)
	if err != nil || *upd.Attributes.Enabled || *upd.Provider != "DigiCert" || *upd.Credentials.AccountID != "acct-1" {
		t.Fatalf("UpdateIssuer = %+v, %v", upd.Issuer, err)
	}
	if _, err := cc.SetIssuer(ctx, "other", azcertificates.SetIssuerParameters{Provider: to.Ptr("GlobalSign")}, nil); err != nil {
		t.Fatal(client.Describe(err))
	}
	names, _ := collect(t, cc.NewListIssuerPropertiesPager(nil), func(p azcertificates.ListIssuerPropertiesResponse) []string {
		return each(p.Value, func(i *azcertificates.IssuerProperties) string {
			return (*i.ID)[strings.LastIndex(*i.ID, "/")+1:] + "/" + *i.Provider
		})
	})
	if !slices.Equal(names, []string{"digi/DigiCert", "other/GlobalSign"}) {
		t.Fatalf("issuers listed: %v", names)
	}

	_, err = cc.SetIssuer(ctx, "noprovider", azcertificates.SetIssuerParameters{}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	_, err = cc.SetIssuer(ctx, "Self", azcertificates.SetIssuerParameters{Provider: to.Ptr("DigiCert")}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	_, err = cc.GetIssuer(ctx, "missing", nil)
	respErr(t, err, http.StatusNotFound, "CertificateIssuerNotFound")
	_, err = cc.UpdateIssuer(ctx, "missing", azcertificates.UpdateIssuerParameters{Provider: to.Ptr("DigiCert")}, nil)
	respErr(t, err, http.StatusNotFound, "CertificateIssuerNotFound")

	// A policy may name an issuer, but only one of the vault's, and only
	// one Coffer can order from.
	policy := func(issuer string) azcertificates.CreateCertificateParameters {
		return azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
			IssuerParameters:          &azcertificates.IssuerParameters{Name: to.Ptr(issuer)},
			X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=x.example.com")},
		}}
	}
	_, err = cc.CreateCertificate(ctx, "c", policy("nosuch"), nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	_, err = cc.CreateCertificate(ctx, "c", policy("other"), nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")

	del, err := cc.DeleteIssuer(ctx, "digi", nil)
	if err != nil || *del.Provider != "DigiCert" || del.Credentials.Password != nil {
		t.Fatalf("DeleteIssuer = %+v, %v", del.Issuer, err)
	}
	_, err = cc.GetIssuer(ctx, "digi", nil)
	respErr(t, err, http.StatusNotFound, "CertificateIssuerNotFound")
	_, err = cc.DeleteIssuer(ctx, "digi", nil)
	respErr(t, err, http.StatusNotFound, "CertificateIssuerNotFound")
	if inStore(t, env, []byte("s3cret-api-key")) {
		t.Fatal("an issuer's password is in the store file unsealed")
	}

	// Coffer's ACME extension: the directory must be https, and, unless
	// the operator allows it, not an internal address.
	tok := adminToken(t, env, env.Endpoints.Resource())
	for body, why := range map[string]string{
		`{"provider":"ACME"}`: "no directory",
		`{"provider":"ACME","acme":{"directoryUrl":"http://acme.example.com/dir"}}`:                                     "not https",
		`{"provider":"ACME","acme":{"directoryUrl":"https://127.0.0.1:14000/dir"}}`:                                     "loopback, not allowed",
		`{"provider":"ACME","acme":{"directoryUrl":"https://169.254.169.254/dir"}}`:                                     "link-local, not allowed",
		`{"provider":"ACME","acme":{"directoryUrl":"https://acme.example.com/dir","challenge":"tls-alpn-01"}}`:          "unsupported challenge",
		`{"provider":"ACME","acme":{"directoryUrl":"https://acme.example.com/dir","challenge":"dns-01"}}`:               "dns-01 without a hook",
		`{"provider":"ACME","acme":{"directoryUrl":"https://acme.example.com/dir"},"credentials":{"account_id":"kid"}}`: "EAB without its key",
		`{"provider":"DigiCert","acme":{"directoryUrl":"https://acme.example.com/dir"}}`:                                "acme settings on another provider",
	} {
		resp, e := raw(t, env, "PUT", "/certificates/issuers/acme?api-version=7.6", tok, body)
		if resp.StatusCode != http.StatusBadRequest || e.Error.Code != "BadParameter" {
			t.Errorf("%s: %d %s, want 400 BadParameter", why, resp.StatusCode, e.Error.Code)
		}
	}
	resp, e, data := rawBody(t, env, "PUT", "/certificates/issuers/acme?api-version=7.6", tok,
		`{"provider":"acme","acme":{"directoryUrl":"https://acme.example.com/dir","challenge":"dns-01","dnsHookUrl":"https://hook.example.com/","dnsHookSecret":"hook-secret"},"credentials":{"account_id":"kid-1","pwd":"c2VjcmV0LWhtYWMta2V5"}}`)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(data), "hook-secret") || strings.Contains(string(data), "c2VjcmV0LWhtYWMta2V5") ||
		!strings.Contains(string(data), `"provider":"ACME"`) || !strings.Contains(string(data), `"challenge":"dns-01"`) {
		t.Fatalf("ACME issuer: %d %s %s", resp.StatusCode, e.Error.Message, data)
	}
}
