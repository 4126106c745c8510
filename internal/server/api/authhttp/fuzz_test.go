package authhttp

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

const (
	host  = "https://login.coffer.example:8443"
	vault = "https://vault.coffer.example:8443"
)

// The directory's ids are random; seeds name them by these placeholders,
// which the target replaces in the path and the body.
const (
	phTenant = "{tenant}"
	phClient = "{client_id}"
	phSecret = "{client_secret}"
	phMI     = "{mi_client_id}"
)

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzTokenEndpoint", func(*testing.T) []fuzzseed.Seed {
		const form = "application/x-www-form-urlencoded"
		enc := func(kv ...string) string {
			v := url.Values{}
			for i := 0; i < len(kv); i += 2 {
				v.Add(kv[i], kv[i+1])
			}
			// Placeholders stay readable in the corpus.
			return strings.NewReplacer("%7B", "{", "%7D", "}").Replace(v.Encode())
		}
		scope := vault + "/.default"
		return []fuzzseed.Seed{
			// What azidentity's ClientSecretCredential (MSAL Go) posts.
			fuzzseed.S("msal-client-secret", phTenant, form+"; charset=utf-8", "client_id="+phClient+"&client_info=1&client_secret="+phSecret+"&grant_type=client_credentials&scope="+url.QueryEscape(scope+" openid offline_access profile")),
			fuzzseed.S("client-secret", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope)),
			fuzzseed.S("act-for", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope, "mi_client_id", phMI)),
			fuzzseed.S("act-for-two-selectors", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope, "mi_client_id", phMI, "mi_object_id", phMI)),
			fuzzseed.S("client-assertion", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "scope", scope,
				"client_assertion_type", authority.ClientAssertionType, "client_assertion", "eyJhbGciOiJQUzI1NiIsInR5cCI6IkpXVCIsIng1dCI6Ik1UQXhNakF6TURRd05RIn0.eyJhdWQiOiJ4IiwiaXNzIjoieSJ9.c2ln")),
			fuzzseed.S("upper-tenant", strings.ToUpper(phTenant), form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope)),
			fuzzseed.S("tenant-name", "contoso.onmicrosoft.com", form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope)),
			fuzzseed.S("wrong-secret", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", "not-the-secret-value", "scope", scope)),
			fuzzseed.S("password-grant", phTenant, form, enc("grant_type", "password", "client_id", phClient, "username", "admin", "password", "hunter22hunter22", "scope", scope)),
			fuzzseed.S("repeated-fields", phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_id", "other", "client_secret", phSecret, "client_secret", "x", "scope", scope)),
			fuzzseed.S("json-body", phTenant, "application/json", `{"grant_type":"client_credentials","client_id":"`+phClient+`","client_secret":"`+phSecret+`"}`),
			fuzzseed.S("bad-escape", phTenant, form, "grant_type=client_credentials&client_secret=%zz"+phSecret),
			fuzzseed.S("oversized", phTenant, form, "grant_type=client_credentials&client_id="+phClient+"&pad="+strings.Repeat("a", 70<<10)),
			fuzzseed.S("no-content-type", phTenant, "", enc("grant_type", "client_credentials")),
			fuzzseed.S("traversal-tenant", "..%2F"+phTenant, form, enc("grant_type", "client_credentials", "client_id", phClient, "client_secret", phSecret, "scope", scope)),
		}
	})
}

// directory is a tenant with an application that may act for a managed
// identity, made through the authority's own API.
type directory struct {
	a                      *authority.Authority
	tenant, client, secret string
	mi                     string
}

