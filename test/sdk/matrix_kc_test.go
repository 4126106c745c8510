package sdk

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

var b64 = base64.RawURLEncoding.EncodeToString

// kcState is what the key and certificate matrix operations work on,
// prepared by the administrator.
type kcState struct {
	digest, sig, ct, iv, tag, wrapped, keyBlob, certBlob, pem string
}

// mustAdmin runs an administrator request that must succeed, and decodes
// its body into out.
func (h *matrixHarness) mustAdmin(method, path, body string, out any) {
	h.t.Helper()
	resp, e, data := rawBody(h.t, h.env, method, path+"?api-version=7.6", h.admin, body)
	if resp.StatusCode > 299 {
		h.t.Fatalf("prepare: %s %s: %d %s", method, path, resp.StatusCode, e.Error.Message)
	}
	if out != nil {
		json.Unmarshal(data, out)
	}
}

// testPEM is a self-signed EC certificate with its key, as PEM.
func testPEM(t *testing.T, cn string) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func prepareKC(t *testing.T, h *matrixHarness) *kcState {
	s := &kcState{}
	for _, k := range []struct{ name, body string }{
		{"k", `{"kty":"EC","crv":"P-256"}`}, {"r", `{"kty":"EC"}`}, {"kb", `{"kty":"EC"}`}, {"aes", `{"kty":"oct","key_size":256}`},
	} {
		h.mustAdmin("POST", "/keys/"+k.name+"/create", k.body, nil)
	}
	d := sha256.Sum256([]byte("m"))
	s.digest = b64(d[:])
	var res struct{ Value, IV, Tag string }
	h.mustAdmin("POST", "/keys/k/sign", `{"alg":"ES256","value":"`+s.digest+`"}`, &res)
	s.sig = res.Value
	h.mustAdmin("POST", "/keys/aes/encrypt", `{"alg":"A256GCM","value":"aGVsbG8"}`, &res)
	s.ct, s.iv, s.tag = res.Value, res.IV, res.Tag
	h.mustAdmin("POST", "/keys/aes/wrapkey", `{"alg":"A256KW","value":"`+b64(make([]byte, 16))+`"}`, &res)
	s.wrapped = res.Value
	h.mustAdmin("POST", "/keys/kb/backup", "", &res)
	s.keyBlob = res.Value
	s.pem = testPEM(t, "matrix")
	for _, c := range []string{"c", "cb"} {
		h.mustAdmin("POST", "/certificates/"+c+"/import", `{"value":`+jsonString(s.pem)+`}`, nil)
	}
	h.mustAdmin("POST", "/certificates/cb/backup", "", &res)
	s.certBlob = res.Value
	// A pending operation for c, completed, so GET .../pending has one.
	h.mustAdmin("POST", "/certificates/c/create", `{"policy":{"x509_props":{"subject":"CN=c"},"key_props":{"kty":"EC"}}}`, nil)
	h.awaitOp("c")
	h.mustAdmin("PUT", "/certificates/issuers/i", `{"provider":"DigiCert"}`, nil)
	return s
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// awaitOp waits for certificate name's operation to leave inProgress.
func (h *matrixHarness) awaitOp(name string) {
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		var op struct{ Status string }
		resp, _, data := rawBody(h.t, h.env, "GET", "/certificates/"+name+"/pending?api-version=7.6", h.admin, "")
		json.Unmarshal(data, &op)
		if resp.StatusCode == 404 || op.Status != "inProgress" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("the operation of certificate %s did not finish", name)
}

// ensure makes object kind/name live (recovering or creating it), or
// soft-deleted, or gone.
func (h *matrixHarness) ensure(kind, name, state string, create func()) {
	if st, e := h.adminDo("POST", "/deleted"+kind+"/"+name+"/recover", ""); st != 200 && st != 404 {
		h.t.Fatalf("prepare: recover %s/%s: %d %s", kind, name, st, e.Error.Message)
	}
	if s, _ := h.adminDo("GET", "/"+kind+"/"+name, ""); s == 404 {
		create()
	}
	switch state {
	case "deleted":
		h.mustAdmin("DELETE", "/"+kind+"/"+name, "", nil)
	case "gone":
		h.mustAdmin("DELETE", "/"+kind+"/"+name, "", nil)
		h.mustAdmin("DELETE", "/deleted"+kind+"/"+name, "", nil)
	}
}

func keyOps(s *kcState) []operation {
	keyX := func(state string) func(h *matrixHarness) {
		return func(h *matrixHarness) {
			h.ensure("keys", "x", state, func() { h.mustAdmin("POST", "/keys/x/create", `{"kty":"EC"}`, nil) })
		}
	}
	body := func(b string) func(*matrixHarness) string { return func(*matrixHarness) string { return b } }
	return []operation{
		{"get key", "get", "keys/read", nil, "GET", "/keys/k", nil},
		{"list keys", "list", "keys/read", nil, "GET", "/keys", nil},
		{"list key versions", "list", "keys/read", nil, "GET", "/keys/k/versions", nil},
		{"create key", "create", "keys/create/action", nil, "POST", "/keys/new/create", body(`{"kty":"EC"}`)},
		{"import key", "import", "keys/import/action", nil, "PUT", "/keys/imp", body(`{"key":{"kty":"oct","k":"` + b64(make([]byte, 32)) + `"}}`)},
		{"update key", "update", "keys/update/action", nil, "PATCH", "/keys/k", body(`{"tags":{"a":"b"}}`)},
		{"sign", "sign", "keys/sign/action", nil, "POST", "/keys/k/sign", body(`{"alg":"ES256","value":"` + s.digest + `"}`)},
		{"verify", "verify", "keys/verify/action", nil, "POST", "/keys/k/verify", body(`{"alg":"ES256","digest":"` + s.digest + `","value":"` + s.sig + `"}`)},
		{"encrypt", "encrypt", "keys/encrypt/action", nil, "POST", "/keys/aes/encrypt", body(`{"alg":"A256GCM","value":"aGVsbG8"}`)},
		{"decrypt", "decrypt", "keys/decrypt/action", nil, "POST", "/keys/aes/decrypt", body(`{"alg":"A256GCM","value":"` + s.ct + `","iv":"` + s.iv + `","tag":"` + s.tag + `"}`)},
		{"wrap", "wrapKey", "keys/wrap/action", nil, "POST", "/keys/aes/wrapkey", body(`{"alg":"A256KW","value":"` + b64(make([]byte, 16)) + `"}`)},
		{"unwrap", "unwrapKey", "keys/unwrap/action", nil, "POST", "/keys/aes/unwrapkey", body(`{"alg":"A256KW","value":"` + s.wrapped + `"}`)},
		{"rotate", "rotate", "keys/rotate/action", nil, "POST", "/keys/r/rotate", nil},
		{"get rotation policy", "getrotationpolicy", "keyrotationpolicies/read", nil, "GET", "/keys/k/rotationpolicy", nil},
		{"set rotation policy", "setrotationpolicy", "keyrotationpolicies/write", nil, "PUT", "/keys/k/rotationpolicy",
			body(`{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P1Y"}}`)},
		{"delete key", "delete", "keys/delete", keyX("live"), "DELETE", "/keys/x", nil},
		{"get deleted key", "get", "keys/read", keyX("deleted"), "GET", "/deletedkeys/x", nil},
		{"list deleted keys", "list", "keys/read", nil, "GET", "/deletedkeys", nil},
		{"recover key", "recover", "keys/recover/action", keyX("deleted"), "POST", "/deletedkeys/x/recover", nil},
		{"purge key", "purge", "keys/purge/action", keyX("deleted"), "DELETE", "/deletedkeys/x", nil},
		{"backup key", "backup", "keys/backup/action", nil, "POST", "/keys/k/backup", nil},
		{"restore key", "restore", "keys/restore/action", func(h *matrixHarness) {
			h.ensure("keys", "kb", "gone", func() { h.mustAdmin("POST", "/keys/restore", `{"value":"`+s.keyBlob+`"}`, nil) })
		}, "POST", "/keys/restore", body(`{"value":"` + s.keyBlob + `"}`)},
	}
}

func certOps(s *kcState) []operation {
	certX := func(state string) func(h *matrixHarness) {
		return func(h *matrixHarness) {
			h.ensure("certificates", "cx", state, func() { h.mustAdmin("POST", "/certificates/cx/import", `{"value":`+jsonString(s.pem)+`}`, nil) })
		}
	}
	body := func(b string) func(*matrixHarness) string { return func(*matrixHarness) string { return b } }
	ops := []operation{
		{"get certificate", "get", "certificates/read", nil, "GET", "/certificates/c", nil},
		{"get certificate policy", "get", "certificates/read", nil, "GET", "/certificates/c/policy", nil},
		{"get certificate operation", "get", "certificates/read", nil, "GET", "/certificates/c/pending", nil},
		{"list certificates", "list", "certificates/read", nil, "GET", "/certificates", nil},
		{"list certificate versions", "list", "certificates/read", nil, "GET", "/certificates/c/versions", nil},
		{"create certificate", "create", "certificates/create/action", func(h *matrixHarness) { h.awaitOp("cnew") }, "POST", "/certificates/cnew/create",
			body(`{"policy":{"x509_props":{"subject":"CN=new"},"key_props":{"kty":"EC"}}}`)},
		{"import certificate", "import", "certificates/import/action", nil, "POST", "/certificates/cimp/import", body(`{"value":` + jsonString(s.pem) + `}`)},
		{"update certificate", "update", "certificates/update/action", nil, "PATCH", "/certificates/c", body(`{"tags":{"a":"b"}}`)},
		{"update certificate policy", "update", "certificates/update/action", nil, "PATCH", "/certificates/c/policy", body(`{"x509_props":{"validity_months":6}}`)},
		{"delete certificate", "delete", "certificates/delete", certX("live"), "DELETE", "/certificates/cx", nil},
		{"get deleted certificate", "get", "certificates/read", certX("deleted"), "GET", "/deletedcertificates/cx", nil},
		{"list deleted certificates", "list", "certificates/read", nil, "GET", "/deletedcertificates", nil},
		{"recover certificate", "recover", "certificates/recover/action", certX("deleted"), "POST", "/deletedcertificates/cx/recover", nil},
		{"purge certificate", "purge", "certificates/purge/action", certX("deleted"), "DELETE", "/deletedcertificates/cx", nil},
		{"backup certificate", "backup", "certificates/backup/action", nil, "POST", "/certificates/c/backup", nil},
		{"restore certificate", "restore", "certificates/restore/action", func(h *matrixHarness) {
			h.ensure("certificates", "cb", "gone", func() { h.mustAdmin("POST", "/certificates/cb/import", `{"value":`+jsonString(s.pem)+`}`, nil) })
		}, "POST", "/certificates/restore", body(`{"value":"` + s.certBlob + `"}`)},
	}
	return append(ops, issuerOps()...)
}

// issuerOps are the certificate issuer and contacts operations; they need
// an issuer i, which prepareKC makes.
func issuerOps() []operation {
	body := func(b string) func(*matrixHarness) string { return func(*matrixHarness) string { return b } }
	ensureIX := func(h *matrixHarness) { h.adminDo("PUT", "/certificates/issuers/ix", `{"provider":"DigiCert"}`) }
	return []operation{
		{"get contacts", "managecontacts", "certificatecontacts/write", nil, "GET", "/certificates/contacts", nil},
		{"set contacts", "managecontacts", "certificatecontacts/write", nil, "PUT", "/certificates/contacts", body(`{"contacts":[{"email":"a@example.com"}]}`)},
		{"delete contacts", "managecontacts", "certificatecontacts/write", nil, "DELETE", "/certificates/contacts", nil},
		{"get issuer", "getissuers", "certificatecas/read", nil, "GET", "/certificates/issuers/i", nil},
		{"list issuers", "listissuers", "certificatecas/read", nil, "GET", "/certificates/issuers", nil},
		{"set issuer", "setissuers", "certificatecas/write", nil, "PUT", "/certificates/issuers/i2", body(`{"provider":"GlobalSign"}`)},
		{"update issuer", "setissuers", "certificatecas/write", nil, "PATCH", "/certificates/issuers/i", body(`{"org_details":{"id":"o"}}`)},
		{"delete issuer", "deleteissuers", "certificatecas/delete", ensureIX, "DELETE", "/certificates/issuers/ix", nil},
	}
}

func permissionsOf(ops []operation) []string {
	var out []string
	for _, op := range ops {
		if !slices.Contains(out, op.permission) {
			out = append(out, op.permission)
		}
	}
	return out
}

// Under access policies, each key and certificate permission allows
// exactly its operations.
func TestKeyAndCertificatePermissionsAccessPolicies(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	h := newMatrix(t, env)
	s := prepareKC(t, h)
	for _, kind := range []struct {
		name string
		ops  []operation
		in   func(perms []string) mgmthttp.PolicyIn
	}{
		{"keys", keyOps(s), func(p []string) mgmthttp.PolicyIn { return mgmthttp.PolicyIn{Keys: &p} }},
		{"certificates", certOps(s), func(p []string) mgmthttp.PolicyIn { return mgmthttp.PolicyIn{Certificates: &p} }},
	} {
		for _, perm := range permissionsOf(kind.ops) {
			oid, tok := principal(t, env, kind.name+"-"+perm)
			in := kind.in([]string{perm})
			in.ObjectID = oid
			manage(t, env, "POST", "vaults/demo/set-policy", in, nil)
			for _, op := range kind.ops {
				h.check(kind.name+" policy "+perm, op, tok, op.permission == perm, "AccessDenied")
			}
		}
	}
	// manageissuers, Azure's older name, grants every issuer operation,
	// and nothing else.
	oid, tok := principal(t, env, "certificates-manageissuers")
	manage(t, env, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: oid, Certificates: &[]string{"manageissuers"}}, nil)
	for _, op := range certOps(s) {
		h.check("certificates policy manageissuers", op, tok, strings.HasSuffix(op.permission, "issuers"), "AccessDenied")
	}
}

