package azparams

import (
	"encoding/json"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/cofferhq/coffer/internal/node/atomicdir"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

// The objects parameters of the seed articles' SecretProviderClasses,
// comments and all, and of the Azure provider's documented forms.
var objectsSeeds = map[string]string{
	"articles-aliases": `array:
  - |
    objectName: secret1
    objectType: secret              # object types: secret, key, or cert
    objectAlias: SECRET_1           # Secret names can only conta alphanumeric characters and dashes.
    objectVersion: ""               # [OPTIONAL] object versions, default to latest if empty
  - |
    objectName: secret2
    objectType: secret
    objectAlias: SECRET_2
    objectVersion: ""
`,
	"articles-single": "array:\n  - |\n    objectName: secret-425\n    objectType: secret\n",
	"versioned":       "array:\n  - |\n    objectName: db-password\n    objectAlias: db-password\n    objectType: secret\n    objectVersion: 3f2a9c1d8e7b4a60b1c2d3e4f5a6b7c8\n",
	"cert-key-pfx": `array:
  - |
    objectName: web-tls
    objectType: cert
    objectAlias: tls.crt
  - |
    objectName: web-tls
    objectType: key
    objectAlias: tls.key
  - |
    objectName: web-tls
    objectType: secret
    objectFormat: pfx
    objectEncoding: base64
    objectAlias: tls.pfx
    filePermission: "0440"
`,
	"history":         "array:\n  - |\n    objectName: app-secret\n    objectType: secret\n    objectVersion: latest\n    objectVersionHistory: 5\n    optional: true\n",
	"hex-utf8":        "array:\n  - |\n    objectName: blob\n    objectType: secret\n    objectEncoding: hex\n  - |\n    objectName: text\n    objectType: secret\n    objectEncoding: utf-8\n    filePermission: \"0600\"\n",
	"flow-style":      `{array: ["objectName: a\nobjectType: secret", "{objectName: b, objectType: key, objectAlias: keys/b.pem}"]}`,
	"traversal":       "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: ../../etc/passwd\n",
	"absolute":        "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: /etc/shadow\n",
	"nul":             "array:\n  - \"objectName: a\\nobjectType: secret\\nobjectAlias: \\\"a\\\\0b\\\"\"\n",
	"writer-name":     "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: ..data\n",
	"long-alias":      "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: " + strings.Repeat("x", 300) + "\n",
	"duplicate-files": "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: secret\n    objectAlias: a\n",
	"bad-fields":      "array:\n  - |\n    objectName: a\n    objectType: blob\n    objectFormat: der\n    filePermission: \"0999\"\n    objectVersionHistory: -1\n",
	"not-yaml":        "array: [\n",
	"empty-array":     "array: []\n",
}

const tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"

// saTokens is the volume attribute kubelet sets from the CSIDriver's
// tokenRequests.
const saTokens = `{"api://AzureADTokenExchange":{"token":"eyJhbGciOiJSUzI1NiIsImtpZCI6IjRhZTcxIn0.eyJhdWQiOlsiYXBpOi8vQXp1cmVBRFRva2VuRXhjaGFuZ2UiXSwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6d29ya2xvYWQifQ.c2lnbmF0dXJl","expirationTimestamp":"2026-12-01T13:00:00Z"}}`

// attrsOf is a mount request's attributes: the class's parameters, then
// the pod information kubelet adds.
func attrsOf(params map[string]string) string {
	m := map[string]string{
		KeyPodName: "web-7d9f8b6c5-x2x4k", KeyPodNamespace: "default", KeyPodUID: "0b8f7e52-3c6f-4c59-9d3a-8f6f1d1c2b3a",
		KeyServiceAccount: "workload", "secretProviderClass": "azure-kvname",
	}
	for k, v := range params {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestSeedCorpus(t *testing.T) {
	fuzzseed.Corpus(t, "FuzzParseObjects", func(*testing.T) []fuzzseed.Seed {
		var out []fuzzseed.Seed
		for name, raw := range objectsSeeds {
			out = append(out, fuzzseed.S(name, raw, uint16(0o644)))
		}
		return append(out, fuzzseed.S("mode-0", objectsSeeds["versioned"], uint16(0)), fuzzseed.S("mode-setuid", objectsSeeds["versioned"], uint16(0o4755)))
	})
	fuzzseed.Corpus(t, "FuzzParse", func(*testing.T) []fuzzseed.Seed {
		objs := objectsSeeds["articles-aliases"]
		sp := `{"clientid":"5e3f2c1a-9b8d-4c7e-a6f5-1d2c3b4a5e6f","clientsecret":"Qx8~Zr.V3nLp_2sT9yWc-4hJkM6bNdF1aGe"}`
		return []fuzzseed.Seed{
			fuzzseed.S("vm-identity", attrsOf(map[string]string{"usePodIdentity": "false", "useVMManagedIdentity": "true", "userAssignedIdentityID": "9c6b4f2e-1d3a-4e5b-8c7d-6f5e4d3c2b1a",
				"keyvaultName": "kvname", "cloudName": "", "objects": objs, "tenantId": tenant}), "", "420"),
			fuzzseed.S("pod-identity", attrsOf(map[string]string{"usePodIdentity": "true", "keyvaultName": "nf425csi", "objects": objectsSeeds["articles-single"], "tenantId": tenant}), "null", "420"),
			fuzzseed.S("workload-identity", attrsOf(map[string]string{"clientID": "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b", "keyvaultName": "demo", "objects": objectsSeeds["cert-key-pfx"],
				"tenantID": tenant, KeyServiceAcctTokens: saTokens, "lastKnownGood": "true"}), "", "420"),
			fuzzseed.S("service-principal", attrsOf(map[string]string{"keyvaultName": "demo", "objects": objectsSeeds["versioned"], "tenantId": tenant}), sp, "420"),
			fuzzseed.S("vault-url", attrsOf(map[string]string{"vaultURL": "https://demo.vault.coffer.example:8443/", "objects": objectsSeeds["history"], "tenantId": tenant}), sp, "256"),
			fuzzseed.S("sp-mixed-case", attrsOf(map[string]string{"keyvaultName": "demo", "objects": objectsSeeds["hex-utf8"], "tenantId": tenant}), `{"ClientID":"app","CLIENTSECRET":"  s3cr3t-value  "}`, ""),
			fuzzseed.S("no-identity", attrsOf(map[string]string{"keyvaultName": "demo", "objects": objs, "tenantId": tenant}), "", "420"),
			fuzzseed.S("both-identities", attrsOf(map[string]string{"usePodIdentity": "true", "useVMManagedIdentity": "true", "keyvaultName": "demo", "objects": objs, "tenantId": tenant}), "", "420"),
			fuzzseed.S("bad-tokens", attrsOf(map[string]string{"clientID": "x", "keyvaultName": "demo", "objects": objs, "tenantId": tenant, KeyServiceAcctTokens: "{not json"}), "", "420"),
			fuzzseed.S("bad-secrets", attrsOf(map[string]string{"keyvaultName": "demo", "objects": objs, "tenantId": tenant}), `{"clientid":"a","clientsecret":"Qx8~Zr.V3nLp_2sT9yWc`, "420"),
			fuzzseed.S("bad-vault", attrsOf(map[string]string{"keyvaultName": "kv_name!", "objects": objs, "tenantId": tenant}), sp, "420"),
			fuzzseed.S("bad-permission", attrsOf(map[string]string{"keyvaultName": "demo", "objects": objs, "tenantId": tenant}), sp, "0644"),
			fuzzseed.S("lkg-pod", attrsOf(map[string]string{"usePodIdentity": "true", "lastKnownGood": "true", "keyvaultName": "demo", "objects": objs, "tenantId": tenant}), "", "420"),
			fuzzseed.S("not-a-map", `["keyvaultName","demo"]`, "", ""),
		}
	})
}

// validFileName is what a file name from the objects parameter must be,
// written out independently: what the atomic writer accepts as a
// top-level entry or a path below one.
func validFileName(name string) error { return atomicdir.ValidatePath(name) }

// checkObjects asserts what every accepted objects list must satisfy.
func checkObjects(t *testing.T, objs []Object) {
	t.Helper()
	if len(objs) == 0 {
		t.Fatal("accepted an empty objects list")
	}
	files := map[string]bool{}
	for _, o := range objs {
		if err := validFileName(o.FileName()); err != nil {
			t.Fatalf("accepted file name %q, which the volume writer refuses: %v", o.FileName(), err)
		}
		if files[o.FileName()] {
			t.Fatalf("two objects write %q", o.FileName())
		}
		files[o.FileName()] = true
		if o.Mode&^fs.ModePerm != 0 {
			t.Fatalf("object %q has mode %o, beyond the permission bits", o.Name, o.Mode)
		}
		switch o.Type {
		case TypeSecret, TypeKey, TypeCert:
		default:
			t.Fatalf("accepted objectType %q", o.Type)
		}
		if o.Name == "" || o.History < 0 || o.History > 100 || strings.EqualFold(o.Version, "latest") {
			t.Fatalf("accepted %+v", o)
		}
	}
}

// FuzzParseObjects checks the objects YAML. A refusal wraps ErrInvalid; an
// accepted list writes only files the volume writer accepts, each once,
// with permission-only modes, and survives a round trip through the same
// YAML shape unchanged.
func FuzzParseObjects(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw string, mode uint16) {
		defaultMode := fs.FileMode(mode)
		objs, err := ParseObjects(raw, defaultMode)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refusal %v does not wrap ErrInvalid", err)
			}
			return
		}
		if defaultMode&^fs.ModePerm != 0 {
			// Parse refuses such a permission; ParseObjects trusts its caller.
			return
		}
		checkObjects(t, objs)
		var outer struct {
			Array []string `yaml:"array"`
		}
		for _, o := range objs {
			b, err := yaml.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			outer.Array = append(outer.Array, string(b))
		}
		again, err := yaml.Marshal(outer)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseObjects(string(again), defaultMode)
		if err != nil || !reflect.DeepEqual(back, objs) {
			t.Fatalf("round trip:\n%s\ngave %+v, %v\nwant %+v", again, back, err, objs)
		}
	})
}

