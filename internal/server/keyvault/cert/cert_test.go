package cert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/keyops"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func newService(t *testing.T, st *barrier.Barrier) *Service { return serviceOver(t, st, st) }

// serviceOver is a Service whose three collections write through st and
// seal with seal.
func serviceOver(t *testing.T, st Store, seal object.Sealer) *Service {
	t.Helper()
	s := New(st, seal, key.New(st, seal, nil), secret.New(st, seal, nil), nil, nil)
	t.Cleanup(s.Close)
	return s
}

// An operation in progress when the server stopped (its record written,
// issuance not committed) completes after Resume on the next start.
func TestResumeFinishesInterruptedIssuance(t *testing.T) {
	ctx := context.Background()
	st, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	p := &Policy{X509Props: &X509Props{Subject: "CN=resumed"}, KeyProps: &KeyProps{Kty: "EC"}}
	if err := Normalize(p); err != nil {
		t.Fatal(err)
	}
	// What Create stores before it starts issuing.
	rec := pending{Name: "Resumed", Op: Operation{Issuer: *p.Issuer, Status: InProgress, RequestID: "r"}, Policy: *p}
	b, _ := json.Marshal(rec)
	if err := st.Apply(ctx, []barrier.Cond{{Key: opKey("demo", "Resumed")}}, []barrier.Op{{Key: opKey("demo", "Resumed"), Value: b}}); err != nil {
		t.Fatal(err)
	}
	s := newService(t, st)
	if n, err := s.Resume(ctx, v); err != nil || n != 1 {
		t.Fatalf("Resume = %d, %v", n, err)
	}
	deadline := time.Now().Add(time.Minute) // an EC key, but -race on a busy machine
	for {
		op, err := s.GetOperation(ctx, v, "Resumed")
		if err != nil {
			t.Fatal(err)
		}
		if op.Status == Completed {
			break
		}
		if op.Status != InProgress || time.Now().After(deadline) {
			t.Fatalf("operation %s: %+v", op.Status, op.Error)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := s.Get(ctx, v, "resumed", "")
	if err != nil || c.Name != "Resumed" {
		t.Fatalf("certificate after resume: %+v %v", c.Name, err)
	}
	// A completed operation is not resumed again.
	if n, _ := s.Resume(ctx, v); n != 0 {
		t.Fatalf("Resume restarted %d finished operations", n)
	}
}

// A cancel that lands while the key is being generated sticks: issuance
// must not write its stale copy of the operation over it.
func TestCancelDuringIssuanceSticks(t *testing.T) {
	ctx := context.Background()
	st, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	s := newService(t, st)
	// Issuance is held inside key generation until the cancel is in, so
	// the cancel always lands mid-issuance, however fast the key is.
	generating, release := make(chan struct{}), make(chan struct{})
	s.generate = func(kty string, size int, crv string) (*keyops.Material, error) {
		generating <- struct{}{}
		<-release
		return keyops.Generate(kty, size, crv)
	}
	for _, issuer := range []string{IssuerUnknown, IssuerSelf} {
		name := "slow-" + strings.ToLower(issuer)
		p := &Policy{X509Props: &X509Props{Subject: "CN=slow"}, KeyProps: &KeyProps{Kty: "EC"}, Issuer: &IssuerParams{Name: issuer}}
		if _, err := s.Create(ctx, v, name, p, nil, nil); err != nil {
			t.Fatal(err)
		}
		<-generating
		op, err := s.CancelOperation(ctx, v, name)
		release <- struct{}{}
		if err != nil || op.Status != Cancelled {
			t.Fatalf("cancel: %+v %v", op, err)
		}
		s.wg.Wait() // issuance has finished its key and tried to write
		op, err = s.GetOperation(ctx, v, name)
		if err != nil || op.Status != Cancelled || len(op.CSR) != 0 {
			t.Fatalf("%s: after issuance the operation is %s (csr %d bytes), want cancelled", issuer, op.Status, len(op.CSR))
		}
		if _, err := s.Get(ctx, v, name, ""); err == nil {
			t.Fatalf("%s: a cancelled operation made a certificate", issuer)
		}
	}
}

// An imported certificate is stored as it is, even where Coffer would not
// issue it so: an emailAddress in the subject, a 101-year validity.
func TestImportTakesCertificatesAsTheyAre(t *testing.T) {
	ctx := context.Background()
	st, err := barrier.Open(ctx, inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	s := newService(t, st)
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().AddDate(101, 0, 0),
		Subject: pkix.Name{CommonName: "old", ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "ops@example.com"}}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	value := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	c, err := s.Import(ctx, v, "old", value, "", nil, nil, nil)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if c.Policy.X509Props.ValidityMonths < 1200 {
		t.Fatalf("validity %d months", c.Policy.X509Props.ValidityMonths)
	}
	bad := &Policy{SecretProps: &SecretProps{ContentType: "text/plain"}}
	if _, err := s.Import(ctx, v, "other", value, "", bad, nil, nil); err == nil {
		t.Fatal("an unknown content type was accepted")
	}
}
