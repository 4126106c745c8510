package sdk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/cofferhq/coffer/internal/testing/testserver"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	secpecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// adminCredential is the administrator's client-secret credential.
func adminCredential(t *testing.T, env *testserver.Env) azcore.TokenCredential {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(env.Admin.TenantID, env.Admin.ClientID, env.Admin.ClientSecret,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: clientOptions(t, env), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

func keysClient(t *testing.T, env *testserver.Env) *azkeys.Client {
	t.Helper()
	c, err := azkeys.NewClient(env.Admin.VaultURL, adminCredential(t, env), &azkeys.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: env.Client.HTTP}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// publicKey rebuilds a Go public key from a returned JWK, independently of
// the server's own JWK code.
func publicKey(t *testing.T, j *azkeys.JSONWebKey) crypto.PublicKey {
	t.Helper()
	if len(j.D)+len(j.P)+len(j.Q)+len(j.DP)+len(j.DQ)+len(j.QI)+len(j.K) > 0 {
		t.Fatalf("the server returned private key material for %s", *j.KID)
	}
	switch *j.Kty {
	case azkeys.KeyTypeRSA:
		return &rsa.PublicKey{N: new(big.Int).SetBytes(j.N), E: int(new(big.Int).SetBytes(j.E).Int64())}
	case azkeys.KeyTypeEC:
		if *j.Crv == azkeys.CurveNameP256K {
			var x, y secp256k1.FieldVal
			x.SetByteSlice(j.X)
			y.SetByteSlice(j.Y)
			return secp256k1.NewPublicKey(&x, &y)
		}
		curve := map[azkeys.CurveName]elliptic.Curve{azkeys.CurveNameP256: elliptic.P256(), azkeys.CurveNameP384: elliptic.P384(), azkeys.CurveNameP521: elliptic.P521()}[*j.Crv]
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, j.X...), j.Y...))
		if err != nil {
			t.Fatalf("returned EC key is not on %s: %v", *j.Crv, err)
		}
		return pub
	}
	t.Fatalf("no public key for kty %s", *j.Kty)
	return nil
}

var hashes = map[string]crypto.Hash{"256": crypto.SHA256, "384": crypto.SHA384, "512": crypto.SHA512, "256K": crypto.SHA256}

func digest(h crypto.Hash, msg []byte) []byte {
	w := h.New()
	w.Write(msg)
	return w.Sum(nil)
}

