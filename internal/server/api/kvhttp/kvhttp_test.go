package kvhttp_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// setSecret stores a secret through the API and returns its version.
func (e *env) setSecret(t testing.TB, vaultName, name, value string) string {
	t.Helper()
	a := e.do(t, req{vault: vaultName, method: "PUT", path: "/secrets/" + name, body: `{"value":"` + value + `"}`})
	if a.status != 200 {
		t.Fatalf("set %s: %d %s", name, a.status, a.raw)
	}
	id := a.str("id")
	return id[strings.LastIndex(id, "/")+1:]
}

// Request -> status and error shape, across the middleware and the
// routes: vault, authentication, api-version, authorization, bodies.
func TestRequests(t *testing.T) {
	e := newEnv(t)
	e.setSecret(t, "demo", "present", "v")
	e.setSecret(t, "rbac", "present", "v")
	if a := e.do(t, req{method: "PATCH", path: "/secrets/present", body: `{"attributes":{"enabled":true}}`}); a.status != 200 {
		t.Fatal(a.raw)
	}
	disabled := e.setSecret(t, "demo", "disabled", "v")
	e.do(t, req{method: "PATCH", path: "/secrets/disabled/" + disabled, body: `{"attributes":{"enabled":false}}`})
	e.do(t, req{method: "POST", path: "/keys/ec/create", body: `{"kty":"EC"}`})
	e.setSecret(t, "demo", "gone", "v")
	e.do(t, req{method: "DELETE", path: "/secrets/gone"})
	e.setSecret(t, "locked", "kept", "v")
	e.do(t, req{vault: "locked", method: "DELETE", path: "/secrets/kept"})
	otherTenant := func() string {
		ctx := context.Background()
		tn, err := e.auth.CreateTenant(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		sp, s, err := e.auth.CreateServicePrincipal(ctx, tn.ID, "stranger")
		if err != nil {
			t.Fatal(err)
		}
		return e.token(t, tn.ID, sp.AppID, s, e.ep.Resource())
	}()
	bigValue := strings.Repeat("x", secret.MaxValueBytes+1)
	for name, c := range map[string]struct {
		r    req
		want want
	}{
		// The vault, then authentication, then the api-version.
		"no such vault":              {r: req{vault: "nope", path: "/secrets/present"}, want: want{404, "VaultNotFound", "", "Vault nope does not exist"}},
		"no token":                   {r: req{path: "/secrets/present", tok: "-"}, want: want{401, "Unauthorized", "", ""}},
		"not a token":                {r: req{path: "/secrets/present", tok: "a.b.c"}, want: want{401, "Unauthorized", "", ""}},
		"the management audience":    {r: req{path: "/secrets/present", tok: e.mgmt}, want: want{401, "Unauthorized", "", ""}},
		"another tenant's token":     {r: req{path: "/secrets/present", tok: otherTenant}, want: want{401, "Unauthorized", "", ""}},
		"401 before the api-version": {r: req{path: "/secrets/present?x=1&api-version=", tok: "-"}, want: want{401, "Unauthorized", "", ""}},
		"401 before the body":        {r: req{method: "PUT", path: "/secrets/s", body: "{not json", tok: "-"}, want: want{401, "Unauthorized", "", ""}},
		"no api-version":             {r: req{path: "/secrets/present?api-version="}, want: want{400, "BadParameter", "", "'api-version' query parameter is missing"}},
		"an unknown api-version":     {r: req{path: "/secrets/present?api-version=9.9"}, want: want{400, "BadParameter", "", "The specified version (9.9) is not recognized"}},
		"api-version 2016-10-01":     {r: req{path: "/secrets/present?api-version=2016-10-01"}, want: want{status: 200}},
		"api-version 7.6-preview.1":  {r: req{path: "/secrets/present?api-version=7.6-preview.1"}, want: want{status: 200}},
		"api-version 2025-07-01":     {r: req{path: "/secrets/present?api-version=2025-07-01"}, want: want{status: 200}},
		"no such route":              {r: req{path: "/blobs/x"}, want: want{404, "NotFound", "", "No Key Vault operation matches GET /blobs/x"}},
		"doubled slashes":            {r: req{path: "//secrets//present"}, want: want{status: 200}},

		// Authorization: access policies and RBAC.
		"reader gets":             {r: req{path: "/secrets/present", tok: e.reader}, want: want{status: 200}},
		"reader lists":            {r: req{path: "/secrets", tok: e.reader}, want: want{status: 200}},
		"reader sets":             {r: req{method: "PUT", path: "/secrets/s", body: `{"value":"v"}`, tok: e.reader}, want: want{403, "Forbidden", "AccessDenied", "does not have secrets set permission on key vault 'demo'"}},
		"reader reads keys":       {r: req{path: "/keys/ec", tok: e.reader}, want: want{403, "Forbidden", "AccessDenied", "keys get"}},
		"nobody, access policies": {r: req{path: "/secrets/present", tok: e.nobody}, want: want{403, "Forbidden", "AccessDenied", ""}},
		"nobody, RBAC":            {r: req{vault: "rbac", path: "/secrets/present", tok: e.nobody}, want: want{403, "Forbidden", "ForbiddenByRbac", "Microsoft.KeyVault/vaults/secrets/getSecret/action"}},
		"admin, RBAC":             {r: req{vault: "rbac", path: "/secrets/present"}, want: want{status: 200}},
		"denied before the body":  {r: req{method: "PUT", path: "/secrets/s", body: "{not json", tok: e.reader}, want: want{403, "Forbidden", "AccessDenied", ""}},
		"denied before existence": {r: req{path: "/secrets/absent", tok: e.nobody}, want: want{403, "Forbidden", "AccessDenied", ""}},

		// Secrets: bodies and the service's refusals.
		"set, empty body":     {r: req{method: "PUT", path: "/secrets/s"}, want: want{400, "BadParameter", "", "The request body is empty"}},
		"set, bad JSON":       {r: req{method: "PUT", path: "/secrets/s", body: `{"value":`}, want: want{400, "BadParameter", "", "not valid JSON"}},
		"set, a number":       {r: req{method: "PUT", path: "/secrets/s", body: `{"value":5}`}, want: want{400, "BadParameter", "", "field 'value' must not be a JSON number"}},
		"set, no value":       {r: req{method: "PUT", path: "/secrets/s", body: `{"contentType":"x"}`}, want: want{400, "BadParameter", "", "must contain the secret's value"}},
		"set, value too long": {r: req{method: "PUT", path: "/secrets/s", body: `{"value":"` + bigValue + `"}`}, want: want{400, "BadParameter", "", "the limit is 25600 bytes"}},
		"set, body too long":  {r: req{method: "PUT", path: "/secrets/s", body: `{"value":"` + strings.Repeat("x", 256<<10) + `"}`}, want: want{413, "RequestEntityTooLarge", "", "262144-byte limit"}},
		// Nested past encoding/json's depth limit (10,000) but inside the
		// body limit: refused before any field is decoded (issue 15).
		"set, nested 100,000 deep":  {r: req{method: "PUT", path: "/secrets/s", body: `{"value":"v","tags":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`}, want: want{400, "BadParameter", "", "exceeded max depth"}},
		"key, nested 10,001 deep":   {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"EC","tags":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + "}"}, want: want{400, "BadParameter", "", "exceeded max depth"}},
		"set, bad name":             {r: req{method: "PUT", path: "/secrets/a_b", body: `{"value":"v"}`}, want: want{400, "BadParameter", "", "invalid name"}},
		"set, exp before nbf":       {r: req{method: "PUT", path: "/secrets/s", body: `{"value":"v","attributes":{"nbf":10,"exp":5}}`}, want: want{400, "BadParameter", "", "must be later than attributes.nbf"}},
		"set, a deleted name":       {r: req{method: "PUT", path: "/secrets/gone", body: `{"value":"v"}`}, want: want{409, "Conflict", "ObjectIsDeletedButRecoverable", "deleted but recoverable"}},
		"get, missing":              {r: req{path: "/secrets/absent"}, want: want{404, "SecretNotFound", "", "A secret with (name/id) absent was not found"}},
		"get, a deleted one":        {r: req{path: "/secrets/gone"}, want: want{404, "SecretNotFound", "", ""}},
		"get, bad version":          {r: req{path: "/secrets/present/xyz"}, want: want{400, "BadParameter", "", "invalid version"}},
		"get, unknown version":      {r: req{path: "/secrets/present/" + strings.Repeat("0", 32)}, want: want{404, "SecretNotFound", "", ""}},
		"get, disabled":             {r: req{path: "/secrets/disabled"}, want: want{403, "Forbidden", "SecretDisabled", "disabled secret"}},
		"get, outContentType":       {r: req{path: "/secrets/present?outContentType=application/x-pem-file"}, want: want{400, "BadParameter", "", "certificate-backed secrets only"}},
		"update the value":          {r: req{method: "PATCH", path: "/secrets/present", body: `{"value":"new"}`}, want: want{400, "BadParameter", "", "A secret's value cannot be updated"}},
		"update, empty body":        {r: req{method: "PATCH", path: "/secrets/present"}, want: want{400, "BadParameter", "", "The request body is empty"}},
		"delete, missing":           {r: req{method: "DELETE", path: "/secrets/absent"}, want: want{404, "SecretNotFound", "", ""}},
		"recover, not deleted":      {r: req{method: "POST", path: "/deletedsecrets/present/recover"}, want: want{404, "SecretNotFound", "", "Deleted Secret not found: present"}},
		"purge, protected":          {r: req{vault: "locked", method: "DELETE", path: "/deletedsecrets/kept"}, want: want{403, "Forbidden", "", "purge protection is enabled"}},
		"list, maxresults 0":        {r: req{path: "/secrets?maxresults=0"}, want: want{400, "BadParameter", "", "maxresults must be an integer from 1 to 25"}},
		"list, maxresults 26":       {r: req{path: "/secrets?maxresults=26"}, want: want{400, "BadParameter", "", "from 1 to 25"}},
		"list, a forged skiptoken":  {r: req{path: "/secrets?$skiptoken=!!!"}, want: want{400, "BadParameter", "", "$skiptoken"}},
		"versions of a missing one": {r: req{path: "/secrets/absent/versions"}, want: want{404, "SecretNotFound", "", ""}},
		"restore, empty value":      {r: req{method: "POST", path: "/secrets/restore", body: `{"value":""}`}, want: want{400, "BadParameter", "", "backup blob in 'value'"}},
		"restore, not base64":       {r: req{method: "POST", path: "/secrets/restore", body: `{"value":"***"}`}, want: want{400, "BadParameter", "", "not valid base64url"}},
		"restore, not a blob":       {r: req{method: "POST", path: "/secrets/restore", body: `{"value":"AAAA"}`}, want: want{400, "BadParameter", "", "could not be opened"}},
		"backup, missing":           {r: req{method: "POST", path: "/secrets/absent/backup"}, want: want{404, "SecretNotFound", "", ""}},

		// Keys and certificates share the shape.
		"key, missing":                 {r: req{path: "/keys/absent"}, want: want{404, "KeyNotFound", "", "A key with (name/id) absent was not found"}},
		"key, an HSM type":             {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"RSA-HSM"}`}, want: want{400, "BadParameter", "", "hardware security module"}},
		"key, a release policy":        {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"EC","release_policy":{}}`}, want: want{400, "BadParameter", "", "release policies"}},
		"key, exportable":              {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"EC","attributes":{"exportable":true}}`}, want: want{400, "BadParameter", "", "Exportable keys"}},
		"key, odd exponent":            {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"RSA","public_exponent":3}`}, want: want{400, "BadParameter", "", "public_exponent 3"}},
		"key, body too long":           {r: req{method: "POST", path: "/keys/k/create", body: `{"kty":"` + strings.Repeat("E", 64<<10) + `"}`}, want: want{413, "RequestEntityTooLarge", "", "65536-byte limit"}},
		"key import, no key":           {r: req{method: "PUT", path: "/keys/k", body: `{}`}, want: want{400, "BadParameter", "", "the key to import"}},
		"sign, no alg":                 {r: req{method: "POST", path: "/keys/ec/sign", body: `{"value":"AAAA"}`}, want: want{400, "BadParameter", "", "'alg'"}},
		"sign, bad base64":             {r: req{method: "POST", path: "/keys/ec/sign", body: `{"alg":"ES256","value":"***"}`}, want: want{400, "BadParameter", "", "does not parse"}},
		"sign, a wrong digest":         {r: req{method: "POST", path: "/keys/ec/sign", body: `{"alg":"ES256","value":"AAAA"}`}, want: want{400, "BadParameter", "", ""}},
		"encrypt, not in key_ops":      {r: req{method: "POST", path: "/keys/ec/encrypt", body: `{"alg":"RSA-OAEP","value":"AAAA"}`}, want: want{403, "Forbidden", "KeyOperationForbidden", "encrypt"}},
		"rotation policy, the default": {r: req{path: "/keys/ec/rotationpolicy"}, want: want{status: 200}},
		"release":                      {r: req{method: "POST", path: "/keys/ec/" + strings.Repeat("a", 32) + "/release", body: `{}`}, want: want{400, "BadParameter", "NotSupported", "attestation"}},
		"rng":                          {r: req{method: "POST", path: "/rng", body: `{"count":16}`}, want: want{status: 200}},
		"rng, nobody":                  {r: req{method: "POST", path: "/rng", body: `{"count":16}`, tok: e.nobody}, want: want{status: 200}},
		"rng, too many":                {r: req{method: "POST", path: "/rng", body: `{"count":129}`}, want: want{400, "BadParameter", "", "count must be 1 to 128"}},
		"rng, body too long":           {r: req{method: "POST", path: "/rng", body: `{"count":1,"x":"` + strings.Repeat("x", 4<<10) + `"}`}, want: want{413, "RequestEntityTooLarge", "", "4096-byte limit"}},
		"certificate, missing":         {r: req{path: "/certificates/absent"}, want: want{404, "CertificateNotFound", "", "A certificate with (name/id) absent was not found"}},
		"certificate contacts, none":   {r: req{path: "/certificates/contacts"}, want: want{status: 200}},
		"certificate issuer, missing":  {r: req{path: "/certificates/issuers/x"}, want: want{404, "CertificateIssuerNotFound", "", "Issuer not found: x"}},
		"certificate import, no value": {r: req{method: "POST", path: "/certificates/c/import", body: `{}`}, want: want{400, "BadParameter", "", "in 'value'"}},
		"certificate, no such route":   {r: req{method: "DELETE", path: "/certificates/c/policy"}, want: want{404, "NotFound", "", "No Key Vault operation matches DELETE /certificates/c/policy"}},
		"certificate, wrong method":    {r: req{method: "PUT", path: "/certificates/c/pending"}, want: want{404, "NotFound", "", "No Key Vault operation matches"}},
		"certificate, a key's name":    {r: req{method: "POST", path: "/certificates/ec/create", body: `{"policy":{"key_props":{"kty":"EC"},"x509_props":{"subject":"CN=x"},"issuer":{"name":"Self"}}}`}, want: want{409, "Conflict", "", "A key named ec already exists"}},
	} {
		t.Run(name, func(t *testing.T) {
			a := e.do(t, c.r)
			check(t, a, c.want)
			if c.want.status == 401 {
				ch := a.header.Get("WWW-Authenticate")
				if ch != `Bearer authorization="https://vault.localhost:8443/`+e.state.TenantID+`", resource="https://vault.localhost:8443"` {
					t.Errorf("challenge %q", ch)
				}
			}
		})
	}
}

