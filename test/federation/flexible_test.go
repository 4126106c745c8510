// Package federation_test checks flexible federated credentials
// (claimsMatchingExpression) end to end: real service-account tokens from
// the TokenRequest API of a real kube-apiserver, exchanged by the Azure
// SDK's WorkloadIdentityCredential at a real Coffer server.
package federation_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/identity/federation"
	"github.com/cofferhq/coffer/internal/testing/kubetest"
	"github.com/cofferhq/coffer/internal/testing/syncbuf"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// One namespace-wide credential admits every service account of team-a,
// and no service account of any other namespace, including team-ab, whose
// name team-a is a prefix of.
func TestNamespaceWideCredential(t *testing.T) {
	kube := kubetest.Start(t, kubetest.Options{})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	log := &syncbuf.Buffer{}
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1, Log: log})
	ctx := context.Background()

	var mi mgmthttp.IdentityOut
	if err := env.Client.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "team-a", ResourceGroup: "apps"}, &mi); err != nil {
		t.Fatal(err)
	}
	const expression = "claims['sub'] matches 'system:serviceaccount:team-a:*'"
	if err := env.Client.Manage(ctx, "PUT", "identities/apps/team-a/federated-credentials/namespace", federation.Credential{
		Issuer: kube.Issuer, ClaimsMatchingExpression: &federation.Expression{Value: expression, LanguageVersion: 1},
		Audiences: []string{federation.DefaultAudience}}, nil); err != nil {
		t.Fatal(err)
	}
	perms := []string{"get"}
	if err := env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &perms}, nil); err != nil {
		t.Fatal(err)
	}
	admin, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetSecret(ctx, "team-a-db", azsecrets.SetSecretParameters{Value: to.Ptr("for-team-a")}, nil); err != nil {
		t.Fatal(err)
	}

	accounts := map[string][]string{"team-a": {"default", "app", "worker", "batch-job"}, "team-b": {"app"}, "team-ab": {"app"}, "default": {"team-a"}}
	for ns, names := range accounts {
		if _, err := kube.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && ns != "default" {
			t.Fatal(err)
		}
		for _, name := range names {
			if _, err := kube.Clientset.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	hc, err := httpclient.New(env.Admin.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	opts := azcore.ClientOptions{Transport: hc, Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: env.Admin.AuthorityHost}}
	// getAs reads the secret as ns/name, with the token the kubelet would
	// project for a workload identity pod.
	getAs := func(t *testing.T, ns, name string) error {
		tr, err := kube.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{federation.DefaultAudience}, ExpirationSeconds: to.Ptr[int64](3600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientID: mi.ClientID, TenantID: env.State.TenantID, TokenFilePath: file, ClientOptions: opts, DisableInstanceDiscovery: true})
		if err != nil {
			t.Fatal(err)
		}
		sc, err := azsecrets.NewClient(env.Admin.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: opts})
		if err != nil {
			t.Fatal(err)
		}
		got, err := sc.GetSecret(ctx, "team-a-db", "", nil)
		if err == nil && *got.Value != "for-team-a" {
			t.Fatalf("secret %q", *got.Value)
		}
		return err
	}
	for _, name := range accounts["team-a"] {
		if err := getAs(t, "team-a", name); err != nil {
			t.Errorf("team-a/%s is refused: %s", name, client.Describe(err))
		}
	}
	for _, who := range [][2]string{{"team-b", "app"}, {"team-ab", "app"}, {"default", "team-a"}} {
		err := getAs(t, who[0], who[1])
		if err == nil {
			t.Errorf("%s/%s, of another namespace, got team-a's secret", who[0], who[1])
			continue
		}
		// The caller learns its own subject, not what the identity trusts;
		// the operator finds that in the log, under the refusal's trace ID.
		msg := client.Describe(err)
		if sub := "system:serviceaccount:" + who[0] + ":" + who[1]; !strings.Contains(msg, "AADSTS70021") || !strings.Contains(msg, sub) {
			t.Errorf("%s/%s: the refusal does not name the subject %s: %s", who[0], who[1], sub, msg)
		}
		if strings.Contains(msg, "team-a:*") {
			t.Errorf("%s/%s: the refusal tells the caller what the identity trusts: %s", who[0], who[1], msg)
		}
		trace := traceRE.FindStringSubmatch(msg)
		if trace == nil {
			t.Errorf("%s/%s: no trace ID in the refusal: %s", who[0], who[1], msg)
			continue
		}
		if !logNames(log.String(), trace[1], "team-a:*") {
			t.Errorf("%s/%s: no log line of trace %s names the expression; the log:\n%s", who[0], who[1], trace[1], log.String())
		}
	}
}

var traceRE = regexp.MustCompile(`\(trace ID ([0-9a-f-]{36})\)`)

// logNames reports whether a line of the JSON log carries trace and want.
func logNames(log, trace, want string) bool {
	for line := range strings.Lines(log) {
		var l struct{ Trace, Detail string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Trace == trace && strings.Contains(l.Detail, want) {
			return true
		}
	}
	return false
}