// verifyLocally checks a signature with Go's crypto (or decred's, for
// secp256k1) against the public key.
func verifyLocally(t *testing.T, pub crypto.PublicKey, alg azkeys.SignatureAlgorithm, d, sig []byte) error {
	t.Helper()
	a := string(alg)
	h := hashes[a[2:]]
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if strings.HasPrefix(a, "PS") {
			return rsa.VerifyPSS(k, h, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}
		return rsa.VerifyPKCS1v15(k, h, d, sig)
	case *ecdsa.PublicKey:
		n := (k.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*n {
			return fmt.Errorf("signature is %d bytes, want raw R||S of %d", len(sig), 2*n)
		}
		if !ecdsa.Verify(k, d, new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])) {
			return fmt.Errorf("ECDSA signature does not verify")
		}
		return nil
	case *secp256k1.PublicKey:
		if len(sig) != 64 {
			return fmt.Errorf("signature is %d bytes, want 64", len(sig))
		}
		var r, s secp256k1.ModNScalar
		r.SetByteSlice(sig[:32])
		s.SetByteSlice(sig[32:])
		if !secpecdsa.NewSignature(&r, &s).Verify(d, k) {
			return fmt.Errorf("ES256K signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unexpected key %T", pub)
}

// Every key type is created through azkeys, and every signature algorithm
// it supports is checked twice: Go's crypto verifies the signature against
// the returned public JWK, and the server's verify agrees (and rejects a
// tampered digest).
func TestKeySignVerifyEveryAlgorithm(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	kc := keysClient(t, env)
	ctx := context.Background()
	rsaAlgs := []azkeys.SignatureAlgorithm{azkeys.SignatureAlgorithmRS256, azkeys.SignatureAlgorithmRS384, azkeys.SignatureAlgorithmRS512,
		azkeys.SignatureAlgorithmPS256, azkeys.SignatureAlgorithmPS384, azkeys.SignatureAlgorithmPS512}
	cases := []struct {
		name string
		p    azkeys.CreateKeyParameters
		algs []azkeys.SignatureAlgorithm
	}{
		{"rsa2048", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](2048)}, rsaAlgs},
		{"rsa3072", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](3072)}, rsaAlgs[:1]},
		{"rsa4096", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](4096)}, rsaAlgs[3:4]},
		{"p256", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP256)}, []azkeys.SignatureAlgorithm{azkeys.SignatureAlgorithmES256}},
		{"p256k", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP256K)}, []azkeys.SignatureAlgorithm{azkeys.SignatureAlgorithmES256K}},
		{"p384", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP384)}, []azkeys.SignatureAlgorithm{azkeys.SignatureAlgorithmES384}},
		{"p521", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP521)}, []azkeys.SignatureAlgorithm{azkeys.SignatureAlgorithmES512}},
	}
	msg := []byte("the message")
	for _, c := range cases {
		created, err := kc.CreateKey(ctx, c.name, c.p, nil)
		if err != nil {
			t.Fatalf("create %s: %v", c.name, err)
		}
		k := created.Key
		if k.KID.Name() != c.name || k.KID.Version() == "" {
			t.Fatalf("kid %s", *k.KID)
		}
		if c.p.KeySize != nil && len(k.N)*8 != int(*c.p.KeySize) {
			t.Fatalf("%s: modulus is %d bits", c.name, len(k.N)*8)
		}
		pub := publicKey(t, k)
		for _, alg := range c.algs {
			d := digest(hashes[string(alg)[2:]], msg)
			signed, err := kc.Sign(ctx, c.name, k.KID.Version(), azkeys.SignParameters{Algorithm: to.Ptr(alg), Value: d}, nil)
			if err != nil {
				t.Fatalf("sign %s %s: %v", c.name, alg, err)
			}
			if *signed.KID != *k.KID {
				t.Fatalf("sign answered for %s, want %s", *signed.KID, *k.KID)
			}
			if err := verifyLocally(t, pub, alg, d, signed.Result); err != nil {
				t.Fatalf("%s %s: Go's crypto rejects the server's signature: %v", c.name, alg, err)
			}
			for _, tc := range []struct {
				digest []byte
				want   bool
			}{{d, true}, {digest(hashes[string(alg)[2:]], []byte("another message")), false}} {
				v, err := kc.Verify(ctx, c.name, "", azkeys.VerifyParameters{Algorithm: to.Ptr(alg), Digest: tc.digest, Signature: signed.Result}, nil)
				if err != nil || *v.Value != tc.want {
					t.Fatalf("verify %s %s: %v %v, want %v", c.name, alg, v.Value, err, tc.want)
				}
			}
		}
	}
}

