// Package sdk runs the real, unmodified Azure SDK for Go against a live
// Coffer server. Only ClientOptions differ from what a user of Azure writes:
// a transport that trusts the test CA and resolves *.localhost, and
// DisableInstanceDiscovery.
package sdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// sdkClient builds azsecrets the way an Azure user would, plus the two
// ClientOptions a private endpoint needs.
func sdkClient(t *testing.T, env *testserver.Env, tenant, clientID, secret string) *azsecrets.Client {
	t.Helper()
	hc, err := httpclient.New(env.Admin.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	opts := azcore.ClientOptions{Transport: hc, Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: env.Admin.AuthorityHost}}
	cred, err := azidentity.NewClientSecretCredential(tenant, clientID, secret, &azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := azsecrets.NewClient(env.Admin.VaultURL, cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: hc}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func adminClient(t *testing.T, env *testserver.Env) *azsecrets.Client {
	return sdkClient(t, env, env.Admin.TenantID, env.Admin.ClientID, env.Admin.ClientSecret)
}

// respErr asserts err is an HTTP error with the given status and code.
func respErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a ResponseError; want %d %s", err, status, code)
	}
	if re.StatusCode != status || re.ErrorCode != code {
		t.Fatalf("got %d %s, want %d %s (%v)", re.StatusCode, re.ErrorCode, status, code, client.Describe(err))
	}
}

