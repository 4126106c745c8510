package sync

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Every way a first sync fails sets Create False with its reason, says why
// in the condition and a Warning event, and writes no Secret (or leaves
// the one that is there alone).
func TestFailureReasons(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	s.serviceAccount(t, "default", "app")
	s.serviceAccount(t, "default", "denied")
	mi := s.workloadIdentity(t, "default", "app", "get")
	denied := s.workloadIdentity(t, "default", "denied") // no access policy
	s.setSecret(t, "present", "p")
	s.coffersClass(t, "default", "vault", mi.ClientID, "present")
	s.coffersClass(t, "default", "vault-denied", denied.ClientID, "present")
	s.coffersClass(t, "default", "vault-missing", mi.ClientID, "does-not-exist")
	s.apply(t, "default", "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: no-provider\nspec:\n  provider: nosuch\n")
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "taken"}, Data: map[string][]byte{"mine": []byte("user data")}}
	if err := s.kube.Client.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	startController(t, s.controllerOptions())

	tests := map[string]struct {
		secretSync, class, sa string
		mod                   func(*syncv1.SecretSync)
		reason                string
		mentions              []string
	}{
		"missing class":      {secretSync: "no-class", class: "absent", sa: "app", reason: syncv1.ReasonControllerSPCError, mentions: []string{"default/absent", "does not exist"}},
		"no such provider":   {secretSync: "no-provider", class: "no-provider", sa: "app", reason: syncv1.ReasonControllerSPCError, mentions: []string{"nosuch"}},
		"denied identity":    {secretSync: "denied", class: "vault-denied", sa: "denied", reason: syncv1.ReasonProviderError, mentions: []string{"Forbidden", denied.ClientID}},
		"missing object":     {secretSync: "missing", class: "vault-missing", sa: "app", reason: syncv1.ReasonProviderError, mentions: []string{"NotFound", "does-not-exist"}},
		"no service account": {secretSync: "ghost", class: "vault", sa: "ghost", reason: syncv1.ReasonUserInputValidationFailed, mentions: []string{"default/ghost", "does not exist"}},
		"no such file": {secretSync: "no-file", class: "vault", sa: "app", mod: source("elsewhere"),
			reason: syncv1.ReasonUserInputValidationFailed, mentions: []string{"elsewhere", "present"}},
		"bad secret type, tls key": {secretSync: "tls", class: "vault", sa: "app", mod: typed("kubernetes.io/tls"),
			reason: syncv1.ReasonUserInputValidationFailed, mentions: []string{"tls.crt"}},
		"bad secret type, refused by the apiserver": {secretSync: "docker", class: "vault", sa: "app", mod: typed("kubernetes.io/dockerconfigjson"),
			reason: syncv1.ReasonUserInputValidationFailed, mentions: []string{".dockerconfigjson"}},
		"a foreign Secret of that name": {secretSync: "taken", class: "vault", sa: "app",
			reason: syncv1.ReasonUserInputValidationFailed, mentions: []string{"default/taken", "not managed", syncv1.SecretLabel}},
	}
	for _, tc := range tests {
		s.secretSync(t, "default", tc.secretSync, tc.class, tc.sa, tc.mod, "present")
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := s.waitCondition(t, "default", tc.secretSync, syncv1.ConditionCreate, metav1.ConditionFalse, tc.reason)
			for _, m := range tc.mentions {
				if !strings.Contains(c.Message, m) {
					t.Errorf("condition message %q does not mention %q", c.Message, m)
				}
			}
			if msg := s.waitEvent(t, "default", tc.secretSync, tc.reason); msg != c.Message {
				t.Errorf("event %q, condition %q", msg, c.Message)
			}
			if strings.Contains(c.Message, "user data") {
				t.Errorf("the message holds a value: %q", c.Message)
			}
			if tc.secretSync != "taken" && s.secret(t, "default", tc.secretSync) != nil {
				t.Error("a Secret was written")
			}
		})
	}
	// The foreign Secret is as it was.
	got := s.secret(t, "default", "taken")
	if string(got.Data["mine"]) != "user data" || len(got.Data) != 1 || len(got.Labels) != 0 || len(got.OwnerReferences) != 0 || got.ResourceVersion != foreign.ResourceVersion {
		t.Errorf("the foreign Secret was touched: %+v", got.ObjectMeta)
	}
}

func source(path string) func(*syncv1.SecretSync) {
	return func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Data[0].SourcePath = path }
}

func typed(typ string) func(*syncv1.SecretSync) {
	return func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Type = typ }
}

// An outage of the provider, then of the vault, keeps the last good
// Secret, sets Update False with ProviderError and says so in an event;
// the provider's return brings Update back to True.
func TestOutageKeepsTheLastGoodSecret(t *testing.T) {
	s := startStack(t)
	s.serviceAccount(t, "default", "app")
	mi := s.workloadIdentity(t, "default", "app", "get")
	s.setSecret(t, "db", "good")
	s.coffersClass(t, "default", "vault", mi.ClientID, "db")
	s.secretSync(t, "default", "db", "vault", "app", nil, "db")
	startController(t, s.controllerOptions())
	good := s.waitSecret(t, "default", "db", "db", "good", time.Minute)
	force := func(v string) { s.force(t, "default", "db", v) }

	s.provider.Stop()
	force("provider-down")
	c := s.waitCondition(t, "default", "db", syncv1.ConditionUpdate, metav1.ConditionFalse, syncv1.ReasonProviderError)
	t.Logf("provider down: %s", c.Message)
	s.waitEvent(t, "default", "db", syncv1.ReasonProviderError)
	if sec := s.secret(t, "default", "db"); sec == nil || string(sec.Data["db"]) != "good" || sec.ResourceVersion != good.ResourceVersion {
		t.Fatal("the Secret changed during the provider's outage")
	}
	s.waitCondition(t, "default", "db", syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded)

	s.provider.Start()
	force("provider-back")
	s.waitCondition(t, "default", "db", syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonValueChangeOrForceUpdateDetected)

	s.env.Stop()
	force("vault-down")
	c = s.waitCondition(t, "default", "db", syncv1.ConditionUpdate, metav1.ConditionFalse, syncv1.ReasonProviderError)
	t.Logf("vault down: %s", c.Message)
	if sec := s.secret(t, "default", "db"); sec == nil || string(sec.Data["db"]) != "good" {
		t.Fatal("the Secret changed during the vault's outage")
	}
}