// RSA encryption and wrapping round-trip through the server, and data
// encrypted locally with the returned public key decrypts on the server.
// AES keys round-trip GCM (with AAD) and KW.
func TestKeyEncryptDecryptWrap(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	kc := keysClient(t, env)
	ctx := context.Background()
	created, err := kc.CreateKey(ctx, "rsa", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](2048)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := publicKey(t, created.Key).(*rsa.PublicKey)
	plain := []byte("a 32-byte data encryption key!!!")
	for _, alg := range []azkeys.EncryptionAlgorithm{azkeys.EncryptionAlgorithmRSA15, azkeys.EncryptionAlgorithmRSAOAEP, azkeys.EncryptionAlgorithmRSAOAEP256} {
		enc, err := kc.Encrypt(ctx, "rsa", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: plain}, nil)
		if err != nil {
			t.Fatalf("encrypt %s: %v", alg, err)
		}
		if len(enc.Result) != 256 || bytes.Contains(enc.Result, plain) {
			t.Fatalf("encrypt %s: %d-byte result", alg, len(enc.Result))
		}
		dec, err := kc.Decrypt(ctx, "rsa", created.Key.KID.Version(), azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: enc.Result}, nil)
		if err != nil || !bytes.Equal(dec.Result, plain) {
			t.Fatalf("decrypt %s: %q %v", alg, dec.Result, err)
		}
		wrapped, err := kc.WrapKey(ctx, "rsa", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: plain}, nil)
		if err != nil {
			t.Fatalf("wrap %s: %v", alg, err)
		}
		unwrapped, err := kc.UnwrapKey(ctx, "rsa", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: wrapped.Result}, nil)
		if err != nil || !bytes.Equal(unwrapped.Result, plain) {
			t.Fatalf("unwrap %s: %v", alg, err)
		}
	}
	// Encrypted by Go with the public JWK, decrypted by the server.
	local := map[azkeys.EncryptionAlgorithm]func() ([]byte, error){
		azkeys.EncryptionAlgorithmRSA15: func() ([]byte, error) {
			//lint:ignore SA1019 Key Vault's RSA1_5 is PKCS #1 v1.5 encryption; clients may still use it.
			return rsa.EncryptPKCS1v15(rand.Reader, pub, plain)
		},
		azkeys.EncryptionAlgorithmRSAOAEP:    func() ([]byte, error) { return rsa.EncryptOAEP(crypto.SHA1.New(), rand.Reader, pub, plain, nil) },
		azkeys.EncryptionAlgorithmRSAOAEP256: func() ([]byte, error) { return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, plain, nil) },
	}
	for alg, enc := range local {
		ct, err := enc()
		if err != nil {
			t.Fatal(err)
		}
		dec, err := kc.Decrypt(ctx, "rsa", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: ct}, nil)
		if err != nil || !bytes.Equal(dec.Result, plain) {
			t.Fatalf("server decrypt of local %s: %v", alg, err)
		}
	}

	// AES: 128, 192 and 256-bit keys, GCM and KW.
	for _, size := range []int32{128, 192, 256} {
		name := fmt.Sprintf("aes%d", size)
		k, err := kc.CreateKey(ctx, name, azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeOct), KeySize: to.Ptr(size)}, nil)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if len(k.Key.K) != 0 {
			t.Fatalf("the server returned the AES key itself")
		}
		gcm := azkeys.EncryptionAlgorithm(fmt.Sprintf("A%dGCM", size))
		aad := []byte("header")
		enc, err := kc.Encrypt(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(gcm), Value: plain, AdditionalAuthenticatedData: aad}, nil)
		if err != nil {
			t.Fatalf("%s: %v", gcm, err)
		}
		if len(enc.IV) != 12 || len(enc.AuthenticationTag) != 16 {
			t.Fatalf("%s: iv %d bytes, tag %d bytes", gcm, len(enc.IV), len(enc.AuthenticationTag))
		}
		dec, err := kc.Decrypt(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(gcm), Value: enc.Result, IV: enc.IV, AuthenticationTag: enc.AuthenticationTag, AdditionalAuthenticatedData: aad}, nil)
		if err != nil || !bytes.Equal(dec.Result, plain) {
			t.Fatalf("%s decrypt: %v", gcm, err)
		}
		// A wrong AAD fails authentication.
		_, err = kc.Decrypt(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(gcm), Value: enc.Result, IV: enc.IV, AuthenticationTag: enc.AuthenticationTag, AdditionalAuthenticatedData: []byte("other")}, nil)
		respErr(t, err, http.StatusBadRequest, "BadParameter")
		kw := azkeys.EncryptionAlgorithm(fmt.Sprintf("A%dKW", size))
		w, err := kc.WrapKey(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(kw), Value: plain}, nil)
		if err != nil || len(w.Result) != len(plain)+8 {
			t.Fatalf("%s wrap: %v", kw, err)
		}
		u, err := kc.UnwrapKey(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(kw), Value: w.Result}, nil)
		if err != nil || !bytes.Equal(u.Result, plain) {
			t.Fatalf("%s unwrap: %v", kw, err)
		}
	}
}

