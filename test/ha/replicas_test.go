// Package ha tests Coffer's highly available mode: several server replicas
// sharing one real etcd cluster, each request answered correctly by any of
// them.
package ha

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

func secrets(t *testing.T, c *client.Client, vault string) *azsecrets.Client {
	t.Helper()
	s, err := c.Secrets(vault)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func manage(t *testing.T, c *client.Client, method, path string, in, out any) {
	t.Helper()
	if err := c.Manage(context.Background(), method, path, in, out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
}

// get reads a secret with a bearer token straight over HTTP on replica i,
// returning the status and the value.
func get(t *testing.T, ha *hatest.Cluster, i int, token, name string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/"+name+"?api-version=7.6", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := ha.HTTP(i).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Value string }
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Value
}

// spToken signs in as a service principal with its secret on replica i.
func spToken(t *testing.T, ha *hatest.Cluster, i int, appID, secret string) string {
	t.Helper()
	status, body := tokenRequest(t, ha, i, url.Values{"grant_type": {"client_credentials"}, "client_id": {appID},
		"client_secret": {secret}, "scope": {ha.Endpoints.Resource() + "/.default"}})
	if status != 200 {
		t.Fatalf("token for %s: %d %v", appID, status, body)
	}
	return body["access_token"].(string)
}

func tokenRequest(t *testing.T, ha *hatest.Cluster, i int, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := ha.HTTP(i).PostForm(ha.Endpoints.AuthorityURL()+"/"+ha.State.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// TestAnyReplicaServesEveryRequest checks that what one replica
// acknowledges holds for the next request on another: vaults, secrets,
// access policies and role assignments (given and revoked), rotated data
// and signing keys, and used assertion ids.
func TestAnyReplicaServesEveryRequest(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	ha := hatest.Start(t, etcd, 3, hatest.Options{})
	ctx := context.Background()
	a, b, c := ha.Client(0), ha.Client(1), ha.Client(2)

	t.Run("a vault created on one replica is used on the others", func(t *testing.T) {
		manage(t, a, "POST", "vaults", mgmthttp.CreateVaultIn{Name: "team-a", ResourceGroup: "apps"}, nil)
		if _, err := secrets(t, b, "team-a").SetSecret(ctx, "s", azsecrets.SetSecretParameters{Value: to.Ptr("one")}, nil); err != nil {
			t.Fatalf("set on b in the vault a created: %v", err)
		}
		got, err := secrets(t, c, "team-a").GetSecret(ctx, "s", "", nil)
		if err != nil || *got.Value != "one" {
			t.Fatalf("read on c: %v", err)
		}
	})

	t.Run("every acknowledged write reads back at once on another replica", func(t *testing.T) {
		for i := range 30 {
			v := fmt.Sprintf("v%d", i)
			if _, err := secrets(t, ha.Client(i%3), "demo").SetSecret(ctx, "counter", azsecrets.SetSecretParameters{Value: &v}, nil); err != nil {
				t.Fatal(err)
			}
			got, err := secrets(t, ha.Client((i+1)%3), "demo").GetSecret(ctx, "counter", "", nil)
			if err != nil || *got.Value != v {
				t.Fatalf("write %d on replica %d, read on %d: %v %v", i, i%3, (i+1)%3, got.Value, err)
			}
		}
	})

	var sp mgmthttp.SPOut
	manage(t, a, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "reader"}, &sp)
	if _, err := secrets(t, a, "demo").SetSecret(ctx, "guarded", azsecrets.SetSecretParameters{Value: to.Ptr("g")}, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("a revoked access policy denies the next request on every replica", func(t *testing.T) {
		get := []string{"get"}
		manage(t, a, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &get}, nil)
		tok := spToken(t, ha, 1, sp.AppID, sp.Password)
		for i := range 3 {
			if status, v := getSecret(t, ha, i, tok, "guarded"); status != 200 || v != "g" {
				t.Fatalf("granted, replica %d: %d", i, status)
			}
		}
		manage(t, a, "POST", "vaults/demo/delete-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID}, nil)
		for i := range 3 {
			if status, _ := getSecret(t, ha, i, tok, "guarded"); status != 403 {
				t.Fatalf("revoked on a, replica %d still answers %d", i, status)
			}
		}
	})

	t.Run("a revoked role assignment denies the next request on every replica", func(t *testing.T) {
		manage(t, a, "POST", "vaults", mgmthttp.CreateVaultIn{Name: "rbac-vault", ResourceGroup: "apps", RBAC: true}, nil)
		if _, err := secrets(t, a, "rbac-vault").SetSecret(ctx, "r", azsecrets.SetSecretParameters{Value: to.Ptr("r")}, nil); err != nil {
			t.Fatal(err)
		}
		var vault struct{ ID string }
		manage(t, a, "GET", "vaults/rbac-vault", nil, &vault)
		var asg struct{ Name string }
		manage(t, b, "POST", "role-assignments", map[string]string{"role": "Key Vault Secrets User", "assignee": sp.ObjectID, "scope": vault.ID}, &asg)
		tok := spToken(t, ha, 2, sp.AppID, sp.Password)
		read := func(i int) int {
			req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("rbac-vault")+"/secrets/r?api-version=7.6", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := ha.HTTP(i).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		for i := range 3 {
			if s := read(i); s != 200 {
				t.Fatalf("assigned on b, replica %d: %d", i, s)
			}
		}
		manage(t, c, "DELETE", "role-assignments/"+asg.Name, nil, nil)
		for i := range 3 {
			if s := read(i); s != 403 {
				t.Fatalf("revoked on c, replica %d still answers %d", i, s)
			}
		}
	})

	t.Run("a data key rotated on one replica opens on every other", func(t *testing.T) {
		manage(t, a, "POST", "operator/rotate-data-key", nil, nil)
		if _, err := secrets(t, a, "demo").SetSecret(ctx, "after-rotation", azsecrets.SetSecretParameters{Value: to.Ptr("new key")}, nil); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < 3; i++ {
			got, err := secrets(t, ha.Client(i), "demo").GetSecret(ctx, "after-rotation", "", nil)
			if err != nil || *got.Value != "new key" {
				t.Fatalf("replica %d reads a value sealed with a's new data key: %v", i, err)
			}
		}
	})

	t.Run("a signing key rotated on one replica signs tokens every other accepts", func(t *testing.T) {
		var out struct{ KID string }
		manage(t, b, "POST", "operator/rotate-signing-key", nil, &out)
		// A fresh client, so its token comes after the rotation.
		tok, err := ha.Client(1).Token(ctx, ha.Endpoints.Resource())
		if err != nil {
			t.Fatal(err)
		}
		if kid := headerKID(t, tok); kid != out.KID {
			t.Fatalf("token signed by %s, want the new key %s", kid, out.KID)
		}
		for i := range 3 {
			if status, _ := getSecret(t, ha, i, tok, "counter"); status != 200 {
				t.Fatalf("replica %d refuses a token signed with the key rotated on b: %d", i, status)
			}
		}
	})

	t.Run("a client assertion used on one replica is refused on another", func(t *testing.T) {
		cert, key, certPEM := selfSigned(t)
		var csp mgmthttp.SPOut
		manage(t, a, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "cert-app", CertificatePEM: certPEM}, &csp)
		assertion := assertionFor(t, ha, csp.AppID, cert, key)
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {csp.AppID}, "scope": {ha.Endpoints.Resource() + "/.default"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
		if status, body := tokenRequest(t, ha, 0, form); status != 200 {
			t.Fatalf("first use on a: %d %v", status, body)
		}
		status, body := tokenRequest(t, ha, 2, form)
		desc, _ := body["error_description"].(string)
		if status != 401 || !strings.Contains(desc, "already used") {
			t.Fatalf("replay on c: %d %v", status, body)
		}
	})
}

// getSecret reads secret name of vault demo with token on replica i.
func getSecret(t *testing.T, ha *hatest.Cluster, i int, token, name string) (int, string) {
	return get(t, ha, i, token, name)
}

func headerKID(t *testing.T, tok string) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Kid string }
	json.Unmarshal(raw, &h)
	return h.Kid
}

func selfSigned(t *testing.T) (*x509.Certificate, *rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cert-app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// assertionFor builds a certificate client assertion as MSAL does.
func assertionFor(t *testing.T, ha *hatest.Cluster, appID string, cert *x509.Certificate, key *rsa.PrivateKey) string {
	t.Helper()
	sum := sha256.Sum256(cert.Raw)
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t#S256", base64.RawURLEncoding.EncodeToString(sum[:]))
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	jti := make([]byte, 16)
	rand.Read(jti)
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: appID, Subject: appID, ID: base64.RawURLEncoding.EncodeToString(jti),
		Audience:  jwt.Audience{ha.Endpoints.AuthorityURL() + "/" + ha.State.TenantID + "/oauth2/v2.0/token"},
		NotBefore: jwt.NewNumericDate(now), IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestHeldReadWakesForAnotherReplicasWrite holds a conditional read on one
// replica and writes on another: the held read answers with the new value.
func TestHeldReadWakesForAnotherReplicasWrite(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	ha := hatest.Start(t, etcd, 2, hatest.Options{})
	ctx := context.Background()
	a := ha.Client(0)
	_, err := secrets(t, a, "demo").SetSecret(ctx, "pushed", azsecrets.SetSecretParameters{Value: to.Ptr("before")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := a.Token(ctx, ha.Endpoints.Resource())
	if err != nil {
		t.Fatal(err)
	}
	etag := etagOf(t, ha, 1, tok)
	type answer struct {
		status int
		body   string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/pushed?api-version=7.6", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("If-None-Match", etag)
		req.Header.Set("Prefer", "wait=25")
		resp, err := ha.HTTP(1).Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- answer{status: resp.StatusCode, body: string(b)}
	}()
	// The write comes once b holds the read; a write before it would make
	// the read's ETag stale and answer at once, which proves nothing.
	deadline := time.Now().Add(20 * time.Second)
	for ha.Replicas[1].Changes().Watching() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("replica b never held the read")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := secrets(t, a, "demo").SetSecret(ctx, "pushed", azsecrets.SetSecretParameters{Value: to.Ptr("after")}, nil); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if got.err != nil || got.status != 200 || !strings.Contains(got.body, `"after"`) {
		t.Fatalf("held read on b after a's write: %d %v %s", got.status, got.err, got.body)
	}
}

func etagOf(t *testing.T, ha *hatest.Cluster, i int, tok string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", ha.Endpoints.VaultURL("demo")+"/secrets/pushed?api-version=7.6", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := ha.HTTP(i).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("ETag") == "" {
		t.Fatalf("no ETag: %d", resp.StatusCode)
	}
	return resp.Header.Get("ETag")
}

// TestSingletonJobsRunOnOneReplica checks that exactly one replica leads
// the scheduled jobs, and that another takes over when it stops.
func TestSingletonJobsRunOnOneReplica(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	ha := hatest.Start(t, etcd, 3, hatest.Options{})
	leaders := func() []int {
		var out []int
		for i, r := range ha.Replicas {
			if r.Leading() {
				out = append(out, i)
			}
		}
		return out
	}
	waitOne := func(exclude int) int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // the lease is 10 s
		for {
			l := leaders()
			if len(l) > 1 {
				t.Fatalf("replicas %v lead at once", l)
			}
			if len(l) == 1 && l[0] != exclude {
				return l[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("no replica leads: %v", l)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first := waitOne(-1)
	ha.Stop(first)
	next := waitOne(first)
	if next == first {
		t.Fatal("the stopped replica still leads")
	}
}

// TestRootKeyRotationAcrossReplicas rotates the root key through one
// replica: the others, whose key file (one Secret, mounted by all) now
// holds the new key, follow, stay ready, and can rotate the data key.
func TestRootKeyRotationAcrossReplicas(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	ha := hatest.Start(t, etcd, 2, hatest.Options{})
	ctx := context.Background()
	a, b := ha.Client(0), ha.Client(1)
	var rot mgmthttp.RootKeyRotation
	manage(t, a, "POST", "operator/rotate-root-key", mgmthttp.RotateRootKeyIn{}, &rot)
	deadline := time.Now().Add(30 * time.Second)
	for ha.Replicas[1].Ready(ctx) != nil || ha.Replicas[1].Store().Barrier.RootKeyID() != rot.RootKeyID {
		if time.Now().After(deadline) {
			t.Fatalf("replica b still wraps with root key %s, not %s", ha.Replicas[1].Store().Barrier.RootKeyID(), rot.RootKeyID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := ha.Replicas[1].Ready(ctx); err != nil {
		t.Fatalf("b after a's root key rotation: %v", err)
	}
	manage(t, b, "POST", "operator/rotate-data-key", nil, nil)
	if _, err := secrets(t, b, "demo").SetSecret(ctx, "after-root", azsecrets.SetSecretParameters{Value: to.Ptr("r")}, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := secrets(t, a, "demo").GetSecret(ctx, "after-root", "", nil); err != nil || *got.Value != "r" {
		t.Fatalf("a reads what b sealed after both rotations: %v", err)
	}
}
