package csi

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// Versions written within one second share their attributes.created (whole
// seconds on the wire), so only the vault's true order tells them apart.
// The server's clock is frozen to make the shared second certain rather
// than likely. Every one of 50 mounts with objectVersionHistory must give
// {file}/0 the current version and the rest newest first, for secrets,
// keys and certificates, and from a pinned objectVersion too.
func TestHistoryOrderWithinOneSecond(t *testing.T) {
	const n = 6
	frozen := time.Now()
	env := testserver.Start(t, testserver.Options{Now: func() time.Time { return frozen }, TokenRateLimit: -1})
	ctx := context.Background()

	// Newest first, as the mount must give them.
	var secretValues, secretVersions, keyVersions, certVersions []string
	var certNames []string
	kc, err := env.Client.Keys("demo")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := env.Client.Certificates("demo")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		value := "burst-" + strconv.Itoa(i)
		secretVersions = slices.Insert(secretVersions, 0, setSecret(t, env, "burst", value))
		secretValues = slices.Insert(secretValues, 0, value)

		k, err := kc.CreateKey(ctx, "burst-key", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP256)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		keyVersions = slices.Insert(keyVersions, 0, k.Key.KID.Version())

		pemCert, cert := testCert(t, fmt.Sprintf("burst-%d.example.com", i))
		c, err := cc.ImportCertificate(ctx, "burst-cert", azcertificates.ImportCertificateParameters{Base64EncodedCertificate: &pemCert}, nil)
		if err != nil {
			t.Fatal(err)
		}
		certVersions = slices.Insert(certVersions, 0, c.ID.Version())
		certNames = slices.Insert(certNames, 0, cert.Subject.CommonName)
	}
	sc, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	latest, err := sc.GetSecret(ctx, "burst", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *latest.Value != secretValues[0] {
		t.Fatalf("the vault's current version holds %q, want %q", *latest.Value, secretValues[0])
	}
	if got, want := *latest.Attributes.Created, frozen.Truncate(time.Second); !got.Equal(want) {
		t.Fatalf("created %v, want the frozen second %v: the versions would not tie", got, want)
	}
	pinnedSecret := secretVersions[2]

	sp := servicePrincipal(t, env, "history-reader", []string{"get", "list"}, []string{"get", "list"}, []string{"get", "list"})
	p := startProvider(t, env, "coffer")
	hist := "\nobjectVersionHistory: " + strconv.Itoa(n)
	attrs := spAttributes(env, objects(
		"objectName: burst\nobjectType: secret"+hist,
		"objectName: burst\nobjectType: secret\nobjectAlias: pinned\nobjectVersion: "+pinnedSecret+hist,
		"objectName: burst-key\nobjectType: key"+hist,
		"objectName: burst-cert\nobjectType: cert"+hist,
	))
	for mount := range 50 {
		resp, code, detail := mountRaw(t, p, attrs, spSecrets(sp))
		if code != "" {
			t.Fatalf("mount %d: %s: %s", mount, code, detail)
		}
		files := map[string]string{}
		for _, f := range resp.GetFiles() {
			files[f.GetPath()] = string(f.GetContents())
		}
		versions := map[string]string{}
		for _, v := range resp.GetObjectVersion() {
			versions[v.GetId()] = v.GetVersion()
		}
		var got, want []string
		for i := range n {
			idx := strconv.Itoa(i)
			got = append(got, files["burst/"+idx])
			want = append(want, secretValues[i])
		}
		if !slices.Equal(got, want) {
			t.Errorf("mount %d: secret burst/0..%d = %q, want %q (newest first)", mount, n-1, got, want)
		}
		got, want = nil, nil
		for i := range n - 2 {
			got = append(got, files["pinned/"+strconv.Itoa(i)])
			want = append(want, secretValues[i+2])
		}
		if _, extra := files["pinned/"+strconv.Itoa(n-2)]; extra || !slices.Equal(got, want) {
			t.Errorf("mount %d: pinned/0.. = %q (and a file past the oldest: %v), want %q: the pinned version, then older ones", mount, got, extra, want)
		}
		got = nil
		for i := range n {
			got = append(got, versions["key/burst-key/"+strconv.Itoa(i)])
		}
		if !slices.Equal(got, keyVersions) {
			t.Errorf("mount %d: key versions %q, want %q (newest first)", mount, got, keyVersions)
		}
		got, names := nil, []string(nil)
		for i := range n {
			idx := strconv.Itoa(i)
			got = append(got, versions["cert/burst-cert/"+idx])
			names = append(names, commonName(files["burst-cert/"+idx]))
		}
		if !slices.Equal(got, certVersions) || !slices.Equal(names, certNames) {
			t.Errorf("mount %d: certificate versions %q holding %q, want %q holding %q (newest first)", mount, got, names, certVersions, certNames)
		}
		if t.Failed() {
			t.FailNow() // one mount's report is enough
		}
	}
}

// commonName is the subject CN of a PEM certificate file, or a note saying
// why there is none.
func commonName(file string) string {
	b, _ := pem.Decode([]byte(file))
	if b == nil {
		return "(no PEM)"
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "(not a certificate)"
	}
	return c.Subject.CommonName
}
