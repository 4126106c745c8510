package mgmthttp_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/endpoint"
)

// The metadata document in both of ARM's shapes: the object the Azure
// CLI's `az cloud register --endpoint-resource-manager` reads (2015-01-01),
// and the array of clouds of later api-versions. Neither needs a token.
func TestARMMetadata(t *testing.T) {
	e := newEnv(t)
	login := e.ep.AuthorityURL() + "/adfs"
	a := e.do(t, "GET", "/metadata/endpoints?api-version=2015-01-01", "", "")
	if a.status != 200 || a.field("authentication.loginEndpoint") != login || a.field("graphEndpoint") != endpoint.ManagementResource {
		t.Fatalf("2015-01-01: %d %s", a.status, a.raw)
	}
	if aud, _ := a.field("authentication.audiences").([]any); len(aud) != 1 || aud[0] != endpoint.ManagementResource {
		t.Fatalf("audiences %v, want the management audience alone", aud)
	}

	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, httptest.NewRequest("GET", "https://"+e.ep.Apex()+"/metadata/endpoints?api-version=2022-09-01", nil))
	var clouds []struct {
		Name, ResourceManager string
		Authentication        struct {
			LoginEndpoint, Tenant, IdentityProvider string
			Audiences                               []string
		}
		Suffixes struct {
			KeyVaultDNS string `json:"keyVaultDns"`
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &clouds); rec.Code != 200 || err != nil || len(clouds) != 1 {
		t.Fatalf("2022-09-01: %d %v %s", rec.Code, err, rec.Body)
	}
	c := clouds[0]
	if c.Name != mgmthttp.CloudName || c.ResourceManager != e.ep.AuthorityURL()+"/" || c.Authentication.LoginEndpoint != login ||
		c.Authentication.Tenant != "adfs" || c.Authentication.IdentityProvider != "ADFS" || c.Suffixes.KeyVaultDNS != e.ep.Apex() ||
		len(c.Authentication.Audiences) != 1 || c.Authentication.Audiences[0] != endpoint.ManagementResource {
		t.Fatalf("2022-09-01: %+v", c)
	}

	for name, c := range map[string]struct{ query, code string }{
		"no api-version":   {"", "MissingApiVersionParameter"},
		"not a date":       {"?api-version=1.0", "InvalidApiVersionParameter"},
		"control bytes":    {"?api-version=%0A2015", "InvalidApiVersionParameter"},
		"an over-long one": {"?api-version=" + strings.Repeat("9", 100), "InvalidApiVersionParameter"},
	} {
		t.Run(name, func(t *testing.T) {
			a := e.do(t, "GET", "/metadata/endpoints"+c.query, "", "")
			if code, msg := a.errCode(); a.status != 400 || code != c.code || strings.ContainsAny(msg, "\n") || len(msg) > 200 {
				t.Fatalf("%d %s", a.status, a.raw)
			}
		})
	}
}

// The subscription routes: any principal of the tenant holding a
// management token sees the tenant's one subscription and nothing else.
func TestARMSubscriptions(t *testing.T) {
	e := newEnv(t)
	other, err := e.auth.CreateTenant(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	vaultToken := e.token(t, e.state.TenantID, e.nobodySP.AppID, rotateSecret(t, e), e.ep.Resource())
	subscription := func(t *testing.T, e *env, a answer) {
		t.Helper()
		s := a.body
		if v, ok := a.body["value"].([]any); ok {
			if len(v) != 1 || a.field("count.value") != 1.0 {
				t.Fatalf("list = %s, want one subscription", a.raw)
			}
			s, _ = v[0].(map[string]any)
		}
		want := map[string]any{"id": "/subscriptions/" + e.sub, "subscriptionId": e.sub, "tenantId": e.state.TenantID, "state": "Enabled", "authorizationSource": "RoleBased"}
		for k, w := range want {
			if s[k] != w {
				t.Errorf("%s = %v, want %v", k, s[k], w)
			}
		}
		if name, _ := s["displayName"].(string); name == "" {
			t.Errorf("no displayName: %s", a.raw)
		}
	}
	for name, c := range map[string]routeCase{
		"list":                         {method: "GET", path: "/subscriptions?api-version=2019-11-01", who: admin, status: 200, check: subscription},
		"list, the newest api-version": {method: "GET", path: "/subscriptions?api-version=2022-12-01", who: admin, status: 200, check: subscription},
		"list, no role":                {method: "GET", path: "/subscriptions?api-version=2019-11-01", who: nobody, status: 200, check: subscription},
		"show":                         {method: "GET", path: "/subscriptions/{sub}?api-version=2019-11-01", who: admin, status: 200, check: subscription},
		"show, upper case":             {method: "GET", path: "/subscriptions/" + strings.ToUpper(e.sub) + "?api-version=2019-11-01", who: nobody, status: 200, check: subscription},
		"show another tenant's":        {method: "GET", path: "/subscriptions/" + other.SubscriptionID + "?api-version=2019-11-01", who: admin, status: 404, code: "SubscriptionNotFound", msg: other.SubscriptionID},
		"no token":                     {method: "GET", path: "/subscriptions?api-version=2019-11-01", status: 401, code: "Unauthorized"},
		"a vault token":                {method: "GET", path: "/subscriptions?api-version=2019-11-01", who: "raw:" + vaultToken, status: 401, code: "Unauthorized"},
		"no api-version":               {method: "GET", path: "/subscriptions", who: admin, status: 400, code: "MissingApiVersionParameter"},
		"an unknown api-version":       {method: "GET", path: "/subscriptions?api-version=2099-01-01", who: admin, status: 400, code: "InvalidApiVersionParameter", msg: "2019-11-01"},
		"a resource group":             {method: "GET", path: "/subscriptions/{sub}/resourcegroups?api-version=2021-04-01", who: admin, status: 404, code: "NotFound", msg: "coffer CLI"},
		"a write":                      {method: "PUT", path: "/subscriptions/{sub}?api-version=2019-11-01", who: admin, status: 404, code: "NotFound"},
	} {
		t.Run(name, func(t *testing.T) {
			c.path = e.fill(c.path)
			c.run(t, e)
		})
	}
}
