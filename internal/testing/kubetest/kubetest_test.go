package kubetest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/cofferhq/coffer/internal/testing/kubetest"
)

// audience is the one Microsoft Entra workload identity federation expects,
// which is what the later federation tests request.
const audience = "api://AzureADTokenExchange"

// TestServiceAccountTokenFederation walks the path a federated relying party
// takes: a projected service-account token from the TokenRequest API, the
// issuer's discovery document and JWKS fetched anonymously over HTTPS, and
// an RS256 signature check against that JWKS.
func TestServiceAccountTokenFederation(t *testing.T) {
	env := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const ns, sa = "smoke", "workload"
	if _, err := env.Clientset.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	// Through the controller-runtime client, to show both clients work.
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil {
		t.Fatalf("create service account: %v", err)
	}

	expiry := int64(3600)
	tr, err := env.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	token := tr.Status.Token

	// The apiserver itself must accept the token for that audience.
	review, err := env.Clientset.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	wantSub := "system:serviceaccount:" + ns + ":" + sa
	if !review.Status.Authenticated || review.Status.User.Username != wantSub {
		t.Fatalf("TokenReview: authenticated=%v user=%q error=%q, want %q",
			review.Status.Authenticated, review.Status.User.Username, review.Status.Error, wantSub)
	}

	// Discovery, as an anonymous client that only trusts the serving CA.
	hc := env.HTTPClient()
	var disco struct {
		Issuer  string   `json:"issuer"`
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	getJSON(t, hc, env.Issuer+"/.well-known/openid-configuration", &disco)
	if disco.Issuer != env.Issuer {
		t.Errorf("discovery issuer = %q, want %q", disco.Issuer, env.Issuer)
	}
	if disco.JWKSURI != env.JWKSURL() {
		t.Errorf("discovery jwks_uri = %q, want %q", disco.JWKSURI, env.JWKSURL())
	}
	if !slices.Contains(disco.Algs, "RS256") {
		t.Errorf("discovery algorithms = %v, want RS256 among them", disco.Algs)
	}
	var jwks jose.JSONWebKeySet
	getJSON(t, hc, disco.JWKSURI, &jwks)

	// Anonymous access must stop at discovery.
	resp, err := hc.Get(env.Config.Host + "/api/v1/namespaces")
	if err != nil {
		t.Fatalf("anonymous list namespaces: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous list namespaces: %s, want 403 Forbidden", resp.Status)
	}

	// A user without RBAC grants is authenticated but denied.
	alice, err := kubernetes.NewForConfig(env.UserConfig(t, "alice"))
	if err != nil {
		t.Fatalf("client for alice: %v", err)
	}
	if _, err := alice.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice list namespaces: err = %v, want Forbidden", err)
	}

	// Signature and claims, as a relying party checks them.
	parsed, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parse token (RS256 only): %v", err)
	}
	keys := jwks.Key(parsed.Headers[0].KeyID)
	if len(keys) != 1 {
		t.Fatalf("JWKS has %d keys with kid %q, want 1 (JWKS: %d keys)", len(keys), parsed.Headers[0].KeyID, len(jwks.Keys))
	}
	var claims jwt.Claims
	var k8s struct {
		Kubernetes struct {
			Namespace      string `json:"namespace"`
			ServiceAccount struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := parsed.Claims(keys[0].Key, &claims, &k8s); err != nil {
		t.Fatalf("verify token signature with the JWKS: %v", err)
	}
	if claims.Issuer != env.Issuer {
		t.Errorf("iss = %q, want %q", claims.Issuer, env.Issuer)
	}
	if claims.Subject != wantSub {
		t.Errorf("sub = %q, want %q", claims.Subject, wantSub)
	}
	if !claims.Audience.Contains(audience) {
		t.Errorf("aud = %v, want it to contain %q", claims.Audience, audience)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{
		Issuer:      env.Issuer,
		Subject:     wantSub,
		AnyAudience: jwt.Audience{audience},
		Time:        time.Now(),
	}, time.Minute); err != nil {
		t.Errorf("claims: %v", err)
	}
	if k8s.Kubernetes.Namespace != ns || k8s.Kubernetes.ServiceAccount.Name != sa || k8s.Kubernetes.ServiceAccount.UID == "" {
		t.Errorf("kubernetes.io claims = %+v, want namespace %q, service account %q with a uid", k8s.Kubernetes, ns, sa)
	}

	// A token from the same issuer for another audience must not pass as
	// one for ours: the audience is what federation keys on.
	other, err := env.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"https://example.invalid"}, ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest (other audience): %v", err)
	}
	otherParsed, err := jwt.ParseSigned(other.Status.Token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("parse other token: %v", err)
	}
	var otherClaims jwt.Claims
	if err := otherParsed.Claims(keys[0].Key, &otherClaims); err != nil {
		t.Fatalf("verify other token: %v", err)
	}
	if otherClaims.Audience.Contains(audience) {
		t.Errorf("token requested for another audience has aud %v", otherClaims.Audience)
	}
}

// TestMissingAssetsFails checks that a machine without the binaries gets a
// failure that says how to build them, not a skip that CI would count as
// green.
func TestMissingAssetsFails(t *testing.T) {
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		kubetest.Start(ft, kubetest.Options{})
	}()
	<-done
	if !ft.fatal {
		t.Fatal("Start without binaries did not fail the test")
	}
	if want := "make kube-assets"; !strings.Contains(ft.msg, want) {
		t.Errorf("failure message %q does not mention %q", ft.msg, want)
	}
}

// fatalRecorder stands in for the test in TestMissingAssetsFails, recording
// Fatalf instead of failing the real test. Start runs in its own goroutine
// there so that runtime.Goexit ends only that goroutine.
type fatalRecorder struct {
	testing.TB
	fatal bool
	msg   string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.fatal = true
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func getJSON(t *testing.T, hc *http.Client, url string, v any) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("anonymous GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("anonymous GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("anonymous GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("anonymous GET %s: decoding %s: %v", url, body, err)
	}
}