func TestSecretLifecycle(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	c := adminClient(t, env)
	ctx := context.Background()

	set1, err := c.SetSecret(ctx, "db-password", azsecrets.SetSecretParameters{
		Value: to.Ptr("hunter2"), ContentType: to.Ptr("text/plain"), Tags: map[string]*string{"env": to.Ptr("prod")},
	}, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if *set1.Value != "hunter2" || set1.ID.Name() != "db-password" || len(set1.ID.Version()) != 32 {
		t.Fatalf("SetSecret = %+v", set1.Secret)
	}
	if !strings.HasPrefix(string(*set1.ID), env.Admin.VaultURL+"secrets/db-password/") {
		t.Fatalf("id %s is not under the vault URL %s", *set1.ID, env.Admin.VaultURL)
	}
	a := set1.Attributes
	if !*a.Enabled || a.Created == nil || a.Updated == nil || *a.RecoveryLevel != "Recoverable+Purgeable" || *a.RecoverableDays != 90 {
		t.Fatalf("attributes = %+v", a)
	}
	if time.Since(*a.Created) > time.Minute || a.Created.Nanosecond() != 0 {
		t.Fatalf("created %v is not a recent Unix-second time", *a.Created)
	}

	set2, err := c.SetSecret(ctx, "db-password", azsecrets.SetSecretParameters{Value: to.Ptr("correct horse")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	latest, err := c.GetSecret(ctx, "db-password", "", nil)
	if err != nil || *latest.Value != "correct horse" || latest.ID.Version() != set2.ID.Version() {
		t.Fatalf("GetSecret(latest) = %+v, %v", latest.Secret, err)
	}
	if latest.PreviousVersion == nil || *latest.PreviousVersion != set1.ID.Version() {
		t.Fatalf("previousVersion = %v, want %s", latest.PreviousVersion, set1.ID.Version())
	}
	old, err := c.GetSecret(ctx, "db-password", set1.ID.Version(), nil)
	if err != nil || *old.Value != "hunter2" || *old.ContentType != "text/plain" || *old.Tags["env"] != "prod" {
		t.Fatalf("GetSecret(v1) = %+v, %v", old.Secret, err)
	}

	// Versions.
	versions, _ := collect(t, c.NewListSecretPropertiesVersionsPager("db-password", nil), func(p azsecrets.ListSecretPropertiesVersionsResponse) []string {
		return each(p.Value, func(v *azsecrets.SecretProperties) string { return v.ID.Version() })
	})
	if len(versions) != 2 {
		t.Fatalf("versions = %v", versions)
	}

	// Update properties of the old version: disable it, then reads fail.
	upd, err := c.UpdateSecretProperties(ctx, "db-password", set1.ID.Version(), azsecrets.UpdateSecretPropertiesParameters{
		SecretAttributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(false), Expires: to.Ptr(time.Now().Add(48 * time.Hour).Truncate(time.Second))},
		Tags:             map[string]*string{"rotated": to.Ptr("yes")},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if *upd.Attributes.Enabled || upd.Value != nil || *upd.Tags["rotated"] != "yes" || upd.Attributes.Expires == nil {
		t.Fatalf("UpdateSecretProperties = %+v", upd.Secret)
	}
	_, err = c.GetSecret(ctx, "db-password", set1.ID.Version(), nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")
	if _, err := c.GetSecret(ctx, "db-password", "", nil); err != nil {
		t.Fatalf("disabling v1 affected the latest version: %v", err)
	}

	// A secret created disabled.
	if _, err := c.SetSecret(ctx, "off", azsecrets.SetSecretParameters{Value: to.Ptr("x"), SecretAttributes: &azsecrets.SecretAttributes{Enabled: to.Ptr(false)}}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetSecret(ctx, "off", "", nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")

	// Delete, get deleted, recover.
	del, err := c.DeleteSecret(ctx, "db-password", nil)
	if err != nil {
		t.Fatal(err)
	}
	if del.RecoveryID == nil || del.DeletedDate == nil || del.ScheduledPurgeDate == nil || del.Value != nil {
		t.Fatalf("DeleteSecret = %+v", del.DeletedSecret)
	}
	if d := del.ScheduledPurgeDate.Sub(*del.DeletedDate); d != 90*24*time.Hour {
		t.Fatalf("scheduled purge is %v after deletion, want 90 days", d)
	}
	_, err = c.GetSecret(ctx, "db-password", "", nil)
	respErr(t, err, http.StatusNotFound, "SecretNotFound")
	_, err = c.SetSecret(ctx, "db-password", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil)
	respErr(t, err, http.StatusConflict, "Conflict")
	gd, err := c.GetDeletedSecret(ctx, "db-password", nil)
	if err != nil || gd.ID.Version() != set2.ID.Version() {
		t.Fatalf("GetDeletedSecret = %+v, %v", gd.DeletedSecret, err)
	}
	deletedNames, _ := collect(t, c.NewListDeletedSecretPropertiesPager(nil), func(p azsecrets.ListDeletedSecretPropertiesResponse) []string {
		return each(p.Value, func(d *azsecrets.DeletedSecretProperties) string { return d.ID.Name() })
	})
	if fmt.Sprint(deletedNames) != "[db-password]" {
		t.Fatalf("deleted list = %v", deletedNames)
	}
	if _, err := c.RecoverDeletedSecret(ctx, "db-password", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetSecret(ctx, "db-password", set2.ID.Version(), nil); err != nil || *got.Value != "correct horse" {
		t.Fatalf("GetSecret after recover = %v", err)
	}

	// Backup, delete, purge, restore.
	bk, err := c.BackupSecret(ctx, "db-password", nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(bk.Value, []byte("hunter2")) || bytes.Contains(bk.Value, []byte("correct horse")) {
		t.Fatal("the backup blob holds a plaintext value")
	}
	if _, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: bk.Value}, nil); err == nil {
		t.Fatal("restore over a live secret succeeded")
	} else {
		respErr(t, err, http.StatusConflict, "Conflict")
	}
	if _, err := c.DeleteSecret(ctx, "db-password", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PurgeDeletedSecret(ctx, "db-password", nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetDeletedSecret(ctx, "db-password", nil)
	respErr(t, err, http.StatusNotFound, "SecretNotFound")
	rs, err := c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: bk.Value}, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if rs.ID.Name() != "db-password" {
		t.Fatalf("RestoreSecret = %+v", rs.Secret)
	}
	for ver, want := range map[string]string{set2.ID.Version(): "correct horse", "": "correct horse"} {
		if got, err := c.GetSecret(ctx, "db-password", ver, nil); err != nil || *got.Value != want {
			t.Fatalf("GetSecret(%q) after restore = %v", ver, err)
		}
	}
	// The disabled flag of v1 survived the round trip.
	_, err = c.GetSecret(ctx, "db-password", set1.ID.Version(), nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")

	// A tampered backup is refused with a clear error.
	bad := bytes.Clone(bk.Value)
	bad[len(bad)/2] ^= 0xff
	_, err = c.RestoreSecret(ctx, azsecrets.RestoreSecretParameters{SecretBackup: bad}, nil)
	respErr(t, err, http.StatusBadRequest, "BadParameter")

	// Nothing above left a plaintext value in the store file.
	store := env.ReadStore(t)
	for _, v := range []string{"hunter2", "correct horse"} {
		if bytes.Contains(store, []byte(v)) {
			t.Fatalf("store file holds plaintext %q", v)
		}
	}
}

func TestListPagesOverSixtySecrets(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	c := adminClient(t, env)
	ctx := context.Background()
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.SetSecret(ctx, fmt.Sprintf("s-%03d", i), azsecrets.SetSecretParameters{Value: to.Ptr(fmt.Sprint(i))}, nil)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	pages := 0
	for p := c.NewListSecretPropertiesPager(nil); p.More(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page.Value) > 25 {
			t.Fatalf("page of %d items, over 25", len(page.Value))
		}
		if page.NextLink != nil && !strings.HasPrefix(*page.NextLink, "https://demo.vault.localhost:") {
			t.Fatalf("nextLink %q is not an absolute vault URL", *page.NextLink)
		}
		for _, s := range page.Value {
			if seen[s.ID.Name()] {
				t.Fatalf("%s listed twice", s.ID.Name())
			}
			seen[s.ID.Name()] = true
			if s.ID.Version() != "" {
				t.Fatalf("list item id %s carries a version", *s.ID)
			}
		}
	}
	if len(seen) != n || pages != 3 {
		t.Fatalf("listed %d secrets in %d pages, want %d in 3", len(seen), pages, n)
	}
}