// FuzzParse checks every parameter the provider reads from a mount
// request. A refusal wraps ErrInvalid and never carries the service
// principal's secret or the pod's token; an accepted mount names a vault
// and a tenant, one identity with what that identity needs, and objects
// as FuzzParseObjects requires.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, attributes, secrets, permission string) {
		m, err := Parse(attributes, secrets, permission)
		var sensitive []string
		var sec map[string]string
		if json.Unmarshal([]byte(secrets), &sec) == nil {
			for k, v := range sec {
				if strings.EqualFold(k, "clientsecret") {
					sensitive = append(sensitive, strings.TrimSpace(v))
				}
			}
		}
		var attrs map[string]string
		if json.Unmarshal([]byte(attributes), &attrs) == nil {
			var tokens map[string]struct {
				Token string `json:"token"`
			}
			if json.Unmarshal([]byte(strings.TrimSpace(attrs[KeyServiceAcctTokens])), &tokens) == nil {
				for _, tok := range tokens {
					sensitive = append(sensitive, tok.Token)
				}
			}
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refusal %v does not wrap ErrInvalid", err)
			}
			for _, s := range sensitive {
				if len(s) >= 6 && strings.Contains(err.Error(), s) {
					t.Fatalf("the refusal carries a secret: %v", err)
				}
			}
			return
		}
		if m.VaultName == "" && m.VaultURL == "" || m.TenantID == "" {
			t.Fatalf("accepted a mount without a vault or a tenant: %+v", m)
		}
		switch a := m.Auth; a.Mode {
		case PodIdentity, VMManagedIdentity:
		case WorkloadIdentity:
			if a.ClientID == "" || a.Token == "" {
				t.Fatalf("workload identity without a client id or a token: %+v", a)
			}
		case ServicePrincipal:
			if a.ClientID == "" || a.Secret == "" {
				t.Fatalf("a service principal without a client id or a secret")
			}
		default:
			t.Fatalf("accepted auth mode %d", a.Mode)
		}
		if m.LastKnownGood && m.Auth.Mode != WorkloadIdentity && m.Auth.Mode != ServicePrincipal {
			t.Fatalf("lastKnownGood with %s", m.Auth.Mode)
		}
		checkObjects(t, m.Objects)
	})
}
