package sdk

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/oidctest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

func manage(t *testing.T, env *testserver.Env, method, path string, in, out any) {
	t.Helper()
	if err := env.Client.Manage(context.Background(), method, path, in, out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
}

func grantSecrets(t *testing.T, env *testserver.Env, objectID string, perms ...string) {
	t.Helper()
	manage(t, env, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: objectID, Secrets: &perms}, nil)
}

func clientOptions(t *testing.T, env *testserver.Env) azcore.ClientOptions {
	hc, err := httpclient.New(env.Admin.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	return azcore.ClientOptions{Transport: hc, Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: env.Admin.AuthorityHost}}
}

func secretsWith(t *testing.T, env *testserver.Env, cred azcore.TokenCredential) *azsecrets.Client {
	c, err := azsecrets.NewClient(env.Admin.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: env.Client.HTTP}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func selfSigned(t *testing.T, cn string) (*x509.Certificate, *rsa.PrivateKey, string) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func seed(t *testing.T, env *testserver.Env, name, value string) {
	if _, err := adminClient(t, env).SetSecret(context.Background(), name, azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil); err != nil {
		t.Fatal(err)
	}
}

// denied asserts a 403 with innererror inner whose message names the caller.
func denied(t *testing.T, err error, inner, objectID string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 403 {
		t.Fatalf("want 403, got %v", err)
	}
	var body kvError
	json.NewDecoder(re.RawResponse.Body).Decode(&body)
	if body.Error.Code != "Forbidden" || body.Error.InnerError == nil || body.Error.InnerError.Code != inner || !strings.Contains(body.Error.Message, objectID) {
		t.Fatalf("403 body %+v; want Forbidden/%s naming %s", body.Error, inner, objectID)
	}
}

func TestClientCertificateCredential(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	seed(t, env, "app-secret", "from-cert")
	cert, key, certPEM := selfSigned(t, "app1")
	var sp mgmthttp.SPOut
	manage(t, env, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "cert-app", CertificatePEM: certPEM}, &sp)
	cred, err := azidentity.NewClientCertificateCredential(env.State.TenantID, sp.AppID, []*x509.Certificate{cert}, key,
		&azidentity.ClientCertificateCredentialOptions{ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	c := secretsWith(t, env, cred)
	// Authenticated, but no permission yet: the exact 403.
	_, err = c.GetSecret(context.Background(), "app-secret", "", nil)
	denied(t, err, "AccessDenied", sp.ObjectID)
	grantSecrets(t, env, sp.ObjectID, "get")
	got, err := c.GetSecret(context.Background(), "app-secret", "", nil)
	if err != nil || *got.Value != "from-cert" {
		t.Fatalf("GetSecret with a certificate credential = %v", client.Describe(err))
	}
	// A certificate that is not registered is refused at the authority.
	other, otherKey, _ := selfSigned(t, "intruder")
	bad, _ := azidentity.NewClientCertificateCredential(env.State.TenantID, sp.AppID, []*x509.Certificate{other}, otherKey,
		&azidentity.ClientCertificateCredentialOptions{ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true})
	_, err = secretsWith(t, env, bad).GetSecret(context.Background(), "app-secret", "", nil)
	if err == nil || !strings.Contains(client.Describe(err), "not registered") {
		t.Fatalf("unregistered certificate: %v", client.Describe(err))
	}
}

// federatedEnv starts a server that trusts a test OIDC issuer, and a managed
// identity that trusts the issuer's service account default/app.
func federatedEnv(t *testing.T) (*testserver.Env, *oidctest.Issuer, mgmthttp.IdentityOut) {
	iss := oidctest.New(t)
	roots := x509.NewCertPool()
	roots.AddCert(iss.Server.Certificate())
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true})
	var mi mgmthttp.IdentityOut
	manage(t, env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "app-identity", ResourceGroup: "apps"}, &mi)
	manage(t, env, "PUT", "identities/apps/app-identity/federated-credentials/k8s", federation.Credential{
		Issuer: iss.URL, Subject: "system:serviceaccount:default:app", Audiences: []string{federation.DefaultAudience}}, nil)
	grantSecrets(t, env, mi.PrincipalID, "get")
	seed(t, env, "wi-secret", "from-workload")
	return env, iss, mi
}

func TestWorkloadIdentityCredential(t *testing.T) {
	env, iss, mi := federatedEnv(t)
	if !strings.HasPrefix(mi.ID, "/subscriptions/"+env.Subscription+"/resourcegroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-identity") &&
		!strings.HasPrefix(mi.ID, "/subscriptions/"+env.Subscription+"/resourceGroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-identity") {
		t.Fatalf("identity id %s", mi.ID)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(iss.Token(t, "system:serviceaccount:default:app", []string{federation.DefaultAudience}, time.Time{}, time.Time{})), 0o600)
	cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientID: mi.ClientID, TenantID: env.State.TenantID, TokenFilePath: tokenFile,
		ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := secretsWith(t, env, cred).GetSecret(context.Background(), "wi-secret", "", nil)
	if err != nil || *got.Value != "from-workload" {
		t.Fatalf("GetSecret with WorkloadIdentityCredential = %v", client.Describe(err))
	}
}