// The 401 challenge goes out without reading a large body: only a small
// one is drained, so a client's first, bodiless request is cheap and an
// unauthenticated caller cannot make the server read megabytes.
func TestChallengeReadsNoBody(t *testing.T) {
	e := newEnv(t)
	for name, size := range map[string]int{"small": 100, "large": 8 << 20} {
		t.Run(name, func(t *testing.T) {
			body := &countingReader{n: size}
			r := httptest.NewRequest("PUT", "https://demo.vault.localhost:8443/secrets/s?api-version=7.4", body)
			rec := httptest.NewRecorder()
			e.h.ServeHTTP(rec, r)
			if rec.Code != 401 || rec.Header().Get("WWW-Authenticate") == "" {
				t.Fatalf("%d %s", rec.Code, rec.Body.String())
			}
			if body.read > 4<<10 {
				t.Fatalf("read %d bytes of an unauthenticated body", body.read)
			}
			if size < 4<<10 && body.read != size {
				t.Fatalf("read %d of a %d-byte body: a small one is drained, so the connection can carry the retry", body.read, size)
			}
		})
	}
}

// countingReader is a body of n bytes that counts what is read of it.
type countingReader struct{ n, read int }

func (c *countingReader) Read(p []byte) (int, error) {
	if c.read >= c.n {
		return 0, io.EOF
	}
	k := min(len(p), c.n-c.read)
	for i := range k {
		p[i] = 'x'
	}
	c.read += k
	return k, nil
}

