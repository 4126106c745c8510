package azparams

import (
	"errors"
	"strings"
	"testing"
)

const obj = "array:\n  - |\n    objectName: a\n    objectType: secret\n"

func attrs(extra ...string) string {
	m := `{"keyvaultName":"demo","objects":` + quote(obj)
	for i := 0; i < len(extra); i += 2 {
		m += `,"` + extra[i] + `":` + quote(extra[i+1])
	}
	return m + "}"
}

func quote(s string) string { return `"` + strings.NewReplacer(`"`, `\"`, "\n", `\n`).Replace(s) + `"` }

func TestParseAuthPrecedenceAndTenant(t *testing.T) {
	sp := `{"ClientID":"app","CLIENTSECRET":"s"}`
	m, err := Parse(attrs("tenantId", "old", "tenantID", "new"), sp, "420")
	if err != nil || m.TenantID != "new" || m.Auth.Mode != ServicePrincipal || m.Auth.ClientID != "app" {
		t.Fatalf("%+v %v", m, err)
	}
	tokens := `{"api://AzureADTokenExchange":{"token":"tok","expirationTimestamp":"x"}}`
	m, err = Parse(attrs("tenantId", "t", "clientID", "mi", "csi.storage.k8s.io/serviceAccount.tokens", tokens), sp, "")
	if err != nil || m.Auth.Mode != WorkloadIdentity || m.Auth.Token != "tok" {
		t.Fatalf("workload identity wins over the secret: %+v %v", m.Auth, err)
	}
	m, err = Parse(attrs("tenantId", "t", "useVMManagedIdentity", "true", "userAssignedIdentityID", "uai", "clientID", "mi"), "", "")
	if err != nil || m.Auth.Mode != VMManagedIdentity || m.Auth.ClientID != "uai" {
		t.Fatalf("VM identity wins over workload identity: %+v %v", m.Auth, err)
	}
	m, err = Parse(attrs("tenantId", "t", "usePodIdentity", "True"), "", "")
	if err != nil || m.Auth.Mode != PodIdentity {
		t.Fatalf("pod identity: %+v %v", m.Auth, err)
	}
}

func TestParseRefusals(t *testing.T) {
	sp := `{"clientid":"a","clientsecret":"b"}`
	for label, c := range map[string]struct{ attrs, secrets, perm, want string }{
		"no tenant":          {attrs(), sp, "", "tenantId"},
		"bad vault name":     {`{"keyvaultName":"a_b","tenantId":"t","objects":` + quote(obj) + `}`, sp, "", "keyvaultName"},
		"both identities":    {attrs("tenantId", "t", "usePodIdentity", "true", "useVMManagedIdentity", "true"), "", "", "both"},
		"bad bool":           {attrs("tenantId", "t", "usePodIdentity", "yes"), "", "", "usePodIdentity"},
		"no clientsecret":    {attrs("tenantId", "t"), `{"clientid":"a"}`, "", "clientsecret"},
		"no token":           {attrs("tenantId", "t", "clientID", "x"), "", "", "tokenRequests"},
		"bad permission":     {attrs("tenantId", "t"), sp, "1000", "permission"},
		"attributes not map": {`[]`, sp, "", "attributes"},
		"lastKnownGood bool": {attrs("tenantId", "t", "lastKnownGood", "maybe"), sp, "", "lastKnownGood"},
		"lastKnownGood pod":  {attrs("tenantId", "t", "usePodIdentity", "true", "lastKnownGood", "true"), "", "", "not with pod identity"},
		"lastKnownGood vm":   {attrs("tenantId", "t", "useVMManagedIdentity", "true", "lastKnownGood", "true"), "", "", "not with VM managed identity"},
	} {
		_, err := Parse(c.attrs, c.secrets, c.perm)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", label, err)
		}
	}
}

func TestParseObjects(t *testing.T) {
	objs, err := ParseObjects("array:\n  - |\n    objectName: a\n    objectType: secret   # a comment\n    objectAlias: dir/A\n    filePermission: \"0440\"\n  - |\n    objectName: k\n    objectType: key\n    objectVersionHistory: 3\n", 0o644)
	if err != nil || len(objs) != 2 || objs[0].FileName() != "dir/A" || objs[0].Mode != 0o440 || objs[1].Mode != 0o644 || objs[1].History != 3 {
		t.Fatalf("%+v %v", objs, err)
	}
	if objs, err := ParseObjects("array:\n  - |\n    objectName: a\n    objectType: secret\n    optional: true\n", 0o644); err != nil || !objs[0].Optional {
		t.Fatalf("optional: %+v %v", objs, err)
	}
	for label, raw := range map[string]string{
		"empty":             "",
		"empty array":       "array: []",
		"not a mapping":     "- a",
		"bad type":          "array:\n  - |\n    objectName: a\n    objectType: blob\n",
		"no name":           "array:\n  - |\n    objectType: secret\n",
		"absolute alias":    "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: /etc/x\n",
		"dotdot alias":      "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: a/../../b\n",
		"duplicate files":   "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: a\n    objectType: key\n",
		"bad perm":          "array:\n  - |\n    objectName: a\n    objectType: secret\n    filePermission: \"0900\"\n",
		"encoding for key":  "array:\n  - |\n    objectName: a\n    objectType: key\n    objectEncoding: base64\n",
		"bad format":        "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectFormat: der\n",
		"inner not yaml":    "array:\n  - \"objectName: [\"\n",
		"optional not bool": "array:\n  - |\n    objectName: a\n    objectType: secret\n    optional: maybe\n",
	} {
		if _, err := ParseObjects(raw, 0o644); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", label, err)
		}
	}
}