func TestClientAssertionCredential(t *testing.T) {
	env, iss, mi := federatedEnv(t)
	subject := "system:serviceaccount:default:app"
	cred, err := azidentity.NewClientAssertionCredential(env.State.TenantID, mi.ClientID, func(context.Context) (string, error) {
		return iss.Token(t, subject, []string{federation.DefaultAudience}, time.Time{}, time.Time{}), nil
	}, &azidentity.ClientAssertionCredentialOptions{ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := secretsWith(t, env, cred).GetSecret(context.Background(), "wi-secret", "", nil); err != nil || *got.Value != "from-workload" {
		t.Fatalf("GetSecret with ClientAssertionCredential = %v", client.Describe(err))
	}
	// Another service account's token does not pass for this identity. The
	// error names the presented subject but never the trusted ones: a caller
	// with a rejected token must not learn what the identity trusts.
	subject = "system:serviceaccount:default:other"
	cred2, _ := azidentity.NewClientAssertionCredential(env.State.TenantID, mi.ClientID, func(context.Context) (string, error) {
		return iss.Token(t, subject, []string{federation.DefaultAudience}, time.Time{}, time.Time{}), nil
	}, &azidentity.ClientAssertionCredentialOptions{ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true})
	_, err = secretsWith(t, env, cred2).GetSecret(context.Background(), "wi-secret", "", nil)
	msg := client.Describe(err)
	if err == nil || !strings.Contains(msg, "subject") || !strings.Contains(msg, "default:other") || strings.Contains(msg, "default:app") {
		t.Fatalf("wrong subject: %s", msg)
	}
}

// tokenFor posts a client-credentials grant and returns the decoded answer.
func tokenFor(t *testing.T, env *testserver.Env, form url.Values) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := env.Client.HTTP.PostForm(env.Endpoints.AuthorityURL()+"/"+env.State.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body, resp.Header
}

func claimsOf(t *testing.T, raw string) map[string]any {
	tok, err := jwt.ParseSigned(raw, nil)
	if err == nil {
		var c map[string]any
		tok.UnsafeClaimsWithoutVerification(&c)
		return c
	}
	parts := strings.Split(raw, ".")
	var c map[string]any
	b, _ := base64RawURL(parts[1])
	json.Unmarshal(b, &c)
	return c
}

func TestNodeAgentActsForManagedIdentities(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	var pool mgmthttp.NodePoolOut
	manage(t, env, "POST", "node-pools", mgmthttp.CreateIdentityIn{Name: "pool1", ResourceGroup: "nodes"}, &pool)
	var mi, other mgmthttp.IdentityOut
	manage(t, env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "pod-identity", ResourceGroup: "apps"}, &mi)
	manage(t, env, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "not-assigned", ResourceGroup: "apps"}, &other)
	manage(t, env, "POST", "node-pools/nodes/pool1/identities", mgmthttp.AssignIn{Identities: []string{mi.ID}}, nil)
	grantSecrets(t, env, mi.PrincipalID, "get")
	seed(t, env, "pod-secret", "for-the-pod")

	base := url.Values{"grant_type": {"client_credentials"}, "client_id": {pool.AgentClientID}, "client_secret": {pool.AgentSecret},
		"scope": {env.Endpoints.Resource() + "/.default"}}
	with := func(k, v string) url.Values {
		f := url.Values{}
		for key, vals := range base {
			f[key] = vals
		}
		f.Set(k, v)
		return f
	}
	for sel, val := range map[string]string{"mi_client_id": mi.ClientID, "mi_object_id": mi.PrincipalID, "mi_res_id": mi.ID} {
		status, body, _ := tokenFor(t, env, with(sel, val))
		if status != 200 {
			t.Fatalf("%s: %d %v", sel, status, body)
		}
		c := claimsOf(t, body["access_token"].(string))
		if c["oid"] != mi.PrincipalID || c["appid"] != mi.ClientID || c["azp"] != mi.ClientID || c["tid"] != env.State.TenantID || c["xms_mirid"] != mi.ID {
			t.Fatalf("%s: token claims %v are not the managed identity's", sel, c)
		}
		// The token reads as the identity.
		resp, e := raw(t, env, "GET", "/secrets/pod-secret?api-version=7.6", body["access_token"].(string), "")
		if resp.StatusCode != 200 {
			t.Fatalf("%s: read as the identity: %d %s", sel, resp.StatusCode, e.Error.Message)
		}
	}
	// The pool's own system-assigned identity.
	status, body, _ := tokenFor(t, env, with("mi_res_id", pool.ID))
	if status != 200 || claimsOf(t, body["access_token"].(string))["oid"] != pool.SystemAssigned.PrincipalID {
		t.Fatalf("system-assigned identity: %d %v", status, body)
	}
	// An identity the pool was not assigned: refused, and the reason names the role.
	status, body, _ = tokenFor(t, env, with("mi_client_id", other.ClientID))
	if status != 403 || !strings.Contains(body["error_description"].(string), "Managed Identity Operator") {
		t.Fatalf("unassigned identity: %d %v", status, body)
	}
	// A client that is no node agent cannot act for anyone.
	var sp mgmthttp.SPOut
	manage(t, env, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "plain"}, &sp)
	f := url.Values{"grant_type": {"client_credentials"}, "client_id": {sp.AppID}, "client_secret": {sp.Password},
		"scope": {env.Endpoints.Resource() + "/.default"}, "mi_client_id": {mi.ClientID}}
	if status, _, _ := tokenFor(t, env, f); status != 403 {
		t.Fatalf("plain principal acting for an identity: %d", status)
	}
	// A managed identity has no secret to log in with.
	f = url.Values{"grant_type": {"client_credentials"}, "client_id": {mi.ClientID}, "client_secret": {"guess"}, "scope": {env.Endpoints.Resource() + "/.default"}}
	if status, body, _ := tokenFor(t, env, f); status != 401 || !strings.Contains(body["error_description"].(string), "managed identity") {
		t.Fatalf("secret login as a managed identity: %d %v", status, body)
	}
}
