package nodeagent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// selfSigned returns a P-256 certificate and key (P-256: RSA key
// generation would dominate the test's time).
func selfSigned(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sp"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, der
}

func pemOf(t testing.TB, der []byte, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})...)
}

// A service principal's credential comes from the Secret its
// clientPassword names, in the identity's own namespace.
func TestServicePrincipal(t *testing.T) {
	cert, key, der := selfSigned(t)
	_, otherKey, _ := selfSigned(t)
	p12, err := pkcs12.Modern.Encode(key, cert, nil, "p12-password")
	if err != nil {
		t.Fatal(err)
	}
	secret := func(name string, data map[string]string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name}, Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	for name, c := range map[string]struct {
		typ       podidentity.IdentityType
		client    string
		secretNS  string
		secret    *corev1.Secret
		secretErr error
		want      want
	}{
		"client secret":               {typ: podidentity.ServicePrincipal, client: spClient, secret: secret("sp", map[string]string{"clientSecret": spSecret + "\n"}), want: want{status: 200, client: spClient}},
		"wrong client secret":         {typ: podidentity.ServicePrincipal, client: spClient, secret: secret("sp", map[string]string{"clientSecret": "wrong"}), want: want{status: 403, code: "invalid_client", desc: "AADSTS7000215"}},
		"no clientSecret key":         {typ: podidentity.ServicePrincipal, client: spClient, secret: secret("sp", map[string]string{"password": "x"}), want: want{status: 400, code: "invalid_request", desc: "has no clientSecret key"}},
		"Secret in its namespace":     {typ: podidentity.ServicePrincipal, client: spClient, secretNS: "team-a", secret: secret("sp", map[string]string{"clientSecret": spSecret}), want: want{status: 200, client: spClient}},
		"Secret of another namespace": {typ: podidentity.ServicePrincipal, client: spClient, secretNS: "kube-system", secret: secret("sp", map[string]string{"clientSecret": spSecret}), want: want{status: 403, code: "unauthorized_client", desc: "in another namespace"}},
		"Secret missing":              {typ: podidentity.ServicePrincipal, client: spClient, secretErr: apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, "sp"), want: want{status: 400, code: "invalid_request", desc: "does not exist"}},
		"Secret forbidden":            {typ: podidentity.ServicePrincipal, client: spClient, secretErr: apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "sp", nil), want: want{status: 403, code: "unauthorized_client", desc: "grant it get on secrets"}},
		"Secret unreadable":           {typ: podidentity.ServicePrincipal, client: spClient, secretErr: apierrors.NewServiceUnavailable("etcd"), want: want{status: 503, code: "temporarily_unavailable", retryAfter: 2}},
		"certificate PEM":             {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"certificate": string(pemOf(t, der, key))}), want: want{status: 200, client: certClient}},
		"certificate PKCS#12":         {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"certificate": string(p12), "password": "p12-password"}), want: want{status: 200, client: certClient}},
		"PKCS#12, wrong password":     {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"certificate": string(p12), "password": "nope"}), want: want{status: 400, code: "invalid_request", desc: "not a PKCS#12 file that opens with its password"}},
		"key of another certificate":  {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"certificate": string(pemOf(t, der, otherKey))}), want: want{status: 400, code: "invalid_request", desc: "does not belong to its certificate"}},
		"certificate without key":     {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}), want: want{status: 400, code: "invalid_request", desc: "needs a CERTIFICATE and a PRIVATE KEY"}},
		"no certificate key":          {typ: podidentity.ServicePrincipalCertificate, client: certClient, secret: secret("sp", map[string]string{"clientSecret": "x"}), want: want{status: 400, code: "invalid_request", desc: "has no certificate key"}},
		"identity missing fields":     {typ: podidentity.ServicePrincipal, want: want{status: 400, code: "invalid_request", desc: "needs clientID, tenantID and clientPassword"}},
		"unknown identity type":       {typ: 7, client: spClient, want: want{status: 400, code: "invalid_request", desc: "has type 7"}},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			id := podidentity.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "sp"},
				Spec: podidentity.AzureIdentitySpec{Type: c.typ, ClientID: c.client, TenantID: tenant, ClientPassword: corev1.SecretReference{Name: "sp", Namespace: c.secretNS}}}
			if c.client == "" {
				id.Spec.TenantID = ""
			}
			cl.snap.Identities = []podidentity.AzureIdentity{id}
			cl.snap.Bindings = []podidentity.AzureIdentityBinding{binding("team-a", "sp", "sp", "web", 0)}
			if c.secret != nil {
				c.secret.Namespace = cmpOr(c.secretNS, "team-a")
				cl.secrets[c.secret.Namespace+"/sp"] = c.secret
			}
			cl.secretErr = c.secretErr
			w := newWorld(t, cl, nil)
			w.auth.cert = cert
			check(t, serve(t, w.agent.Handler(), call{target: imds(), header: bearerOf(podToken("team-a-web"))}), c.want)
			for _, v := range []string{spSecret, "p12-password", "BEGIN PRIVATE KEY"} {
				if strings.Contains(w.log.String(), v) {
					t.Errorf("the log holds a credential (%q)", v)
				}
			}
		})
	}
}