// The shapes a secret passes through: set, read, versions, update,
// delete, deleted, recover, purge.
func TestSecretShapes(t *testing.T) {
	e := newEnv(t)
	base := "https://demo.vault.localhost:8443"
	set := e.do(t, req{method: "PUT", path: "/secrets/db", body: `{"value":"p@ss","contentType":"text/plain","tags":{"app":"web"},"attributes":{"exp":4102444800}}`})
	check(t, set, want{status: 200})
	id := set.str("id")
	version := id[strings.LastIndex(id, "/")+1:]
	if !strings.HasPrefix(id, base+"/secrets/db/") || len(version) != 32 || set.str("value") != "p@ss" || set.str("contentType") != "text/plain" || set.field("tags.app") != "web" {
		t.Fatalf("set answered %s", set.raw)
	}
	if set.field("attributes.enabled") != true || set.field("attributes.exp") != 4102444800.0 || set.str("attributes.recoveryLevel") != "Recoverable+Purgeable" || set.field("attributes.recoverableDays") != 90.0 {
		t.Fatalf("attributes %v", set.field("attributes"))
	}
	second := e.do(t, req{method: "PUT", path: "/secrets/db", body: `{"value":"p@ss2"}`})
	for ver, wantPrev := range map[string]bool{"7.4": false, "7.6": false, "2025-07-01": true} {
		got := e.do(t, req{path: "/secrets/db?api-version=" + ver})
		if got.str("value") != "p@ss2" || (got.str("previousVersion") == version) != wantPrev {
			t.Errorf("api-version %s: %s (previousVersion is for the dated versions only)", ver, got.raw)
		}
	}
	old := e.do(t, req{path: "/secrets/db/" + version})
	if old.str("value") != "p@ss" {
		t.Fatalf("the first version: %s", old.raw)
	}
	versions := e.do(t, req{path: "/secrets/db/versions"})
	if vs, _ := versions.field("value").([]any); len(vs) != 2 || strings.Contains(versions.raw, "p@ss") {
		t.Fatalf("versions %s: want two, without values", versions.raw)
	}
	list := e.do(t, req{path: "/secrets"})
	if vs, _ := list.field("value").([]any); len(vs) != 1 || vs[0].(map[string]any)["id"] != base+"/secrets/db" || list.field("nextLink") != nil || strings.Contains(list.raw, "p@ss") {
		t.Fatalf("list %s: want db by its versionless id, no value, a null nextLink", list.raw)
	}
	upd := e.do(t, req{method: "PATCH", path: "/secrets/db/" + version, body: `{"tags":{"app":"api"},"attributes":{"enabled":false}}`})
	if upd.status != 200 || upd.field("value") != nil || upd.field("tags.app") != "api" || upd.field("attributes.enabled") != false {
		t.Fatalf("update answered %s", upd.raw)
	}
	if sec := second.str("id"); e.do(t, req{path: strings.TrimPrefix(sec, base)}).status != 200 {
		t.Fatal("updating one version changed another")
	}
	del := e.do(t, req{method: "DELETE", path: "/secrets/db"})
	if del.status != 200 || del.str("recoveryId") != base+"/deletedsecrets/db" || del.field("deletedDate") == nil || del.field("scheduledPurgeDate") == nil || del.field("value") != nil {
		t.Fatalf("delete answered %s", del.raw)
	}
	check(t, e.do(t, req{path: "/deletedsecrets/db"}), want{status: 200})
	deleted := e.do(t, req{path: "/deletedsecrets"})
	if vs, _ := deleted.field("value").([]any); len(vs) != 1 {
		t.Fatalf("deleted list %s", deleted.raw)
	}
	check(t, e.do(t, req{method: "POST", path: "/deletedsecrets/db/recover"}), want{status: 200})
	check(t, e.do(t, req{path: "/secrets/db"}), want{status: 200})
	e.do(t, req{method: "DELETE", path: "/secrets/db"})
	purge := e.do(t, req{method: "DELETE", path: "/deletedsecrets/db"})
	if purge.status != 204 || purge.raw != "" {
		t.Fatalf("purge answered %d %q, want 204 and no body", purge.status, purge.raw)
	}
	check(t, e.do(t, req{path: "/deletedsecrets/db"}), want{404, "SecretNotFound", "", "Deleted Secret not found"})
}