func newDirectory(t testing.TB) directory {
	ctx := context.Background()
	b, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.Open(ctx, b, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	a, err := authority.Open(ctx, b, authority.Config{Host: host, Resources: []string{vault}, Roles: roles, RateLimit: -1}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := a.CreateTenant(ctx, "fuzz")
	if err != nil {
		t.Fatal(err)
	}
	sp, secret, err := a.CreateServicePrincipal(ctx, tn.ID, "app")
	if err != nil {
		t.Fatal(err)
	}
	mi, err := a.CreateManagedIdentity(ctx, tn.ID, "apps", "bound")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roles.Create(ctx, rbac.Assignment{ID: authority.NewGUID(), TenantID: tn.ID, RoleID: rbac.ManagedIdentityOperatorID,
		PrincipalID: sp.ObjectID, PrincipalType: sp.Type, Scope: mi.ResourceID}); err != nil {
		t.Fatal(err)
	}
	return directory{a: a, tenant: tn.ID, client: sp.AppID, secret: secret, mi: mi.AppID}
}

// FuzzTokenEndpoint posts arbitrary token requests (path tenant, content
// type, form body) to the authority's HTTP handler. Every answer on the
// token route is JSON: Entra ID's error shape with an AADSTS code, or a
// Bearer token that verifies for the tenant in the path and the client
// that asked; no answer carries the client secret; every answer is
// marked no-store.
func FuzzTokenEndpoint(f *testing.F) {
	d := newDirectory(f)
	h := New(d.a, nil, slog.New(slog.DiscardHandler))
	fill := strings.NewReplacer(phTenant, d.tenant, strings.ToUpper(phTenant), strings.ToUpper(d.tenant), phClient, d.client, phSecret, d.secret, phMI, d.mi)
	f.Fuzz(func(t *testing.T, tenant, contentType, body string) {
		tenant, body = fill.Replace(tenant), fill.Replace(body)
		r, err := http.NewRequest(http.MethodPost, host+"/"+tenant+"/oauth2/v2.0/token", strings.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		routed := h.Handles(r)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		out, _ := io.ReadAll(w.Result().Body)
		form, _ := url.ParseQuery(body)
		secretElsewhere := strings.Contains(tenant, d.secret)
		for k, vs := range form {
			for _, v := range vs {
				if k != "client_secret" && strings.Contains(v, d.secret) {
					secretElsewhere = true
				}
			}
		}
		if strings.Contains(string(out), d.secret) && !secretElsewhere {
			t.Fatalf("the answer (%d) carries the client secret: %s", w.Code, out)
		}
		if !routed {
			return // the mux's own 404 or 405
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("Cache-Control %q on a token answer", cc)
		}
		if w.Code != http.StatusOK {
			var e struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
				Codes       []int  `json:"error_codes"`
				TraceID     string `json:"trace_id"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error == "" || len(e.Codes) != 1 || !strings.HasPrefix(e.Description, "AADSTS") || e.TraceID == "" {
				t.Fatalf("error answer %d is not Entra ID's shape: %s", w.Code, out)
			}
			if !slices.Contains([]int{400, 401, 403, 413, 429, 500, 503}, w.Code) {
				t.Fatalf("answered %d", w.Code)
			}
			if w.Code == 500 {
				t.Fatalf("a token request failed inside the authority: %s", out)
			}
			return
		}
		var tok struct {
			Type   string `json:"token_type"`
			Access string `json:"access_token"`
		}
		if err := json.Unmarshal(out, &tok); err != nil || tok.Type != "Bearer" {
			t.Fatalf("200 with %s", out)
		}
		pathTenant := strings.ToLower(strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0])
		c, err := d.a.Verifier().Verify(tok.Access, token.Expect{IssuerFor: d.a.Issuer, Audiences: []string{vault}})
		if err != nil || c.TenantID != pathTenant || c.TenantID != d.tenant {
			t.Fatalf("the token for tenant %q does not verify as one (%v): %+v", pathTenant, err, c)
		}
		if form.Get("client_secret") != d.secret || form.Get("client_id") != d.client && !strings.EqualFold(form.Get("client_id"), d.client) {
			t.Fatalf("a token for a form without the client's credentials: %s", body)
		}
		if mi := form.Get("mi_client_id"); mi != "" && c.AppID != d.mi || mi == "" && c.AppID != d.client {
			t.Fatalf("a token for %s, asked with mi_client_id %q", c.AppID, mi)
		}
	})
}
