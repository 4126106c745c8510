package nodeagent

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/node/podidentity"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/agenttest"
)

// selfSigned returns a certificate and its key, PEM-encoded.
func selfSigned(t testing.TB, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// AzureIdentity types 1 and 2: service principals whose credential the
// agent reads from a Secret of the identity's namespace.
func TestServicePrincipalIdentities(t *testing.T) {
	w := start(t)
	ctx := context.Background()
	agent := agenttest.Start(t, w.env, w.kube, w.node, agenttest.Options{})
	agenttest.Namespace(t, w.kube, "apps")
	agenttest.Namespace(t, w.kube, "other")
	get := []string{"get"}
	sp := func(name string) mgmthttp.SPOut {
		var out mgmthttp.SPOut
		if err := w.env.Client.Manage(ctx, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &out); err != nil {
			t.Fatal(err)
		}
		if err := w.env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: out.ObjectID, Secrets: &get}, nil); err != nil {
			t.Fatal(err)
		}
		return out
	}
	secretSP, certSP := sp("sp-secret"), sp("sp-cert")
	certPEM, keyPEM := selfSigned(t, "sp-cert")
	if err := w.env.Client.Manage(ctx, "POST", "service-principals/"+certSP.AppID+"/credentials", mgmthttp.CredentialsIn{CertificatePEM: string(certPEM)}, nil); err != nil {
		t.Fatal(err)
	}
	_, otherKey := selfSigned(t, "attacker")

	secret := func(ns, name string, data map[string][]byte) {
		t.Helper()
		if _, err := w.kube.Clientset.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	identity := func(ns, name string, typ podidentity.IdentityType, client, secretNS, secretName string) {
		t.Helper()
		id := podidentity.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: podidentity.AzureIdentitySpec{
			Type: typ, ClientID: client, TenantID: w.env.State.TenantID, ClientPassword: corev1.SecretReference{Name: secretName, Namespace: secretNS}}}
		if err := w.kc.Create(ctx, &id); err != nil {
			t.Fatal(err)
		}
		b := podidentity.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: podidentity.AzureIdentityBindingSpec{AzureIdentity: name, Selector: name}}
		if err := w.kc.Create(ctx, &b); err != nil {
			t.Fatal(err)
		}
	}
	secret("apps", "sp-secret", map[string][]byte{"clientSecret": []byte(secretSP.Password)})
	secret("apps", "sp-cert", map[string][]byte{"certificate": append(append([]byte{}, certPEM...), keyPEM...)})
	secret("apps", "sp-stolen", map[string][]byte{"certificate": append(append([]byte{}, certPEM...), otherKey...)})
	secret("other", "sp-secret", map[string][]byte{"clientSecret": []byte(secretSP.Password)})
	identity("apps", "by-secret", podidentity.ServicePrincipal, secretSP.AppID, "", "sp-secret")
	identity("apps", "by-cert", podidentity.ServicePrincipalCertificate, certSP.AppID, "apps", "sp-cert")
	identity("apps", "stolen-cert", podidentity.ServicePrincipalCertificate, certSP.AppID, "apps", "sp-stolen")
	identity("apps", "foreign-secret", podidentity.ServicePrincipal, secretSP.AppID, "other", "sp-secret")
	identity("apps", "missing-secret", podidentity.ServicePrincipal, secretSP.AppID, "", "nope")

	q := "api-version=2018-02-01&resource=" + url.QueryEscape(vaultResource(w))
	cases := map[string]struct {
		oid  string
		code int
		msg  string
	}{
		"by-secret":      {oid: secretSP.ObjectID, code: 200},
		"by-cert":        {oid: certSP.ObjectID, code: 200},
		"stolen-cert":    {code: 400, msg: "does not belong to its certificate"},
		"foreign-secret": {code: 403, msg: "in another namespace"},
		"missing-secret": {code: 400, msg: "does not exist"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			pod := agenttest.RunningPod(t, w.kube, "apps", name, "node-1", "", map[string]string{podidentity.BindingLabel: name})
			var code int
			var body map[string]string
			eventually(t, "an answer that is not a cache miss", func() bool {
				code, body, _ = agenttest.IMDS(t, agent.URL, "", q, agenttest.PodToken(t, w.kube, pod), true)
				return code != 404
			})
			if code != c.code || (c.oid != "" && claims(t, body["access_token"])["oid"] != c.oid) || !strings.Contains(body["error_description"], c.msg) {
				t.Fatalf("%d %v", code, body["error_description"])
			}
			if c.code == 200 {
				if code, v := w.readSecret(t, body["access_token"]); code != 200 || v != "s3cr3t-value" {
					t.Fatalf("vault read: %d", code)
				}
			}
		})
	}
	if log := agent.Log.String(); strings.Contains(log, secretSP.Password) || strings.Contains(log, "PRIVATE KEY") {
		t.Fatal("a service principal's credential reached the log")
	}
}