// Lists page with an absolute nextLink that keeps the api-version and
// maxresults, until it is null.
func TestPaging(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		e.setSecret(t, "demo", n, "v")
	}
	var names []string
	path := "/secrets?maxresults=2&api-version=7.6"
	for pages := 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatal("too many pages")
		}
		a := e.do(t, req{path: path})
		check(t, a, want{status: 200})
		vs, _ := a.field("value").([]any)
		if len(vs) > 2 {
			t.Fatalf("%d items on a page of 2", len(vs))
		}
		for _, v := range vs {
			id := v.(map[string]any)["id"].(string)
			names = append(names, id[strings.LastIndex(id, "/")+1:])
		}
		path = ""
		if next, ok := a.field("nextLink").(string); ok {
			u, err := url.Parse(next)
			if err != nil || u.Scheme != "https" || u.Host != "demo.vault.localhost:8443" || u.Query().Get("api-version") != "7.6" || u.Query().Get("maxresults") != "2" || u.Query().Get("$skiptoken") == "" {
				t.Fatalf("nextLink %q", next)
			}
			path = u.RequestURI()
		}
	}
	if strings.Join(names, ",") != "a,b,c,d,e" {
		t.Fatalf("paged through %v", names)
	}
}

// If-None-Match answers 304 for the state the caller holds, and Prefer:
// wait holds that answer until the object changes.
func TestConditionalReads(t *testing.T) {
	e := newEnv(t)
	e.setSecret(t, "demo", "s", "one")
	first := e.do(t, req{path: "/secrets/s"})
	etag := first.header.Get("ETag")
	if etag == "" || strings.Contains(etag, "one") {
		t.Fatalf("ETag %q", etag)
	}
	for name, c := range map[string]struct {
		inm    string
		status int
	}{
		"the same state":  {etag, 304},
		"weak":            {"W/" + etag, 304},
		"in a list":       {`"x", ` + etag, 304},
		"another state":   {`"other"`, 200},
		"a reader's read": {etag, 304},
	} {
		t.Run(name, func(t *testing.T) {
			tok := ""
			if name == "a reader's read" {
				tok = e.reader
			}
			a := e.do(t, req{path: "/secrets/s", tok: tok, header: map[string]string{"If-None-Match": c.inm}})
			if a.status != c.status || (c.status == 304 && a.raw != "") || a.header.Get("ETag") != etag {
				t.Fatalf("%d %q ETag %q, want %d", a.status, a.raw, a.header.Get("ETag"), c.status)
			}
		})
	}
	t.Run("refused callers get no 304", func(t *testing.T) {
		a := e.do(t, req{path: "/secrets/s", tok: e.nobody, header: map[string]string{"If-None-Match": etag}})
		check(t, a, want{403, "Forbidden", "AccessDenied", ""})
		if a.header.Get("ETag") != "" {
			t.Fatal("a refusal carries the ETag")
		}
	})
	t.Run("an update changes the tag", func(t *testing.T) {
		e.do(t, req{method: "PATCH", path: "/secrets/s", body: `{"tags":{"t":"1"}}`})
		a := e.do(t, req{path: "/secrets/s", header: map[string]string{"If-None-Match": etag}})
		if a.status != 200 || a.header.Get("ETag") == etag {
			t.Fatalf("%d, ETag %q", a.status, a.header.Get("ETag"))
		}
		etag = a.header.Get("ETag")
	})
	t.Run("held until a change", func(t *testing.T) {
		done := make(chan answer, 1)
		go func() {
			done <- e.do(t, req{path: "/secrets/s", header: map[string]string{"If-None-Match": etag, "Prefer": "wait=20"}})
		}()
		e.waitHeld(t, 1)
		e.setSecret(t, "demo", "s", "two")
		a := <-done
		if a.status != 200 || a.str("value") != "two" {
			t.Fatalf("%d %s, want the new value", a.status, a.raw)
		}
		etag = a.header.Get("ETag")
	})
	t.Run("held until the wait ends", func(t *testing.T) {
		a := e.do(t, req{path: "/secrets/s", header: map[string]string{"If-None-Match": etag, "Prefer": "wait=1"}})
		if a.status != 304 || a.header.Get("Preference-Applied") != "wait=1" {
			t.Fatalf("%d, Preference-Applied %q", a.status, a.header.Get("Preference-Applied"))
		}
	})
	t.Run("a held reader whose access ends is refused", func(t *testing.T) {
		done := make(chan answer, 1)
		go func() {
			done <- e.do(t, req{path: "/secrets/s", tok: e.reader, header: map[string]string{"If-None-Match": etag, "Prefer": "wait=20"}})
		}()
		e.waitHeld(t, 1)
		if _, err := e.vaults.Update(context.Background(), "demo", func(v *vault.Vault) error {
			v.AccessPolicies = v.AccessPolicies[:1]
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		e.setSecret(t, "demo", "s", "three")
		a := <-done
		check(t, a, want{403, "Forbidden", "AccessDenied", ""})
		if strings.Contains(a.raw, "three") || a.header.Get("ETag") != "" {
			t.Fatal("the value, or its tag, reached a caller whose access ended")
		}
	})
	t.Run("not held without If-None-Match", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		if a := e.doCtx(t, ctx, req{path: "/secrets/s", header: map[string]string{"Prefer": "wait=20"}}); a.status != 200 || time.Since(start) > 5*time.Second {
			t.Fatalf("%d after %s", a.status, time.Since(start))
		}
	})
}

// Backups restore into a vault of the tenant once the name is free.
func TestBackupRestore(t *testing.T) {
	e := newEnv(t)
	e.setSecret(t, "demo", "b", "v1")
	e.setSecret(t, "demo", "b", "v2")
	bk := e.do(t, req{method: "POST", path: "/secrets/b/backup"})
	blob := bk.str("value")
	if bk.status != 200 || blob == "" || strings.ContainsAny(blob, "+/=") {
		t.Fatalf("backup %d %q: want base64url without padding", bk.status, blob)
	}
	body, _ := json.Marshal(map[string]string{"value": blob})
	check(t, e.do(t, req{method: "POST", path: "/secrets/restore", body: string(body)}), want{409, "Conflict", "", "already exists"})
	e.do(t, req{method: "DELETE", path: "/secrets/b"})
	e.do(t, req{method: "DELETE", path: "/deletedsecrets/b"})
	// Padded and standard base64 are accepted too, as Azure does.
	raw, _ := base64.RawURLEncoding.DecodeString(blob)
	padded, _ := json.Marshal(map[string]string{"value": base64.StdEncoding.EncodeToString(raw)})
	rs := e.do(t, req{method: "POST", path: "/secrets/restore", body: string(padded)})
	if rs.status != 200 || !strings.HasSuffix(strings.TrimSuffix(rs.str("id"), "/"+lastSeg(rs.str("id"))), "/secrets/b") || rs.field("value") != nil {
		t.Fatalf("restore %d %s", rs.status, rs.raw)
	}
	if got := e.do(t, req{path: "/secrets/b"}); got.str("value") != "v2" {
		t.Fatalf("restored %s", got.raw)
	}
	check(t, e.do(t, req{method: "POST", path: "/secrets/restore", body: string(body), tok: e.reader}), want{403, "Forbidden", "AccessDenied", "restore"})
}

func lastSeg(s string) string { return s[strings.LastIndex(s, "/")+1:] }

// Keys: create, read (public half only), operations, list.
func TestKeys(t *testing.T) {
	e := newEnv(t)
	created := e.do(t, req{method: "POST", path: "/keys/signer/create", body: `{"kty":"EC","crv":"P-256","key_ops":["sign","verify"],"tags":{"t":"1"}}`})
	check(t, created, want{status: 200})
	kid := created.str("key.kid")
	if !strings.HasPrefix(kid, "https://demo.vault.localhost:8443/keys/signer/") || created.str("key.kty") != "EC" || created.field("key.d") != nil || created.str("key.x") == "" {
		t.Fatalf("created %s", created.raw)
	}
	digest := sha256.Sum256([]byte("hello"))
	d := base64.RawURLEncoding.EncodeToString(digest[:])
	sig := e.do(t, req{method: "POST", path: "/keys/signer/sign", body: `{"alg":"ES256","value":"` + d + `"}`})
	if sig.status != 200 || sig.str("kid") != kid || sig.str("value") == "" {
		t.Fatalf("sign %s", sig.raw)
	}
	for name, c := range map[string]struct {
		sig, digest string
		valid       bool
	}{
		"good":           {sig.str("value"), d, true},
		"another digest": {sig.str("value"), base64.RawURLEncoding.EncodeToString(make([]byte, 32)), false},
	} {
		t.Run("verify "+name, func(t *testing.T) {
			v := e.do(t, req{method: "POST", path: "/keys/signer/" + lastSeg(kid) + "/verify", body: `{"alg":"ES256","digest":"` + c.digest + `","value":"` + c.sig + `"}`})
			if v.status != 200 || v.field("value") != c.valid {
				t.Fatalf("%d %s, want value %v", v.status, v.raw, c.valid)
			}
		})
	}
	got := e.do(t, req{path: "/keys/signer"})
	if got.status != 200 || got.header.Get("ETag") == "" || got.field("key.d") != nil {
		t.Fatalf("get %s", got.raw)
	}
	list := e.do(t, req{path: "/keys"})
	if vs, _ := list.field("value").([]any); len(vs) != 1 || vs[0].(map[string]any)["kid"] != "https://demo.vault.localhost:8443/keys/signer" || strings.Contains(list.raw, `"x"`) {
		t.Fatalf("list %s", list.raw)
	}
	rot := e.do(t, req{method: "POST", path: "/keys/signer/rotate"})
	if rot.status != 200 || rot.str("key.kid") == kid || rot.field("tags.t") != "1" {
		t.Fatalf("rotate %s", rot.raw)
	}
	rng := e.do(t, req{method: "POST", path: "/rng", body: `{"count":16}`})
	if b, err := base64.RawURLEncoding.DecodeString(rng.str("value")); err != nil || len(b) != 16 {
		t.Fatalf("rng %s", rng.raw)
	}
	upd := e.do(t, req{method: "PATCH", path: "/keys/signer", body: `{"key_ops":["verify"]}`})
	if upd.status != 200 {
		t.Fatal(upd.raw)
	}
	check(t, e.do(t, req{method: "POST", path: "/keys/signer/sign", body: `{"alg":"ES256","value":"` + d + `"}`}), want{403, "Forbidden", "KeyOperationForbidden", "its key_ops are [verify]"})
}

// Certificates: a self-signed one is created by a pending operation.
func TestCertificates(t *testing.T) {
	e := newEnv(t)
	policy := `{"policy":{"key_props":{"kty":"EC","crv":"P-256"},"secret_props":{"contentType":"application/x-pem-file"},"x509_props":{"subject":"CN=web","validity_months":1},"issuer":{"name":"Self"}}}`
	created := e.do(t, req{method: "POST", path: "/certificates/web/create", body: policy})
	if created.status != 202 || created.header.Get("Retry-After") != "1" || !strings.HasSuffix(created.header.Get("Location"), "/certificates/web/pending?api-version=7.4") || created.str("status") != "inProgress" {
		t.Fatalf("create %d %s %v", created.status, created.raw, created.header)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		op := e.do(t, req{path: "/certificates/web/pending"})
		if op.str("status") == "completed" {
			if op.str("target") != "https://demo.vault.localhost:8443/certificates/web" {
				t.Fatalf("completed %s", op.raw)
			}
			break
		}
		if op.status != 200 || time.Now().After(deadline) {
			t.Fatalf("pending %d %s", op.status, op.raw)
		}
	}
	got := e.do(t, req{path: "/certificates/web"})
	if got.status != 200 || got.str("cer") == "" || got.str("x5t") == "" || !strings.HasPrefix(got.str("kid"), "https://demo.vault.localhost:8443/keys/web/") || got.str("policy.id") != "https://demo.vault.localhost:8443/certificates/web/policy" {
		t.Fatalf("get %s", got.raw)
	}
	sec := e.do(t, req{path: strings.TrimPrefix(got.str("sid"), "https://demo.vault.localhost:8443")})
	if sec.status != 200 || !strings.Contains(sec.str("value"), "PRIVATE KEY") || sec.field("managed") != true || sec.str("kid") == "" {
		t.Fatalf("the certificate's secret %d %.200s", sec.status, sec.raw)
	}
	check(t, e.do(t, req{method: "PUT", path: "/secrets/web", body: `{"value":"x"}`}), want{403, "Forbidden", "SecretManagedByKeyVault", "certificate web"})
	check(t, e.do(t, req{method: "DELETE", path: "/keys/web"}), want{403, "Forbidden", "KeyManagedByKeyVault", ""})
	pol := e.do(t, req{path: "/certificates/web/policy"})
	if pol.status != 200 || pol.str("issuer.name") != "Self" {
		t.Fatalf("policy %s", pol.raw)
	}
	list := e.do(t, req{path: "/certificates"})
	if vs, _ := list.field("value").([]any); len(vs) != 1 {
		t.Fatalf("list %s", list.raw)
	}
}

// An unexpected failure is a 500 with a fixed message: its text, which
// names the store's keys, stays in the log.
func TestInternalErrors(t *testing.T) {
	e := newEnv(t)
	// A damaged record: the object layer's decode error wraps a
	// json.SyntaxError, which is the store's fault, not the request's.
	if err := e.barrier.Apply(context.Background(), nil, []barrier.Op{{Key: "o/demo/secrets/h/damaged", Value: []byte("not json")}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []req{{path: "/secrets/damaged"}, {path: "/secrets"}} {
		a := e.do(t, r)
		check(t, a, want{500, "InternalServerError", "", "The server could not complete the request; see its log for details."})
		if strings.Contains(a.raw, "o/demo") || strings.Contains(a.raw, "invalid character") {
			t.Fatalf("the body holds the internal error: %s", a.raw)
		}
	}
	if !strings.Contains(e.log.String(), "o/demo/secrets/h/damaged") {
		t.Fatalf("the log lacks the detail:\n%s", e.log.String())
	}
}

// A hot read's response is kept with the cached version (see
// object.Memo), so every check here reads twice, to fill the memo and to
// be served from it, after each change that must show: a new version, an
// update of the same version, a write by another service over the same
// store (another replica, whose writes this process's cache did not see
// made), the vault's recovery settings, and the api-version's shape.
func TestReadsAfterEveryKindOfChange(t *testing.T) {
	e := newEnv(t)
	get := func(t *testing.T, query string) answer {
		t.Helper()
		first := e.do(t, req{path: "/secrets/db" + query})
		again := e.do(t, req{path: "/secrets/db" + query})
		if first.status != 200 || again.raw != first.raw || again.header.Get("ETag") != first.header.Get("ETag") {
			t.Fatalf("two reads of an unchanged secret differ:\n%d %s %s\n%d %s %s", first.status, first.raw, first.header.Get("ETag"), again.status, again.raw, again.header.Get("ETag"))
		}
		return again
	}
	v1 := e.setSecret(t, "demo", "db", "one")
	a := get(t, "")
	if a.str("value") != "one" {
		t.Fatalf("read %s", a.raw)
	}
	etags := map[string]bool{a.header.Get("ETag"): true}
	changed := func(t *testing.T, a answer, what string) {
		t.Helper()
		if tag := a.header.Get("ETag"); etags[tag] {
			t.Errorf("after %s, the ETag %s is an earlier one", what, tag)
		} else {
			etags[tag] = true
		}
	}

	t.Run("update of the same version", func(t *testing.T) {
		check(t, e.do(t, req{method: "PATCH", path: "/secrets/db/" + v1, body: `{"tags":{"app":"api"},"contentType":"text/plain"}`}), want{status: 200})
		a := get(t, "")
		if a.field("tags.app") != "api" || a.str("contentType") != "text/plain" || a.str("value") != "one" {
			t.Fatalf("after an update: %s", a.raw)
		}
		changed(t, a, "an update")
	})
	t.Run("new version", func(t *testing.T) {
		e.setSecret(t, "demo", "db", "two")
		a := get(t, "")
		if a.str("value") != "two" || a.field("tags") != nil {
			t.Fatalf("after a new version: %s", a.raw)
		}
		changed(t, a, "a new version")
		if old := get(t, "/"+v1); old.str("value") != "one" || old.field("tags.app") != "api" {
			t.Fatalf("the first version: %s", old.raw)
		}
	})
	t.Run("write by another replica", func(t *testing.T) {
		v, err := e.vaults.Get("demo")
		if err != nil {
			t.Fatal(err)
		}
		other := secret.New(e.barrier, e.barrier, nil) // its own read cache, as another process has
		three := "three"
		if _, err := other.Set(context.Background(), v, "db", secret.SetParams{Value: &three}); err != nil {
			t.Fatal(err)
		}
		a := get(t, "")
		if a.str("value") != "three" {
			t.Fatalf("after another replica's write: %s", a.raw)
		}
		changed(t, a, "another replica's write")
	})
	t.Run("vault recovery settings", func(t *testing.T) {
		if _, err := e.vaults.Update(context.Background(), "demo", func(v *vault.Vault) error { v.RetentionDays = 30; return nil }); err != nil {
			t.Fatal(err)
		}
		if a := get(t, ""); a.field("attributes.recoverableDays") != 30.0 {
			t.Fatalf("after the retention changed to 30 days: %s", a.raw)
		}
	})
	t.Run("api-version shape", func(t *testing.T) {
		for range 2 {
			if a := get(t, "?api-version=2025-07-01"); a.str("previousVersion") == "" {
				t.Fatalf("2025-07-01 has previousVersion: %s", a.raw)
			}
			if a := get(t, "?api-version=7.6"); a.field("previousVersion") != nil {
				t.Fatalf("7.6 has no previousVersion: %s", a.raw)
			}
		}
	})
}