// The whole key lifecycle through azkeys: import, get, update, rotate,
// list and versions, delete, recover, purge, backup and restore, rng.
func TestKeyLifecycle(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	kc := keysClient(t, env)
	ctx := context.Background()

	// Import an RSA key made here; the server signs with it and Go's crypto
	// verifies with the key we kept.
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwk := &azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeRSA), N: priv.N.Bytes(), E: big.NewInt(int64(priv.E)).Bytes(), D: priv.D.Bytes(),
		P: priv.Primes[0].Bytes(), Q: priv.Primes[1].Bytes(), DP: priv.Precomputed.Dp.Bytes(), DQ: priv.Precomputed.Dq.Bytes(), QI: priv.Precomputed.Qinv.Bytes()}
	imp, err := kc.ImportKey(ctx, "imported", azkeys.ImportKeyParameters{Key: jwk, Tags: map[string]*string{"origin": to.Ptr("test")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imp.Key.N, priv.N.Bytes()) || len(imp.Key.D) != 0 {
		t.Fatal("imported key's public part differs, or private part was returned")
	}
	d := sha512.Sum512([]byte("hello"))
	sig, err := kc.Sign(ctx, "imported", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmRS512), Value: d[:]}, nil)
	if err != nil || rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA512, d[:], sig.Result) != nil {
		t.Fatalf("sign with imported key: %v", err)
	}
	// An imported EC key, and an imported AES key.
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ecb, _ := ecPriv.Bytes()
	ecPub, _ := ecPriv.PublicKey.Bytes()
	if _, err := kc.ImportKey(ctx, "imported-ec", azkeys.ImportKeyParameters{Key: &azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeEC), Crv: to.Ptr(azkeys.CurveNameP384),
		X: ecPub[1:49], Y: ecPub[49:], D: ecb}}, nil); err != nil {
		t.Fatal(err)
	}
	d384 := digest(crypto.SHA384, []byte("x"))
	esig, err := kc.Sign(ctx, "imported-ec", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmES384), Value: d384}, nil)
	if err != nil || verifyLocally(t, &ecPriv.PublicKey, azkeys.SignatureAlgorithmES384, d384, esig.Result) != nil {
		t.Fatalf("sign with imported EC key: %v", err)
	}
	aesKey := make([]byte, 32)
	rand.Read(aesKey)
	if _, err := kc.ImportKey(ctx, "imported-aes", azkeys.ImportKeyParameters{Key: &azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeOct), K: aesKey}}, nil); err != nil {
		t.Fatal(err)
	}

	// Get, latest and by version.
	got, err := kc.GetKey(ctx, "imported", "", nil)
	if err != nil || *got.Key.KID != *imp.Key.KID || *got.Tags["origin"] != "test" {
		t.Fatalf("get: %v", err)
	}
	// Update: restrict key_ops, add tags, set exp.
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	up, err := kc.UpdateKey(ctx, "imported", "", azkeys.UpdateKeyParameters{KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationVerify)},
		Tags: map[string]*string{"a": to.Ptr("b")}, KeyAttributes: &azkeys.KeyAttributes{Expires: &exp}}, nil)
	if err != nil || len(up.Key.KeyOps) != 1 || *up.Tags["a"] != "b" || !up.Attributes.Expires.Equal(exp) {
		t.Fatalf("update: %+v %v", up, err)
	}
	_, err = kc.Sign(ctx, "imported", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmRS256), Value: d[:32]}, nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")

	// Rotate makes a new version with new material and the same key_ops.
	rot, err := kc.RotateKey(ctx, "imported", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rot.Key.KID.Version() == imp.Key.KID.Version() || bytes.Equal(rot.Key.N, imp.Key.N) || len(rot.Key.KeyOps) != 1 {
		t.Fatalf("rotate: %+v", rot.Key)
	}
	// The old version still works for what it allowed.
	old, err := kc.GetKey(ctx, "imported", imp.Key.KID.Version(), nil)
	if err != nil || !bytes.Equal(old.Key.N, priv.N.Bytes()) {
		t.Fatalf("old version: %v", err)
	}

	// Versions and list pages.
	versions, _ := collect(t, kc.NewListKeyPropertiesVersionsPager("imported", nil), func(p azkeys.ListKeyPropertiesVersionsResponse) []string {
		return each(p.Value, func(k *azkeys.KeyProperties) string { return k.KID.Version() })
	})
	if len(versions) != 2 || !slices.Contains(versions, rot.Key.KID.Version()) {
		t.Fatalf("versions: %v", versions)
	}
	for i := range 30 {
		if _, err := kc.CreateKey(ctx, fmt.Sprintf("bulk-%02d", i), azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	names, pages := collect(t, kc.NewListKeyPropertiesPager(nil), func(p azkeys.ListKeyPropertiesResponse) []string {
		return each(p.Value, func(k *azkeys.KeyProperties) string { return k.KID.Name() })
	})
	if len(names) != 33 || pages < 2 {
		t.Fatalf("list: %d keys over %d pages", len(names), pages)
	}

	// Backup, delete, purge, restore: the restored key signs again.
	backup, err := kc.BackupKey(ctx, "imported-ec", nil)
	if err != nil {
		t.Fatal(err)
	}
	del, err := kc.DeleteKey(ctx, "imported-ec", nil)
	if err != nil || del.RecoveryID == nil || del.ScheduledPurgeDate == nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := kc.GetKey(ctx, "imported-ec", "", nil); err == nil {
		t.Fatal("a deleted key is still readable")
	}
	gd, err := kc.GetDeletedKey(ctx, "imported-ec", nil)
	if err != nil || gd.Key.KID.Name() != "imported-ec" {
		t.Fatalf("get deleted: %v", err)
	}
	deleted, _ := collect(t, kc.NewListDeletedKeyPropertiesPager(nil), func(p azkeys.ListDeletedKeyPropertiesResponse) []string {
		return each(p.Value, func(k *azkeys.DeletedKeyProperties) string { return k.KID.Name() })
	})
	if !slices.Equal(deleted, []string{"imported-ec"}) {
		t.Fatalf("deleted keys: %v", deleted)
	}
	if _, err := kc.RecoverDeletedKey(ctx, "imported-ec", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.DeleteKey(ctx, "imported-ec", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.PurgeDeletedKey(ctx, "imported-ec", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.GetDeletedKey(ctx, "imported-ec", nil); err == nil {
		t.Fatal("purged key still listed as deleted")
	}
	res, err := kc.RestoreKey(ctx, azkeys.RestoreKeyParameters{KeyBackup: backup.Value}, nil)
	if err != nil || res.Key.KID.Name() != "imported-ec" {
		t.Fatalf("restore: %v", err)
	}
	esig, err = kc.Sign(ctx, "imported-ec", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmES384), Value: d384}, nil)
	if err != nil || verifyLocally(t, &ecPriv.PublicKey, azkeys.SignatureAlgorithmES384, d384, esig.Result) != nil {
		t.Fatalf("sign with restored key: %v", err)
	}
	// Restoring over a live key is a conflict.
	_, err = kc.RestoreKey(ctx, azkeys.RestoreKeyParameters{KeyBackup: backup.Value}, nil)
	respErr(t, err, http.StatusConflict, "Conflict")

	rnd, err := kc.GetRandomBytes(ctx, azkeys.GetRandomBytesParameters{Count: to.Ptr[int32](32)}, nil)
	if err != nil || len(rnd.Value) != 32 {
		t.Fatalf("rng: %v", err)
	}
	rnd2, _ := kc.GetRandomBytes(ctx, azkeys.GetRandomBytesParameters{Count: to.Ptr[int32](32)}, nil)
	if bytes.Equal(rnd.Value, rnd2.Value) {
		t.Fatal("rng returned the same bytes twice")
	}

	// No private key or AES key is in the store file in the clear, raw or
	// in the base64 of its JWK.
	for label, secret := range map[string][]byte{"RSA d": priv.D.Bytes(), "EC d": ecb, "AES k": aesKey} {
		if inStore(t, env, secret) {
			t.Fatalf("%s is in the store file in the clear", label)
		}
	}
}

// Each refusal has Azure's status and code.
func TestKeyNegatives(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	kc := keysClient(t, env)
	ctx := context.Background()
	_, err := kc.CreateKey(ctx, "signer", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA),
		KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationSign), to.Ptr(azkeys.KeyOperationVerify)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	forbidden := func(err error, inner string) {
		t.Helper()
		respErr(t, err, http.StatusForbidden, "Forbidden")
		// The SDK's error text carries the response body, inner code included.
		if !strings.Contains(err.Error(), inner) {
			t.Fatalf("error lacks inner code %s: %v", inner, err)
		}
	}
	// An operation not in key_ops.
	_, err = kc.Encrypt(ctx, "signer", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: []byte("x")}, nil)
	forbidden(err, "KeyOperationForbidden")
	// A wrong algorithm for the key type, and a digest of the wrong length.
	_, err = kc.Sign(ctx, "signer", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmES256), Value: d[:]}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	_, err = kc.Sign(ctx, "signer", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmRS256), Value: d[:20]}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	// A disabled key.
	if _, err := kc.UpdateKey(ctx, "signer", "", azkeys.UpdateKeyParameters{KeyAttributes: &azkeys.KeyAttributes{Enabled: to.Ptr(false)}}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = kc.Sign(ctx, "signer", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmRS256), Value: d[:]}, nil)
	forbidden(err, "KeyDisabled")
	// An expired key may not sign, but may still verify.
	past := time.Now().Add(-time.Hour)
	if _, err := kc.CreateKey(ctx, "expired", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), KeyAttributes: &azkeys.KeyAttributes{Expires: &past}}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = kc.Sign(ctx, "expired", "", azkeys.SignParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmES256), Value: d[:]}, nil)
	forbidden(err, "KeyExpired")
	if _, err := kc.Verify(ctx, "expired", "", azkeys.VerifyParameters{Algorithm: to.Ptr(azkeys.SignatureAlgorithmES256), Digest: d[:], Signature: make([]byte, 64)}, nil); err != nil {
		t.Fatalf("verify with an expired key: %v", err)
	}
	// Malformed JWKs.
	for label, j := range map[string]*azkeys.JSONWebKey{
		"no kty":        {N: []byte{1}},
		"rsa without d": {Kty: to.Ptr(azkeys.KeyTypeRSA), N: make([]byte, 256), E: []byte{1, 0, 1}},
		"ec off curve":  {Kty: to.Ptr(azkeys.KeyTypeEC), Crv: to.Ptr(azkeys.CurveNameP256), X: make([]byte, 32), Y: make([]byte, 32), D: []byte{1}},
		"aes 100 bits":  {Kty: to.Ptr(azkeys.KeyTypeOct), K: make([]byte, 12)},
		"hsm kty":       {Kty: to.Ptr(azkeys.KeyTypeRSAHSM), N: make([]byte, 256)},
	} {
		_, err := kc.ImportKey(ctx, "bad", azkeys.ImportKeyParameters{Key: j}, nil)
		var re *azcore.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest || re.ErrorCode != "BadParameter" {
			t.Fatalf("import %s: %v", label, err)
		}
	}
	// Unsupported creations.
	for label, p := range map[string]azkeys.CreateKeyParameters{
		"rsa 1024":  {Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](1024)},
		"bad curve": {Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveName("P-999"))},
		"hsm":       {Kty: to.Ptr(azkeys.KeyTypeECHSM)},
		"bad op":    {Kty: to.Ptr(azkeys.KeyTypeEC), KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationEncrypt)}},
	} {
		_, err := kc.CreateKey(ctx, "bad", p, nil)
		var re *azcore.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
			t.Fatalf("create %s: %v", label, err)
		}
	}
	// An oversized body is refused before it is parsed.
	tok := adminToken(t, env, env.Endpoints.Resource())
	resp, e := raw(t, env, "POST", "/keys/signer/sign?api-version=7.6", tok, `{"alg":"RS256","value":"`+strings.Repeat("A", 70<<10)+`"}`)
	expect(t, resp, e, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge")
	// A field that is not base64url is a bad request, not a server error.
	resp, e = raw(t, env, "POST", "/keys/signer/sign?api-version=7.6", tok, `{"alg":"RS256","value":"!!!"}`)
	expect(t, resp, e, http.StatusBadRequest, "BadParameter")
	// AES-GCM draws its own IV; a caller's is refused.
	if _, err := kc.CreateKey(ctx, "aes", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeOct)}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = kc.Encrypt(ctx, "aes", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmA256GCM), Value: []byte("x"), IV: make([]byte, 12)}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	// Release and attestation are not supported, and say so.
	for label, call := range map[string]func() error{
		"attestation": func() error { _, err := kc.GetKeyAttestation(ctx, "signer", "", nil); return err },
		"release": func() error {
			_, err := kc.Release(ctx, "signer", "0123456789abcdef0123456789abcdef", azkeys.ReleaseParameters{TargetAttestationToken: to.Ptr("x")}, nil)
			return err
		},
	} {
		if err := call(); !isStatus(err, http.StatusBadRequest, "BadParameter") || !strings.Contains(err.Error(), "NotSupported") {
			t.Fatalf("%s: %v", label, err)
		}
	}
	_, err = kc.GetRandomBytes(ctx, azkeys.GetRandomBytesParameters{Count: to.Ptr[int32](1000)}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")
	// A key of an unknown name.
	_, err = kc.GetKey(ctx, "nope", "", nil)
	respErr(t, err, http.StatusNotFound, "KeyNotFound")
}
