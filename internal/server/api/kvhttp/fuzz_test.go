package kvhttp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// backupsFile holds the backups the seed generator made with the
// committed keyring: the only blobs a restore may accept.
const backupsFile = "testdata/backups.json"

type genuineBackup struct {
	Name string `json:"name"`
	Blob []byte `json:"blob"`
}

// The PFX files' password (they are openssl's: AES-256 with PBKDF2, and
// -legacy's RC2 and 3DES).
const pfxPassword = "fuzz-pfx-Pa55"

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// goPFX is a PFX made with Go's crypto and go-pkcs12, for seeds beside
// openssl's.
func goPFX(t *testing.T, password string) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "api.coffer.example"}, DNSNames: []string{"api.coffer.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pfx, err := pkcs12.Modern.Encode(key, c, nil, password)
	if err != nil {
		t.Fatal(err)
	}
	return pfx
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzSecretBody", func(*testing.T) []fuzzseed.Seed {
		exp := time.Now().Add(365 * 24 * time.Hour).Unix()
		return []fuzzseed.Seed{
			// What azsecrets' SetSecret and UpdateSecretProperties send.
			fuzzseed.S("azsecrets-set", "db-password", `{"value":"S3cr3t-P@ssw0rd!","contentType":"text/plain","attributes":{"enabled":true,"exp":`+jsonOf(exp)+`},"tags":{"env":"prod","owner":"payments"}}`, false),
			fuzzseed.S("azsecrets-set-minimal", "api-key", `{"value":"sk_live_51HqLyjWDarjtT1zdp7dc"}`, false),
			fuzzseed.S("az-cli-connection-string", "ConnectionStrings--Default", `{"value":"Server=tcp:db.coffer.example,1433;Database=app;User ID=app;Password=Qx8~Zr.V3nLp_2sT9;Encrypt=true;","contentType":"","attributes":{"enabled":true},"tags":{}}`, false),
			fuzzseed.S("multiline-pem-value", "tls-key", `{"value":"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n","contentType":"application/x-pem-file"}`, false),
			fuzzseed.S("nbf-after-exp", "a", `{"value":"valuevalue","attributes":{"nbf":1900000000,"exp":1800000000}}`, false),
			fuzzseed.S("too-many-tags", "a", `{"value":"x","tags":{"1":"","2":"","3":"","4":"","5":"","6":"","7":"","8":"","9":"","10":"","11":"","12":"","13":"","14":"","15":"","16":""}}`, false),
			fuzzseed.S("oversized-value", "big", `{"value":"`+strings.Repeat("v", 25*1024+1)+`"}`, false),
			fuzzseed.S("escaped-value", "a", `{"value":"\u0000\ud83d\ude00\"\\\u2028","contentType":"\u00e9"}`, false),
			fuzzseed.S("value-not-string", "a", `{"value":12345678,"tags":{"a":1}}`, false),
			fuzzseed.S("attributes-wrong-type", "a", `{"value":"x","attributes":{"enabled":"yes","exp":"tomorrow"}}`, false),
			fuzzseed.S("no-value", "a", `{"contentType":"text/plain"}`, false),
			fuzzseed.S("not-json", "a", `value=hunter2`, false),
			fuzzseed.S("empty", "a", ``, false),
			fuzzseed.S("deep-nesting", "a", strings.Repeat(`{"tags":`, 5000)+"{}"+strings.Repeat("}", 5000), false),
			fuzzseed.S("bad-names", "a_b/../c", `{"value":"x"}`, false),
			fuzzseed.S("long-name", strings.Repeat("n", 128), `{"value":"x"}`, false),
			fuzzseed.S("azsecrets-update", "", `{"contentType":"application/json","attributes":{"enabled":false,"nbf":1767225600},"tags":{"rotated":"2026-12-01"}}`, true),
			fuzzseed.S("update-with-value", "", `{"value":"new-value-here","contentType":"x"}`, true),
			fuzzseed.S("update-version", "3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8", `{"attributes":{"enabled":true}}`, true),
		}
	})
	fuzzseed.Corpus(t, "FuzzKeyBody", func(t *testing.T) []fuzzseed.Seed {
		rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
		ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		rsaJWK, _ := keyops.FromPrivateKey(rsaKey)
		ecJWK, _ := keyops.FromPrivateKey(ecKey)
		imp := func(j keyops.JWK, extra string) string { return `{"key":` + jsonOf(j) + `,"Hsm":false` + extra + `}` }
		pub := rsaJWK.PublicJWK()
		truncated := rsaJWK.PrivateJWK()
		truncated.D = truncated.D[:len(truncated.D)/2]
		mismatched := rsaJWK.PrivateJWK()
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		mismatched.D = other.D.Bytes()
		const create, importKey, update = byte(0), byte(1), byte(2)
		return []fuzzseed.Seed{
			// What azkeys' CreateKey, ImportKey and UpdateKeyProperties send.
			fuzzseed.S("azkeys-create-rsa", "signing-2", `{"kty":"RSA","key_size":2048,"key_ops":["sign","verify"],"attributes":{"enabled":true},"tags":{"purpose":"jwt"}}`, create),
			fuzzseed.S("azkeys-create-ec", "ec-signing", `{"kty":"EC","crv":"P-256","key_ops":["sign","verify"]}`, create),
			fuzzseed.S("azkeys-create-secp256k1", "eth", `{"kty":"EC","crv":"P-256K"}`, create),
			fuzzseed.S("azkeys-create-oct", "aes", `{"kty":"oct","key_size":256,"key_ops":["encrypt","decrypt","wrapKey","unwrapKey"]}`, create),
			fuzzseed.S("create-hsm", "hsm", `{"kty":"RSA-HSM","key_size":2048}`, create),
			fuzzseed.S("create-release-policy", "rel", `{"kty":"EC","crv":"P-384","release_policy":{"data":"eyJ9"},"attributes":{"exportable":true}}`, create),
			fuzzseed.S("create-bad-exponent", "e", `{"kty":"RSA","key_size":2048,"public_exponent":3}`, create),
			fuzzseed.S("create-bad-ops", "o", `{"kty":"EC","key_ops":["encrypt","import","bogus"]}`, create),
			fuzzseed.S("azkeys-import-rsa", "imported-rsa", imp(rsaJWK.PrivateJWK(), `,"attributes":{"enabled":true,"exp":1900000000},"tags":{"source":"hsm-export"}`), importKey),
			fuzzseed.S("azkeys-import-ec", "imported-ec", imp(ecJWK.PrivateJWK(), ""), importKey),
			fuzzseed.S("import-oct", "imported-oct", `{"key":{"kty":"oct","k":"`+b64url(bytes.Repeat([]byte{7}, 32))+`","key_ops":["wrapKey","unwrapKey"]}}`, importKey),
			fuzzseed.S("import-public-only", "pub", imp(pub, ""), importKey),
			fuzzseed.S("import-truncated-d", "trunc", imp(truncated, ""), importKey),
			fuzzseed.S("import-mismatched-d", "mismatch", imp(mismatched, ""), importKey),
			fuzzseed.S("import-hsm-true", "hsm", strings.Replace(imp(ecJWK.PrivateJWK(), ""), `"Hsm":false`, `"Hsm":true`, 1), importKey),
			fuzzseed.S("import-bad-base64", "b64", `{"key":{"kty":"RSA","n":"!!!","e":"AQAB","d":"***"}}`, importKey),
			fuzzseed.S("import-tiny-rsa", "tiny", `{"key":{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB","p":"Aw","q":"BQ"}}`, importKey),
			fuzzseed.S("import-off-curve", "curve", `{"key":{"kty":"EC","crv":"P-256","x":"`+b64url(make([]byte, 32))+`","y":"`+b64url(make([]byte, 32))+`","d":"AQ"}}`, importKey),
			fuzzseed.S("import-no-key", "none", `{"Hsm":false}`, importKey),
			fuzzseed.S("azkeys-update", "", `{"key_ops":["verify"],"attributes":{"enabled":false,"nbf":1767225600},"tags":{"retired":"yes"}}`, update),
			fuzzseed.S("update-exportable", "", `{"attributes":{"exportable":true}}`, update),
		}
	})
	fuzzseed.Corpus(t, "FuzzKeyOperation", func(*testing.T) []fuzzseed.Seed {
		d256 := sha256.Sum256([]byte("payload"))
		digest := b64url(d256[:])
		const rsaKey, ecKey, octKey = byte(0), byte(1), byte(2)
		return []fuzzseed.Seed{
			// What azkeys' CryptographyClient sends.
			fuzzseed.S("sign-rs256", rsaKey, "sign", `{"alg":"RS256","value":"`+digest+`"}`),
			fuzzseed.S("sign-ps256", rsaKey, "sign", `{"alg":"PS256","value":"`+digest+`"}`),
			fuzzseed.S("sign-es256", ecKey, "sign", `{"alg":"ES256","value":"`+digest+`"}`),
			fuzzseed.S("sign-wrong-digest-size", ecKey, "sign", `{"alg":"ES256","value":"AAEC"}`),
			fuzzseed.S("sign-alg-mismatch", rsaKey, "sign", `{"alg":"ES384","value":"`+digest+`"}`),
			fuzzseed.S("verify-rs256", rsaKey, "verify", `{"alg":"RS256","digest":"`+digest+`","value":"`+b64url(make([]byte, 256))+`"}`),
			fuzzseed.S("encrypt-oaep", rsaKey, "encrypt", `{"alg":"RSA-OAEP","value":"`+b64url([]byte("data-encryption-key-material-32b"))+`"}`),
			fuzzseed.S("encrypt-oaep256", rsaKey, "encrypt", `{"alg":"RSA-OAEP-256","value":"aGVsbG8"}`),
			fuzzseed.S("encrypt-rsa15", rsaKey, "encrypt", `{"alg":"RSA1_5","value":"aGVsbG8"}`),
			fuzzseed.S("encrypt-too-long", rsaKey, "encrypt", `{"alg":"RSA-OAEP","value":"`+b64url(make([]byte, 300))+`"}`),
			fuzzseed.S("decrypt-garbage", rsaKey, "decrypt", `{"alg":"RSA-OAEP","value":"`+b64url(make([]byte, 256))+`"}`),
			fuzzseed.S("encrypt-a256gcm", octKey, "encrypt", `{"alg":"A256GCM","value":"aGVsbG8gd29ybGQ","aad":"aGVhZGVy"}`),
			fuzzseed.S("encrypt-a256cbcpad", octKey, "encrypt", `{"alg":"A256CBCPAD","value":"aGVsbG8gd29ybGQ","iv":"`+b64url(make([]byte, 16))+`"}`),
			fuzzseed.S("decrypt-gcm-bad-tag", octKey, "decrypt", `{"alg":"A256GCM","value":"aGVsbG8","iv":"`+b64url(make([]byte, 12))+`","tag":"`+b64url(make([]byte, 16))+`"}`),
			fuzzseed.S("wrap-a256kw", octKey, "wrapkey", `{"alg":"A256KW","value":"`+b64url(bytes.Repeat([]byte{1}, 32))+`"}`),
			fuzzseed.S("wrap-kw-bad-length", octKey, "wrapkey", `{"alg":"A256KW","value":"AQID"}`),
			fuzzseed.S("unwrap-kw-garbage", octKey, "unwrapkey", `{"alg":"A256KW","value":"`+b64url(make([]byte, 40))+`"}`),
			fuzzseed.S("wrap-rsa", rsaKey, "wrapkey", `{"alg":"RSA-OAEP-256","value":"`+b64url(bytes.Repeat([]byte{2}, 32))+`"}`),
			fuzzseed.S("no-alg", rsaKey, "sign", `{"value":"`+digest+`"}`),
			fuzzseed.S("padded-base64", ecKey, "sign", `{"alg":"ES256","value":"`+base64.StdEncoding.EncodeToString(d256[:])+`"}`),
			fuzzseed.S("bad-base64", ecKey, "sign", `{"alg":"ES256","value":"%%%"}`),
			fuzzseed.S("unknown-op", octKey, "release", `{"alg":"A256GCM"}`),
		}
	})
	fuzzseed.Corpus(t, "FuzzCertificateBody", func(t *testing.T) []fuzzseed.Seed {
		aes, legacy, nopass := testdata(t, "web-aes.pfx"), testdata(t, "web-legacy.pfx"), testdata(t, "web-nopass.pfx")
		chain, ecPEM := string(testdata(t, "web-chain.pem")), string(testdata(t, "ec-selfsigned.pem"))
		goP := goPFX(t, "go-Pa55")
		std := base64.StdEncoding.EncodeToString
		pfxPolicy := `,"policy":{"key_props":{"exportable":true,"kty":"RSA","key_size":2048,"reuse_key":false},"secret_props":{"contentType":"application/x-pkcs12"}}`
		pemPolicy := `,"policy":{"secret_props":{"contentType":"application/x-pem-file"}}`
		const importCert, updatePolicy, update = byte(0), byte(1), byte(2)
		return []fuzzseed.Seed{
			// What azcertificates' ImportCertificate sends.
			fuzzseed.S("azcertificates-import-pfx", "web-pfx", `{"value":"`+std(aes)+`","pwd":"`+pfxPassword+`"`+pfxPolicy+`,"attributes":{"enabled":true},"tags":{"team":"edge"}}`, importCert),
			fuzzseed.S("import-legacy-pfx", "web-legacy", `{"value":"`+std(legacy)+`","pwd":"`+pfxPassword+`"}`, importCert),
			fuzzseed.S("import-pfx-no-password", "web-nopass", `{"value":"`+std(nopass)+`"}`, importCert),
			fuzzseed.S("import-go-pfx", "api", `{"value":"`+std(goP)+`","pwd":"go-Pa55"}`, importCert),
			fuzzseed.S("import-pfx-wrong-password", "web-wrong", `{"value":"`+std(aes)+`","pwd":"not-the-password"}`, importCert),
			fuzzseed.S("import-pfx-truncated", "web-trunc", `{"value":"`+std(aes[:len(aes)/2])+`","pwd":"`+pfxPassword+`"}`, importCert),
			fuzzseed.S("import-pfx-as-pem-type", "web-type", `{"value":"`+std(aes)+`","pwd":"`+pfxPassword+`"`+pemPolicy+`}`, importCert),
			fuzzseed.S("import-pem-chain", "web-pem", jsonOf(map[string]any{"value": chain, "policy": map[string]any{"secret_props": map[string]string{"contentType": "application/x-pem-file"}}}), importCert),
			fuzzseed.S("import-pem-ec", "ec", jsonOf(map[string]any{"value": ecPEM}), importCert),
			fuzzseed.S("import-pem-no-key", "nokey", jsonOf(map[string]any{"value": string(testdata(t, "ca.pem"))}), importCert),
			fuzzseed.S("import-pem-key-mismatch", "mismatch", jsonOf(map[string]any{"value": strings.SplitAfter(chain, "-----END PRIVATE KEY-----\n")[0] + ecPEM}), importCert),
			fuzzseed.S("import-bad-content-type", "ct", `{"value":"`+std(nopass)+`","policy":{"secret_props":{"contentType":"application/json"}}}`, importCert),
			fuzzseed.S("import-no-value", "none", `{"pwd":"x"}`, importCert),
			fuzzseed.S("azcertificates-update-policy", "", `{"x509_props":{"subject":"CN=web.coffer.example, O=Coffer, C=FR","sans":{"dns_names":["web.coffer.example"]},"ekus":["1.3.6.1.5.5.7.3.1"],"key_usage":["digitalSignature","keyEncipherment"],"validity_months":12},"lifetime_actions":[{"trigger":{"lifetime_percentage":80},"action":{"action_type":"AutoRenew"}}],"issuer":{"name":"Self"}}`, updatePolicy),
			fuzzseed.S("update-policy-bad-subject", "", `{"x509_props":{"subject":"CN=a,,=b\\","validity_months":-1}}`, updatePolicy),
			fuzzseed.S("update-policy-bad-oid", "", `{"x509_props":{"ekus":["1.2.x"]},"key_props":{"kty":"EC","key_size":2048}}`, updatePolicy),
			fuzzseed.S("azcertificates-update", "", `{"attributes":{"enabled":false},"tags":{"state":"retired"}}`, update),
		}
	})
	fuzzseed.Corpus(t, "FuzzRestore", func(t *testing.T) []fuzzseed.Seed {
		k := newKV(t)
		k.mustDo(t, "PUT", "/secrets/backup-secret", `{"value":"first-version-value"}`, 200)
		k.mustDo(t, "PUT", "/secrets/backup-secret", `{"value":"second-version-value","contentType":"text/plain","tags":{"v":"2"}}`, 200)
		k.mustDo(t, "POST", "/keys/backup-key/create", `{"kty":"EC","crv":"P-256"}`, 200)
		k.mustDo(t, "POST", "/certificates/backup-cert/import", `{"value":"`+base64.StdEncoding.EncodeToString(testdata(t, "web-nopass.pfx"))+`"}`, 200)
		backups := map[string][]genuineBackup{}
		var seeds []fuzzseed.Seed
		for i, kind := range []string{"secrets", "keys", "certificates"} {
			name := map[string]string{"secrets": "backup-secret", "keys": "backup-key", "certificates": "backup-cert"}[kind]
			a := k.mustDo(t, "POST", "/"+kind+"/"+name+"/backup", "", 200)
			var out blobIO
			json.Unmarshal(a.body, &out)
			blob, _ := base64.RawURLEncoding.DecodeString(out.Value)
			backups[kind] = append(backups[kind], genuineBackup{Name: name, Blob: blob})
			flip := func(at int) []byte { c := bytes.Clone(blob); c[at] ^= 1; return c }
			body := func(b []byte) string { return `{"value":"` + b64url(b) + `"}` }
			seeds = append(seeds,
				fuzzseed.S(kind+"-genuine", byte(i), body(blob)),
				fuzzseed.S(kind+"-padded-std-base64", byte(i), `{"value":"`+base64.StdEncoding.EncodeToString(blob)+`"}`),
				fuzzseed.S(kind+"-flipped-term", byte(i), body(flip(3))),
				fuzzseed.S(kind+"-flipped-body", byte(i), body(flip(len(blob)/2))),
				fuzzseed.S(kind+"-truncated", byte(i), body(blob[:len(blob)-1])),
				fuzzseed.S(kind+"-extended", byte(i), body(append(bytes.Clone(blob), 0))),
				fuzzseed.S(kind+"-wrong-kind", byte((i+1)%3), body(blob)),
			)
		}
		seeds = append(seeds,
			fuzzseed.S("not-base64", byte(0), `{"value":"***not base64***"}`),
			fuzzseed.S("empty-value", byte(1), `{"value":""}`),
			fuzzseed.S("value-not-string", byte(2), `{"value":["AAAA"]}`),
			fuzzseed.S("oversized", byte(0), `{"value":"`+strings.Repeat("A", 6<<20)+`"}`),
			fuzzseed.S("header-only", byte(0), `{"value":"`+b64url(make([]byte, 17))+`"}`),
		)
		js, err := json.MarshalIndent(backups, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(backupsFile, append(js, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return seeds
	})
}

// FuzzSecretBody sends arbitrary bodies to set a secret (PUT) or update
// its properties (PATCH). Every answer is Azure's; no error carries the
// value sent; a set that succeeds stores exactly the value, content type
// and tags given, within Key Vault's limits, under a new version that
// reads back the same; an update never takes a value.
func FuzzSecretBody(f *testing.F) {
	k := newKV(f)
	k.mustDo(f, "PUT", "/secrets/db-password", `{"value":"the-original-value","contentType":"text/plain"}`, 200)
	f.Fuzz(func(t *testing.T, name, body string, patch bool) {
		var in struct {
			Value       *string           `json:"value"`
			ContentType *string           `json:"contentType"`
			Tags        map[string]string `json:"tags"`
		}
		parsed := json.Unmarshal([]byte(body), &in) == nil
		var secrets []string
		if in.Value != nil && !strings.Contains(name+jsonOf(in.Tags)+jsonOf(in.ContentType), *in.Value) {
			secrets = append(secrets, *in.Value)
		}
		if patch {
			path := "/secrets/db-password"
			if name != "" {
				path += "/" + pathName(name)
			}
			a, ok := k.do("PATCH", path, body)
			if !ok {
				return
			}
			check(t, a, secrets...)
			if a.status == 200 && (!parsed || in.Value != nil) {
				t.Fatalf("an update with body %.200q succeeded", body)
			}
			return
		}
		a, ok := k.do("PUT", "/secrets/"+pathName(name), body)
		if !ok {
			return
		}
		check(t, a, secrets...)
		if a.status != 200 {
			return
		}
		defer k.purge("secrets", name)
		var out secretOut
		if err := json.Unmarshal(a.body, &out); err != nil || !parsed || in.Value == nil {
			t.Fatalf("set %.200q answered %s", body, a.body)
		}
		switch {
		case *out.Value != *in.Value || len(*in.Value) > 25*1024:
			t.Fatalf("stored a %d-byte value for a %d-byte one", len(*out.Value), len(*in.Value))
		case in.ContentType != nil && out.ContentType != *in.ContentType:
			t.Fatalf("content type %q for %q", out.ContentType, *in.ContentType)
		case len(in.Tags) > 15 || len(in.Tags) != len(out.Tags):
			t.Fatalf("tags %v for %v", out.Tags, in.Tags)
		}
		version := out.ID[strings.LastIndexByte(out.ID, '/')+1:]
		if !strings.HasPrefix(out.ID, "https://"+fzHost+"/secrets/") || len(version) != 32 {
			t.Fatalf("id %q", out.ID)
		}
		got := k.mustDo(t, "GET", "/secrets/"+pathName(name)+"/"+version, "", 200)
		var back secretOut
		if json.Unmarshal(got.body, &back) != nil || back.Value == nil || *back.Value != *in.Value || back.ContentType != out.ContentType {
			t.Fatalf("the version reads back as %s", got.body)
		}
	})
}

// privateMembers are the JWK members that carry private key material.
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "k"}

// FuzzKeyBody sends arbitrary bodies to create, import (JWK) and update
// keys. Every answer is Azure's; no error carries the imported private
// key; no answer ever carries private key material; an import that
// succeeds keeps the public key given; a create makes the key type asked
// for.
func FuzzKeyBody(f *testing.F) {
	k := newKV(f)
	k.mustDo(f, "POST", "/keys/signing/create", `{"kty":"EC","crv":"P-256"}`, 200)
	f.Fuzz(func(t *testing.T, name, body string, op byte) {
		var in struct {
			Kty     string      `json:"kty"`
			KeySize int         `json:"key_size"`
			Key     *keyops.JWK `json:"key"`
		}
		json.Unmarshal([]byte(body), &in)
		var secrets []string
		if in.Key != nil {
			for _, m := range [][]byte{in.Key.D, in.Key.P, in.Key.Q, in.Key.K} {
				if s := b64url(m); len(m) >= 6 && !strings.Contains(name, s) {
					secrets = append(secrets, s)
				}
			}
		}
		var a answer
		var ok bool
		switch op % 3 {
		case 0:
			if strings.HasPrefix(in.Kty, "RSA") && in.KeySize > 2048 || strings.Contains(body, "RSA") && strings.Contains(body, "4096") {
				return // seconds of key generation per input: left out of the loop
			}
			a, ok = k.do("POST", "/keys/"+pathName(name)+"/create", body)
		case 1:
			a, ok = k.do("PUT", "/keys/"+pathName(name), body)
		default:
			path := "/keys/signing"
			if name != "" {
				path += "/" + pathName(name)
			}
			a, ok = k.do("PATCH", path, body)
		}
		if !ok {
			return
		}
		check(t, a, secrets...)
		if a.status >= 300 {
			return
		}
		if op%3 != 2 {
			defer k.purge("keys", name)
		}
		var out struct {
			Key map[string]json.RawMessage `json:"key"`
		}
		if err := json.Unmarshal(a.body, &out); err != nil {
			t.Fatal(err)
		}
		for _, m := range privateMembers {
			if _, has := out.Key[m]; has {
				t.Fatalf("the answer carries the private member %q: %s", m, a.body)
			}
		}
		var jwk keyops.JWK
		raw, _ := json.Marshal(out.Key)
		if err := json.Unmarshal(raw, &jwk); err != nil {
			t.Fatal(err)
		}
		switch op % 3 {
		case 0:
			if want := strings.TrimSpace(in.Kty); jwk.Kty != want {
				t.Fatalf("created a %s key for kty %q", jwk.Kty, in.Kty)
			}
		case 1:
			if in.Key == nil || !bytes.Equal(jwk.N, in.Key.N) || !bytes.Equal(jwk.E, in.Key.E) || !bytes.Equal(jwk.X, in.Key.X) || !bytes.Equal(jwk.Y, in.Key.Y) {
				t.Fatalf("imported %s, answered %s", body, raw)
			}
		}
	})
}

// FuzzKeyOperation sends arbitrary bodies to every cryptographic
// operation of an RSA, an EC and an oct key. Every answer is Azure's; what
// succeeds is right: an encryption decrypts back, a signature verifies,
// a wrapped key unwraps.
func FuzzKeyOperation(f *testing.F) {
	k := newKV(f)
	names := []string{"rsa", "ec", "oct"}
	k.mustDo(f, "POST", "/keys/rsa/create", `{"kty":"RSA","key_size":2048}`, 200)
	k.mustDo(f, "POST", "/keys/ec/create", `{"kty":"EC","crv":"P-256"}`, 200)
	k.mustDo(f, "POST", "/keys/oct/create", `{"kty":"oct","key_size":256}`, 200)
	f.Fuzz(func(t *testing.T, which byte, op, body string) {
		name := names[int(which)%len(names)]
		a, ok := k.do("POST", "/keys/"+name+"/"+pathName(op), body)
		if !ok {
			return
		}
		check(t, a)
		if a.status != 200 {
			return
		}
		var in opIn
		var out opOut
		if json.Unmarshal([]byte(body), &in) != nil || json.Unmarshal(a.body, &out) != nil {
			if op == "verify" {
				return
			}
			t.Fatalf("%s %s answered %s", op, body, a.body)
		}
		back := func(op string, req any) opOut {
			a := k.mustDo(t, "POST", "/keys/"+name+"/"+op, jsonOf(req), 200)
			var o opOut
			json.Unmarshal(a.body, &o)
			return o
		}
		switch op {
		case "encrypt":
			iv := out.IV
			if len(iv) == 0 {
				iv = in.IV
			}
			plain := back("decrypt", map[string]any{"alg": in.Alg, "value": out.Value, "iv": iv, "aad": in.AAD, "tag": out.Tag})
			if !bytes.Equal(plain.Value, in.Value) {
				t.Fatalf("%s of %x decrypts to %x", in.Alg, in.Value, plain.Value)
			}
		case "wrapkey":
			plain := back("unwrapkey", map[string]any{"alg": in.Alg, "value": out.Value})
			if !bytes.Equal(plain.Value, in.Value) {
				t.Fatalf("%s of %x unwraps to %x", in.Alg, in.Value, plain.Value)
			}
		case "sign":
			a := k.mustDo(t, "POST", "/keys/"+name+"/verify", jsonOf(map[string]any{"alg": in.Alg, "digest": in.Value, "value": out.Value}), 200)
			if !strings.Contains(string(a.body), "true") {
				t.Fatalf("a %s signature does not verify: %s", in.Alg, a.body)
			}
		}
	})
}

// FuzzCertificateBody sends arbitrary bodies to import certificates (PFX
// with a password, PEM chains), to update a certificate's policy and its
// properties. Every answer is Azure's; no error carries the PFX password;
// an imported certificate is a parseable X.509 certificate whose x5t is
// its SHA-1, that reads back the same, and whose answer has no private
// key.
func FuzzCertificateBody(f *testing.F) {
	k := newKV(f)
	k.mustDo(f, "POST", "/certificates/existing/import", jsonOf(map[string]string{"value": string(testdata(f, "ec-selfsigned.pem"))}), 200)
	f.Fuzz(func(t *testing.T, name, body string, op byte) {
		var in struct {
			Pwd string `json:"pwd"`
		}
		json.Unmarshal([]byte(body), &in)
		var secrets []string
		if in.Pwd != "" && !strings.Contains(name, in.Pwd) && !strings.Contains(strings.Replace(body, `"pwd":"`+in.Pwd, "", 1), in.Pwd) {
			secrets = append(secrets, in.Pwd)
		}
		var a answer
		var ok bool
		switch op % 3 {
		case 0:
			a, ok = k.do("POST", "/certificates/"+pathName(name)+"/import", body)
		case 1:
			a, ok = k.do("PATCH", "/certificates/existing/policy", body)
		default:
			path := "/certificates/existing"
			if name != "" {
				path += "/" + pathName(name)
			}
			a, ok = k.do("PATCH", path, body)
		}
		if !ok {
			return
		}
		check(t, a, secrets...)
		if a.status != 200 || op%3 != 0 {
			return
		}
		defer k.purge("certificates", name)
		if bytes.Contains(a.body, []byte("PRIVATE KEY")) {
			t.Fatalf("the import's answer carries a private key")
		}
		var out certOut
		if err := json.Unmarshal(a.body, &out); err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(out.CER)
		if err != nil {
			t.Fatalf("imported a certificate whose cer does not parse: %v", err)
		}
		sum := sha1.Sum(c.Raw)
		if out.X5T != b64url(sum[:]) {
			t.Fatalf("x5t %s is not the SHA-1 of cer", out.X5T)
		}
		got := k.mustDo(t, "GET", "/certificates/"+pathName(name), "", 200)
		var back certOut
		if json.Unmarshal(got.body, &back) != nil || !bytes.Equal(back.CER, out.CER) {
			t.Fatalf("the certificate reads back as %s", got.body)
		}
	})
}

// FuzzRestore sends arbitrary restore bodies for secrets, keys and
// certificates: genuine backups, tampered ones (flipped, truncated,
// extended, of another kind), and anything else. Only a backup the
// installation made opens, into the object it was made of; every other
// blob is refused with Azure's error, never a 500.
func FuzzRestore(f *testing.F) {
	raw, err := os.ReadFile(backupsFile)
	if err != nil {
		f.Fatal(err)
	}
	var genuine map[string][]genuineBackup
	if err := json.Unmarshal(raw, &genuine); err != nil {
		f.Fatal(err)
	}
	k := newKV(f)
	kinds := []string{"secrets", "keys", "certificates"}
	f.Fuzz(func(t *testing.T, which byte, body string) {
		kind := kinds[int(which)%len(kinds)]
		a, ok := k.do("POST", "/"+kind+"/restore", body)
		if !ok {
			return
		}
		check(t, a)
		if a.status != 200 {
			return
		}
		var in blobIO
		json.Unmarshal([]byte(body), &in)
		blob, err := decodeBlob(in.Value)
		i := slices.IndexFunc(genuine[kind], func(g genuineBackup) bool { return bytes.Equal(g.Blob, blob) })
		if err != nil || i < 0 {
			t.Fatalf("restored a %d-byte %s blob that is not a backup this installation made", len(blob), kind)
		}
		name := genuine[kind][i].Name
		defer k.purge(kind, name)
		if !strings.Contains(string(a.body), "/"+kind+"/"+name) && !strings.Contains(string(a.body), "/keys/"+name) {
			t.Fatalf("restored %s, answered %s", name, a.body)
		}
	})
}
