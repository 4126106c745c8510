package webhook_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
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
	"github.com/cofferhq/coffer/internal/testing/testserver"
	"github.com/cofferhq/coffer/internal/webhook"
)

// The webhook end to end: the apiserver sends it the pods it admits, the
// pods come back with workload identity injected, and the Azure SDK,
// configured by nothing but the injected environment, reads a secret from
// a Coffer vault with a token the apiserver issued for the pod.
func TestWorkloadIdentityWebhook(t *testing.T) {
	kube := kubetest.Start(t, kubetest.Options{})
	// Coffer's authority trusts the apiserver's service-account issuer.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(kube.CAData)
	env := testserver.Start(t, testserver.Options{FederationRoots: roots, AllowPrivateIssuers: true, TokenRateLimit: -1})
	startWebhook(t, kube, webhook.Config{TenantID: env.State.TenantID, AuthorityHost: env.Admin.AuthorityHost})
	ctx := context.Background()
	const ns = "team-a"
	createNamespace(t, kube, ns)
	var warned kubetest.Warnings
	cs := warningClient(t, kube, &warned)

	// A managed identity that tokens of service account team-a/app can act
	// as, allowed to read vault demo's secrets.
	var mi mgmthttp.IdentityOut
	if err := env.Client.Manage(ctx, "POST", "identities", mgmthttp.CreateIdentityIn{Name: "app", ResourceGroup: "apps"}, &mi); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Manage(ctx, "PUT", "identities/apps/app/federated-credentials/kube", federation.Credential{
		Issuer: kube.Issuer, Subject: "system:serviceaccount:" + ns + ":app", Audiences: []string{webhook.TokenAudience}}, nil); err != nil {
		t.Fatal(err)
	}
	perms := []string{"get"}
	if err := env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: mi.PrincipalID, Secrets: &perms}, nil); err != nil {
		t.Fatal(err)
	}
	secrets, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.SetSecret(ctx, "db-password", azsecrets.SetSecretParameters{Value: to.Ptr("s3cret-from-coffer")}, nil); err != nil {
		t.Fatal(err)
	}

	// The service account names the identity and a token lifetime; the
	// tenant comes from the webhook's default.
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: map[string]string{
		webhook.ClientIDAnnotation: mi.ClientID, webhook.ExpirationAnnotation: "7200",
	}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var pod *corev1.Pod
	t.Run("labelled pod is mutated", func(t *testing.T) {
		in := labelledPod("web", "app",
			corev1.Container{Name: "app", Image: "app", Env: []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "debug"}}},
			corev1.Container{Name: "proxy", Image: "proxy", Env: []corev1.EnvVar{{Name: webhook.EnvAuthorityHost, Value: "https://login.example.org/"}}},
			corev1.Container{Name: "metrics", Image: "metrics"})
		in.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "migrate"}}
		in.Annotations = map[string]string{webhook.SkipContainersAnnotation: "metrics"}
		warned.Take()
		pod, err = cs.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			webhook.EnvClientID: mi.ClientID, webhook.EnvTenantID: env.State.TenantID,
			webhook.EnvTokenFile: webhook.TokenFile, webhook.EnvAuthorityHost: env.Admin.AuthorityHost,
		}
		for _, c := range []string{"app", "migrate"} {
			got := envOf(t, pod, c)
			for k, v := range want {
				if got[k] != v {
					t.Errorf("container %s: %s=%q, want %q", c, k, got[k], v)
				}
			}
		}
		if envOf(t, pod, "app")["LOG_LEVEL"] != "debug" {
			t.Error("the container's own env was lost")
		}
		// Existing env is not overwritten, and the author is told.
		if got := envOf(t, pod, "proxy")[webhook.EnvAuthorityHost]; got != "https://login.example.org/" {
			t.Errorf("proxy's AZURE_AUTHORITY_HOST was overwritten with %q", got)
		}
		if w := warned.Take(); len(w) != 1 || !containsAll(w, `"proxy" already sets AZURE_AUTHORITY_HOST`) || strings.Contains(w[0], "login.example.org") {
			t.Errorf("warnings %q", w)
		}
		if got := envOf(t, pod, "metrics"); len(got) != 0 {
			t.Errorf("the skipped container got env %v", got)
		}
		for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
			mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == webhook.TokenVolume && m.MountPath == webhook.TokenDir && m.ReadOnly
			})
			if mounted != (c.Name != "metrics") {
				t.Errorf("container %s: token mounted %v", c.Name, mounted)
			}
		}
		tok := tokenProjection(t, pod)
		if tok.Audience != webhook.TokenAudience || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 7200 {
			t.Errorf("token projection %+v", tok)
		}
	})
	if pod == nil {
		t.FailNow()
	}

	t.Run("unlabelled pod is untouched", func(t *testing.T) {
		in := labelledPod("plain", "app")
		in.Labels = nil
		got, err := cs.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.Containers[0].Env) != 0 || len(got.Spec.Volumes) != 0 || len(got.Spec.Containers[0].VolumeMounts) != 0 {
			t.Errorf("unlabelled pod was changed: %+v", got.Spec)
		}
		if w := warned.Take(); len(w) != 0 {
			t.Errorf("warnings %q", w)
		}
	})

	t.Run("service account without client id warns", func(t *testing.T) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "noid"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := cs.CoreV1().Pods(ns).Create(ctx, labelledPod("noid", "noid"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w := warned.Take()
		if !containsAll(w, `service account "noid" has no azure.workload.identity/client-id annotation: AZURE_CLIENT_ID not injected`) {
			t.Errorf("warnings %q", w)
		}
		if e := envOf(t, got, "app"); e[webhook.EnvClientID] != "" || e[webhook.EnvTokenFile] != webhook.TokenFile {
			t.Errorf("env %v", e)
		}
	})

	t.Run("invalid expiration is refused", func(t *testing.T) {
		in := labelledPod("short", "app")
		in.Annotations = map[string]string{webhook.ExpirationAnnotation: "600"}
		_, err := cs.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), webhook.ExpirationAnnotation) || !strings.Contains(err.Error(), `"600"`) || !strings.Contains(err.Error(), "3600 to 86400") {
			t.Fatalf("create: %v", err)
		}
	})

	// The injected configuration works. No kubelet runs in this test, so
	// the test does its part: it requests the token the kubelet would
	// request for the projected volume (the real TokenRequest API, bound to
	// the pod, with the volume's audience and lifetime) and writes it to a
	// temporary file, which stands in for the file the kubelet would write
	// at AZURE_FEDERATED_TOKEN_FILE.
	t.Run("the SDK signs in with the injected env", func(t *testing.T) {
		tok := tokenProjection(t, pod)
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{tok.Audience}, ExpirationSeconds: tok.ExpirationSeconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		podEnv := envOf(t, pod, "app")
		// Where the kubelet would write the token: the mount path plus
		// the projection's path, which AZURE_FEDERATED_TOKEN_FILE must name.
		if want := webhook.TokenDir + "/" + tok.Path; podEnv[webhook.EnvTokenFile] != want {
			t.Fatalf("%s=%q, but the token would be at %s", webhook.EnvTokenFile, podEnv[webhook.EnvTokenFile], want)
		}
		tokenFile := filepath.Join(t.TempDir(), tok.Path)
		if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		// The process environment is the pod's, so the SDK reads the
		// injected names itself; only the token file is the stand-in.
		for _, k := range []string{webhook.EnvClientID, webhook.EnvTenantID, webhook.EnvAuthorityHost} {
			t.Setenv(k, podEnv[k])
		}
		t.Setenv(webhook.EnvTokenFile, tokenFile)

		// The test server's CA and its *.localhost names: what a
		// private Coffer deployment's clients configure.
		hc, err := httpclient.New(env.Admin.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: azcore.ClientOptions{Transport: hc}, DisableInstanceDiscovery: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		sc, err := azsecrets.NewClient(env.Admin.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: hc}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := sc.GetSecret(ctx, "db-password", "", nil)
		if err != nil {
			t.Fatalf("GetSecret with the injected workload identity: %s", client.Describe(err))
		}
		if *got.Value != "s3cret-from-coffer" {
			t.Fatalf("secret %q", *got.Value)
		}
	})
}

// tokenProjection returns the service-account token source of the pod's
// token volume.
func tokenProjection(t *testing.T, pod *corev1.Pod) *corev1.ServiceAccountTokenProjection {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if v.Name == webhook.TokenVolume && v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					return s.ServiceAccountToken
				}
			}
		}
	}
	t.Fatalf("pod %s has no projected %s volume: %+v", pod.Name, webhook.TokenVolume, pod.Spec.Volumes)
	return nil
}