// Under RBAC, the built-in key and certificate roles allow the data
// actions Azure documents for them, and nothing else.
func TestKeyAndCertificateRolesRBAC(t *testing.T) {
	env := testserver.Start(t, testserver.Options{TokenRateLimit: -1})
	h := newMatrix(t, env)
	s := prepareKC(t, h)
	v, err := env.Server.Vaults.Update(context.Background(), "demo", func(v *vault.Vault) error { v.RBAC = true; return nil })
	if err != nil {
		t.Fatal(err)
	}
	all := append(keyOps(s), certOps(s)...)
	for role, allowed := range map[string]func(action string) bool{
		"Key Vault Crypto Officer": func(a string) bool {
			return strings.HasPrefix(a, "keys/") || strings.HasPrefix(a, "keyrotationpolicies/")
		},
		"Key Vault Crypto User": func(a string) bool {
			return slices.Contains([]string{"keys/read", "keys/update/action", "keys/backup/action", "keys/encrypt/action", "keys/decrypt/action",
				"keys/wrap/action", "keys/unwrap/action", "keys/sign/action", "keys/verify/action"}, a)
		},
		"Key Vault Crypto Service Encryption User": func(a string) bool {
			return slices.Contains([]string{"keys/read", "keys/wrap/action", "keys/unwrap/action"}, a)
		},
		"Key Vault Certificates Officer": func(a string) bool { return strings.HasPrefix(a, "certificate") },
		"Key Vault Certificate User":     func(a string) bool { return a == "certificates/read" || a == "keys/read" },
		"Key Vault Reader":               func(a string) bool { return strings.HasSuffix(a, "/read") },
		"Key Vault Administrator":        func(string) bool { return true },
	} {
		oid, tok := principal(t, env, "role-"+role)
		manage(t, env, "POST", "role-assignments", mgmthttp.CreateAssignmentIn{Role: role, Assignee: oid, Scope: v.ID()}, nil)
		for _, op := range all {
			h.check(role, op, tok, allowed(op.dataAction), "ForbiddenByRbac")
		}
	}
}
