package cert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// A certificate of more versions than one etcd transaction can purge with
// its key and secret (3 × 45 versions and 3 records, over etcd's default
// 128 operations) is purged, all three, on a real etcd member, and
// restored from its backup.
func TestLargeCertificatePurgeAndRestoreOnEtcd(t *testing.T) {
	ctx := context.Background()
	eng, err := etcd.New(ctx, etcd.Options{Endpoints: etcdtest.Start(t, 1).Endpoints(), Prefix: "/cert-purge/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	st, err := barrier.Open(ctx, eng, rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	s := newService(t, st)
	v := &vault.Vault{Name: "demo", TenantID: "t", RetentionDays: 7}
	const versions = 45
	importVersions(t, s, v, "big", versions)
	blob, err := s.Backup(ctx, v, "big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, v, "big"); err != nil {
		t.Fatal(err)
	}
	if n := stored(t, eng, "/big"); n < 3*versions {
		t.Fatalf("%d keys of the certificate, key and secret in etcd, want at least %d", n, 3*versions)
	}
	ch, err := s.certs.StagePurge(ctx, v.Name, "big")
	if err != nil {
		t.Fatal(err)
	}
	kch, _ := s.keys.StagePurge(ctx, v.Name, "big")
	sch, _ := s.secrets.StagePurge(ctx, v.Name, "big")
	if s.certs.Fits(ch, kch, sch) {
		t.Fatalf("the purge of %d versions of a certificate, key and secret fits in one etcd transaction: the test needs more", versions)
	}
	if err := s.Purge(ctx, v, "big"); err != nil {
		t.Fatalf("Purge of a certificate of %d versions on etcd: %v", versions, err)
	}
	if _, err := s.GetDeleted(ctx, v, "big"); !errors.Is(err, object.ErrNotFound) {
		t.Fatalf("GetDeleted after purge = %v", err)
	}
	if _, _, err := s.keys.GetDeleted(ctx, v.Name, "big"); !errors.Is(err, object.ErrNotFound) {
		t.Fatalf("the managed key after purge: %v", err)
	}
	if _, _, err := s.secrets.GetDeleted(ctx, v.Name, "big"); !errors.Is(err, object.ErrNotFound) {
		t.Fatalf("the managed secret after purge: %v", err)
	}
	// Nothing of the three is left in etcd: no record, no version.
	if n := stored(t, eng, "/big"); n != 0 {
		t.Fatalf("%d keys of the certificate, key and secret left after purge", n)
	}
	// The backup restores, all three with every version, though that too
	// is more than one transaction holds.
	c, err := s.Restore(ctx, v, blob)
	if err != nil {
		t.Fatalf("Restore of a certificate of %d versions on etcd: %v", versions, err)
	}
	certs, _, err := s.ListVersions(ctx, v, "big", "", 0)
	if err != nil || len(certs) != versions || c.Name != "big" {
		t.Fatalf("after restore: %d versions, %v", len(certs), err)
	}
	if _, _, err := s.keys.Get(ctx, v.Name, "big", ""); err != nil {
		t.Fatalf("the managed key after restore: %v", err)
	}
	if sv, _, err := s.secrets.Get(ctx, v.Name, "big", ""); err != nil || len(sv.Data.Value) == 0 {
		t.Fatalf("the managed secret after restore: %v", err)
	}
	if n := stored(t, eng, "/big"); n < 3*versions+3 {
		t.Fatalf("%d keys after restore, want the %d versions and the heads of all three", n, 3*versions)
	}
	if _, err := s.GetDeleted(ctx, v, "big"); !errors.Is(err, object.ErrNotFound) && !errors.Is(err, object.ErrDeleted) {
		t.Fatalf("the restored certificate is still deleted: %v", err)
	}
}

// stored counts the keys of vault demo in eng whose path contains s.
func stored(t *testing.T, eng *etcd.Backend, s string) int {
	t.Helper()
	all, err := eng.Scan(context.Background(), "o/demo/", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range all {
		if strings.Contains(e.Key, s) {
			n++
		}
	}
	return n
}

// importVersions imports n versions of name, each a new self-signed P-256
// certificate with its key.
func importVersions(t *testing.T, s *Service, v *vault.Vault, name string, n int) {
	t.Helper()
	for i := range n {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), NotBefore: time.Now(), NotAfter: time.Now().AddDate(1, 0, 0), Subject: pkix.Name{CommonName: name}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalPKCS8PrivateKey(k)
		value := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		if _, err := s.Import(context.Background(), v, name, value, "", nil, nil, nil); err != nil {
			t.Fatalf("import %d: %v", i, err)
		}
	}
}
