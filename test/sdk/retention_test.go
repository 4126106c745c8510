package sdk

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// vaultClient returns a client for a vault with a fresh credential, so no
// token cached before a jump of the server's clock is reused.
func vaultClient(t *testing.T, env *testserver.Env, name string) *azsecrets.Client {
	t.Helper()
	fresh, err := client.New(env.Admin)
	if err != nil {
		t.Fatal(err)
	}
	c, err := azsecrets.NewClient(env.Endpoints.VaultURL(name), fresh.Cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: env.Client.HTTP}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestScheduledPurgeAndRecoveryLevels(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	env := testserver.Start(t, testserver.Options{Now: func() time.Time { return time.Unix(now.Load(), 0) }, TokenLifetime: 24 * time.Hour})
	ctx := context.Background()
	if _, err := env.Server.Vaults.Create(ctx, vault.Vault{Name: "short", TenantID: env.State.TenantID, SubscriptionID: env.Subscription, CreatedBy: env.State.AdminObjectID, RetentionDays: 7, PurgeProtection: true}); err != nil {
		t.Fatal(err)
	}
	demo, short := adminClient(t, env), vaultClient(t, env, "short")
	s, err := short.SetSecret(ctx, "a", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if *s.Attributes.RecoveryLevel != "CustomizedRecoverable" || *s.Attributes.RecoverableDays != 7 {
		t.Fatalf("recovery level %s/%d, want CustomizedRecoverable/7", *s.Attributes.RecoveryLevel, *s.Attributes.RecoverableDays)
	}
	for _, c := range []*azsecrets.Client{demo, short} {
		if _, err := c.SetSecret(ctx, "gone", azsecrets.SetSecretParameters{Value: to.Ptr("x")}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteSecret(ctx, "gone", nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err = short.PurgeDeletedSecret(ctx, "gone", nil)
	respErr(t, err, 403, "Forbidden")

	// Eight days later: the 7-day vault's secret is purged, the 90-day one is not.
	now.Add(8 * 24 * 3600)
	env.Server.PurgeDue(ctx)
	demo, short = vaultClient(t, env, "demo"), vaultClient(t, env, "short")
	_, err = short.GetDeletedSecret(ctx, "gone", nil)
	respErr(t, err, 404, "SecretNotFound")
	if _, err := demo.GetDeletedSecret(ctx, "gone", nil); err != nil {
		t.Fatalf("a secret within its retention was purged: %v", err)
	}
	// After 91 days it goes too, and the name is free again.
	now.Add(83 * 24 * 3600)
	env.Server.PurgeDue(ctx)
	demo = vaultClient(t, env, "demo")
	_, err = demo.GetDeletedSecret(ctx, "gone", nil)
	respErr(t, err, 404, "SecretNotFound")
	if _, err := demo.SetSecret(ctx, "gone", azsecrets.SetSecretParameters{Value: to.Ptr("again")}, nil); err != nil {
		t.Fatal(err)
	}
}

// Azure returns secrets outside their nbf/exp window (the attributes are
// advisory for secrets); a vault created with EnforceValidity refuses them.
func TestValidityWindow(t *testing.T) {
	env := testserver.Start(t, testserver.Options{})
	ctx := context.Background()
	if _, err := env.Server.Vaults.Create(ctx, vault.Vault{Name: "strict", TenantID: env.State.TenantID, SubscriptionID: env.Subscription, CreatedBy: env.State.AdminObjectID, EnforceValidity: true}); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	future := time.Now().Add(time.Hour).Truncate(time.Second)
	for name, c := range map[string]*azsecrets.Client{"demo": adminClient(t, env), "strict": vaultClient(t, env, "strict")} {
		if _, err := c.SetSecret(ctx, "expired", azsecrets.SetSecretParameters{Value: to.Ptr("x"), SecretAttributes: &azsecrets.SecretAttributes{Expires: &past}}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetSecret(ctx, "early", azsecrets.SetSecretParameters{Value: to.Ptr("x"), SecretAttributes: &azsecrets.SecretAttributes{NotBefore: &future}}, nil); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"expired", "early"} {
			got, err := c.GetSecret(ctx, s, "", nil)
			if name == "demo" {
				if err != nil {
					t.Fatalf("demo: %s refused, but Azure returns it: %v", s, err)
				}
				if s == "expired" && !got.Attributes.Expires.Equal(past) {
					t.Fatalf("exp = %v, want %v", got.Attributes.Expires, past)
				}
				continue
			}
			respErr(t, err, 403, "Forbidden")
		}
	}
	// nbf must precede exp.
	_, err := adminClient(t, env).SetSecret(ctx, "bad", azsecrets.SetSecretParameters{Value: to.Ptr("x"), SecretAttributes: &azsecrets.SecretAttributes{NotBefore: &future, Expires: &past}}, nil)
	respErr(t, err, 400, "BadParameter")
}
