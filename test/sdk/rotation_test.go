package sdk

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/cofferhq/coffer/internal/cli/client"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

func rotateAfter(after, expiry string) azkeys.KeyRotationPolicy {
	p := azkeys.KeyRotationPolicy{LifetimeActions: []*azkeys.LifetimeAction{{
		Trigger: &azkeys.LifetimeActionTrigger{TimeAfterCreate: to.Ptr(after)},
		Action:  &azkeys.LifetimeActionType{Type: to.Ptr(azkeys.KeyRotationPolicyActionRotate)},
	}}}
	if expiry != "" {
		p.Attributes = &azkeys.KeyRotationPolicyAttributes{ExpiryTime: to.Ptr(expiry)}
	}
	return p
}

// The routes, their validation, and rotation by hand and by schedule, with
// the real azkeys client and a clock the test moves.
func TestKeyRotationPolicy(t *testing.T) {
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	env := testserver.Start(t, testserver.Options{Now: now, PurgeInterval: 50 * time.Millisecond})
	kc := keysClient(t, env)
	ctx := context.Background()
	created, err := kc.CreateKey(ctx, "signer", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeEC), Curve: to.Ptr(azkeys.CurveNameP256)}, nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}

	// A key without a policy reports Key Vault's default: notify 30 days
	// before expiry, never rotate.
	def, err := kc.GetKeyRotationPolicy(ctx, "signer", nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if len(def.LifetimeActions) != 1 || *def.LifetimeActions[0].Action.Type != azkeys.KeyRotationPolicyActionNotify ||
		*def.LifetimeActions[0].Trigger.TimeBeforeExpiry != "P30D" || *def.ID != strings.TrimSuffix(env.Admin.VaultURL, "/")+"/keys/signer/rotationpolicy" {
		t.Fatalf("default policy = %s %s %s %s", *def.ID, *def.LifetimeActions[0].Action.Type, *def.LifetimeActions[0].Trigger.TimeBeforeExpiry, env.Admin.VaultURL)
	}
	_, err = kc.GetKeyRotationPolicy(ctx, "missing", nil)
	respErr(t, err, http.StatusNotFound, "KeyNotFound")
	_, err = kc.UpdateKeyRotationPolicy(ctx, "missing", rotateAfter("P30D", ""), nil)
	respErr(t, err, http.StatusNotFound, "KeyNotFound")

	notifyAfter := rotateAfter("P30D", "P90D")
	notifyAfter.LifetimeActions[0].Action.Type = to.Ptr(azkeys.KeyRotationPolicyActionNotify)
	bothTriggers := rotateAfter("P30D", "P90D")
	bothTriggers.LifetimeActions[0].Trigger.TimeBeforeExpiry = to.Ptr("P30D")
	twoRotates := rotateAfter("P30D", "P90D")
	twoRotates.LifetimeActions = append(twoRotates.LifetimeActions, twoRotates.LifetimeActions[0])
	unknownType := rotateAfter("P30D", "")
	unknownType.LifetimeActions[0].Action.Type = to.Ptr(azkeys.KeyRotationPolicyAction("Explode"))
	beforeTooSoon := azkeys.KeyRotationPolicy{LifetimeActions: []*azkeys.LifetimeAction{{
		Trigger: &azkeys.LifetimeActionTrigger{TimeBeforeExpiry: to.Ptr("P6D")},
		Action:  &azkeys.LifetimeActionType{Type: to.Ptr(azkeys.KeyRotationPolicyActionRotate)},
	}}, Attributes: &azkeys.KeyRotationPolicyAttributes{ExpiryTime: to.Ptr("P90D")}}
	for name, p := range map[string]azkeys.KeyRotationPolicy{
		"rotate sooner than 7 days after creation": rotateAfter("P6D", ""),
		"rotate in hours, under 7 days":            rotateAfter("PT100H", ""),
		"expiry under 28 days":                     rotateAfter("P7D", "P27D"),
		"rotate within 7 days of expiry":           rotateAfter("P25D", "P28D"),
		"notify before expiry under 7 days":        beforeTooSoon,
		"not a duration":                           rotateAfter("90 days", ""),
		"notify on timeAfterCreate":                notifyAfter,
		"both triggers":                            bothTriggers,
		"two rotate actions":                       twoRotates,
		"unknown action type":                      unknownType,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := kc.UpdateKeyRotationPolicy(ctx, "signer", p, nil)
			respErr(t, err, http.StatusBadRequest, "BadParameter")
		})
	}

	set, err := kc.UpdateKeyRotationPolicy(ctx, "signer", rotateAfter("P7D", "P28D"), nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if set.Attributes == nil || set.Attributes.Created == nil || set.Attributes.Updated == nil || *set.Attributes.ExpiryTime != "P28D" {
		t.Fatalf("stored policy = %+v", set.KeyRotationPolicy)
	}
	got, err := kc.GetKeyRotationPolicy(ctx, "signer", nil)
	if err != nil || *got.LifetimeActions[0].Trigger.TimeAfterCreate != "P7D" || *got.LifetimeActions[0].Action.Type != azkeys.KeyRotationPolicyActionRotate {
		t.Fatalf("GetKeyRotationPolicy = %+v, %v", got.KeyRotationPolicy, err)
	}

	// A rotation by hand gives the new version the policy's expiry.
	rotated, err := kc.RotateKey(ctx, "signer", nil)
	if err != nil {
		t.Fatal(client.Describe(err))
	}
	if rotated.Key.KID.Version() == created.Key.KID.Version() || rotated.Attributes.Expires == nil {
		t.Fatalf("rotate made %s, expires %v", rotated.Key.KID.Version(), rotated.Attributes.Expires)
	}
	if want := now().AddDate(0, 0, 28); rotated.Attributes.Expires.Sub(want).Abs() > time.Minute {
		t.Fatalf("rotated version expires %v, want about %v", rotated.Attributes.Expires, want)
	}

	// Six days on, the schedule leaves it alone; eight days on, it rotates.
	offset.Store(int64(6 * 24 * time.Hour))
	env.Server.PurgeDue(ctx)
	kc = keysClient(t, env) // the old token has expired by the server's clock
	if k, err := kc.GetKey(ctx, "signer", "", nil); err != nil || k.Key.KID.Version() != rotated.Key.KID.Version() {
		t.Fatalf("rotated before its trigger: %v", err)
	}
	offset.Store(int64(8 * 24 * time.Hour))
	kc = keysClient(t, env)
	deadline := time.Now().Add(30 * time.Second)
	for {
		k, err := kc.GetKey(ctx, "signer", "", nil)
		if err != nil {
			t.Fatal(client.Describe(err))
		}
		if k.Key.KID.Version() != rotated.Key.KID.Version() {
			if want := now().AddDate(0, 0, 28); k.Attributes.Expires == nil || k.Attributes.Expires.Sub(want).Abs() > time.Minute {
				t.Fatalf("auto-rotated version expires %v, want about %v", k.Attributes.Expires, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the scheduled job did not rotate the key after its trigger")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// An empty action list restores the default actions.
	reset, err := kc.UpdateKeyRotationPolicy(ctx, "signer", azkeys.KeyRotationPolicy{LifetimeActions: []*azkeys.LifetimeAction{}}, nil)
	if err != nil || len(reset.LifetimeActions) != 1 || *reset.LifetimeActions[0].Action.Type != azkeys.KeyRotationPolicyActionNotify {
		t.Fatalf("reset = %+v, %v", reset.KeyRotationPolicy, err)
	}

	// A certificate's key follows its certificate's policy, not one of its own.
	cc := certsClient(t, env)
	if _, err := cc.CreateCertificate(ctx, "web", azcertificates.CreateCertificateParameters{CertificatePolicy: &azcertificates.CertificatePolicy{
		X509CertificateProperties: &azcertificates.X509CertificateProperties{Subject: to.Ptr("CN=web.example.com")},
	}}, nil); err != nil {
		t.Fatal(client.Describe(err))
	}
	awaitCertificate(t, cc, "web")
	_, err = kc.UpdateKeyRotationPolicy(ctx, "web", rotateAfter("P30D", ""), nil)
	respErr(t, err, http.StatusForbidden, "Forbidden")
}