// Each certificate request carries a fresh assertion: the authority
// refuses a replayed one.
func TestAssertionsAreFresh(t *testing.T) {
	cert, key, der := selfSigned(t)
	cl := newCluster()
	cl.snap.Identities = []podidentity.AzureIdentity{{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "sp"},
		Spec: podidentity.AzureIdentitySpec{Type: podidentity.ServicePrincipalCertificate, ClientID: certClient, TenantID: tenant, ClientPassword: corev1.SecretReference{Name: "sp"}}}}
	cl.snap.Bindings = []podidentity.AzureIdentityBinding{binding("team-a", "sp", "sp", "web", 0)}
	cl.secrets["team-a/sp"] = &corev1.Secret{Data: map[string][]byte{"certificate": pemOf(t, der, key)}}
	w := newWorld(t, cl, nil)
	w.auth.cert = cert
	for _, res := range []string{vault, "https://other.example"} {
		check(t, serve(t, w.agent.Handler(), call{target: imds("resource", res), header: bearerOf(podToken("team-a-web"))}), want{status: 200, client: certClient, resource: res})
	}
	reqs := w.auth.requests()
	if len(reqs) != 2 || reqs[0]["client_assertion"] == reqs[1]["client_assertion"] {
		t.Fatalf("%d requests; want two with different assertions", len(reqs))
	}
	if reqs[0]["client_assertion_type"] != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || reqs[0]["client_secret"] != "" {
		t.Errorf("form %v: want a jwt-bearer assertion and no secret", reqs[0])
	}
}

// Managed identities are requested with the agent credential acting for
// them, and their tokens are cached per identity and resource.
func TestManagedTokens(t *testing.T) {
	w := newWorld(t, newCluster(), nil)
	get := func(target string, hdr map[string]string) {
		t.Helper()
		if got := serve(t, w.agent.Handler(), call{target: target, header: hdr}); got.status != 200 {
			t.Fatalf("%s: %d %s", target, got.status, got.raw)
		}
	}
	get(imds(), metadata)
	get(imds(), metadata)                                    // the cache
	get(imds("resource", vault+"/.default"), metadata)       // the same resource
	get(imds("client_id", "vm-client"), metadata)            // another identity
	get(imds("resource", "https://other.example"), metadata) // another resource
	get(imds(), bearerOf(podToken("team-a-web")))            // a pod's
	get(imds(), bearerOf(podToken("team-a-web")))
	reqs := w.auth.requests()
	type form struct{ client, secret, mi, res, scope string }
	var got []form
	for _, r := range reqs {
		got = append(got, form{r["client_id"], r["client_secret"], r["mi_client_id"], r["mi_res_id"], r["scope"]})
	}
	wantForms := []form{
		{agentClient, agentSecret, "sys-client", "", vault + "/.default"},
		{agentClient, agentSecret, "", resID("vm"), vault + "/.default"},
		{agentClient, agentSecret, "sys-client", "", "https://other.example/.default"},
		{agentClient, agentSecret, "bound-client", "", vault + "/.default"},
	}
	if len(got) != len(wantForms) {
		t.Fatalf("authority requests %+v, want %+v", got, wantForms)
	}
	for i := range got {
		if got[i] != wantForms[i] {
			t.Errorf("request %d: %+v, want %+v", i, got[i], wantForms[i])
		}
	}
	for _, r := range reqs {
		if r["grant_type"] != "client_credentials" {
			t.Errorf("grant_type %q", r["grant_type"])
		}
	}
}
