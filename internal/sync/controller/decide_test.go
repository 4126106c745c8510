package controller

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

func testSync(mod ...func(*syncv1.SecretSync)) *syncv1.SecretSync {
	ss := &syncv1.SecretSync{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app", UID: "ss-uid", Generation: 1},
		Spec: syncv1.SecretSyncSpec{SecretProviderClassName: "spc", ServiceAccountName: "sa", SecretObject: syncv1.SecretObject{
			Type: "Opaque", Data: []syncv1.SecretObjectData{{SourcePath: "db", TargetKey: "password"}}}},
	}
	for _, m := range mod {
		m(ss)
	}
	return ss
}

func managedSecret(ss *syncv1.SecretSync, data string, mod ...func(*corev1.Secret)) *corev1.Secret {
	s := desiredSecret(ss, map[string][]byte{"password": []byte(data)})
	s.UID, s.ResourceVersion = "secret-uid", "7"
	for _, m := range mod {
		m(s)
	}
	return s
}

// plan decides about the existing Secret: it creates a missing one,
// leaves a user's own alone, refuses a type change, and writes only a
// difference.
func TestPlan(t *testing.T) {
	ss := testSync()
	want := desiredSecret(ss, map[string][]byte{"password": []byte("new")})
	tests := map[string]struct {
		current *corev1.Secret
		action  action
		reason  string // of the refusal
		check   func(t *testing.T, out *corev1.Secret)
	}{
		"none exists": {current: nil, action: actCreate},
		"the same":    {current: managedSecret(ss, "new"), action: actNone},
		"new data": {current: managedSecret(ss, "old"), action: actUpdate, check: func(t *testing.T, out *corev1.Secret) {
			if string(out.Data["password"]) != "new" || out.UID != "secret-uid" || out.ResourceVersion != "7" {
				t.Errorf("the update is not the current Secret with the new data: %+v", out.ObjectMeta)
			}
		}},
		"a user's Secret": {current: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app"}, Type: "Opaque", Data: map[string][]byte{"password": []byte("mine")}},
			reason: syncv1.ReasonUserInputValidationFailed},
		"labelled for another SecretSync": {current: managedSecret(ss, "new", func(s *corev1.Secret) { s.Labels[syncv1.SecretLabel] = "other" }),
			reason: syncv1.ReasonUserInputValidationFailed},
		"another type": {current: managedSecret(ss, "new", func(s *corev1.Secret) { s.Type = corev1.SecretTypeTLS }),
			reason: syncv1.ReasonUserInputValidationFailed},
		"a label added by hand": {current: managedSecret(ss, "new", func(s *corev1.Secret) { s.Labels["x"] = "y" }), action: actUpdate, check: func(t *testing.T, out *corev1.Secret) {
			if _, ok := out.Labels["x"]; ok {
				t.Error("a label the SecretSync does not ask for stays")
			}
		}},
		"an orphan of an earlier SecretSync of that name": {
			current: managedSecret(ss, "new", func(s *corev1.Secret) {
				s.OwnerReferences = []metav1.OwnerReference{{APIVersion: "secret-sync.x-k8s.io/v1alpha1", Kind: "SecretSync", Name: "app", UID: "old-uid"},
					{APIVersion: "v1", Kind: "ConfigMap", Name: "keep", UID: "cm"}}
			}),
			action: actUpdate, check: func(t *testing.T, out *corev1.Secret) {
				if len(out.OwnerReferences) != 2 || out.OwnerReferences[0].UID != "cm" || out.OwnerReferences[1].UID != "ss-uid" {
					t.Errorf("owners %+v: want the ConfigMap kept and the old SecretSync replaced", out.OwnerReferences)
				}
			}},
		"stringData set by hand": {current: managedSecret(ss, "new", func(s *corev1.Secret) { s.StringData = map[string]string{"x": "y"} }), action: actUpdate},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			act, out, err := plan(ss, tc.current, want)
			if tc.reason != "" {
				if err == nil || err.Reason != tc.reason {
					t.Fatalf("got %v, %v; want a refusal with %s", act, err, tc.reason)
				}
				if !strings.Contains(err.Error(), "ns/app") {
					t.Errorf("the refusal does not name the Secret: %v", err)
				}
				return
			}
			if err != nil || act != tc.action {
				t.Fatalf("got %v, %v; want %v", act, err, tc.action)
			}
			if tc.check != nil {
				tc.check(t, out)
			}
		})
	}
}

// desiredSecret carries the controller's label, the SecretSync as its one
// controlling owner, and exactly the labels and annotations asked for.
func TestDesiredSecret(t *testing.T) {
	ss := testSync(func(ss *syncv1.SecretSync) {
		ss.Spec.SecretObject.Labels = map[string]string{"team": "a"}
		ss.Spec.SecretObject.Annotations = map[string]string{"note": "n"}
		ss.Spec.SecretObject.Type = ""
	})
	s := desiredSecret(ss, map[string][]byte{"password": []byte("v")})
	if s.Labels[syncv1.SecretLabel] != "app" || s.Labels["team"] != "a" || len(s.Labels) != 2 || s.Annotations["note"] != "n" {
		t.Errorf("labels %v annotations %v", s.Labels, s.Annotations)
	}
	if s.Type != corev1.SecretTypeOpaque {
		t.Errorf("type %q, want Opaque by default", s.Type)
	}
	o := s.OwnerReferences
	if len(o) != 1 || o[0].Kind != "SecretSync" || o[0].APIVersion != "secret-sync.x-k8s.io/v1alpha1" || o[0].UID != "ss-uid" || o[0].Controller == nil || !*o[0].Controller || o[0].BlockOwnerDeletion != nil {
		t.Errorf("owner %+v", o)
	}
	if ss.Spec.SecretObject.Labels[syncv1.SecretLabel] != "" {
		t.Error("desiredSecret changed the SecretSync's labels")
	}
}

// secretData maps files to keys, splits tls.crt and tls.key, and names
// the missing file without any value.
func TestSecretData(t *testing.T) {
	files := map[string][]byte{"db": []byte("s3cret"), "other": []byte("x")}
	tests := map[string]struct {
		mod    func(*syncv1.SecretSync)
		reason string
		want   map[string]string
	}{
		"a file":       {want: map[string]string{"password": "s3cret"}},
		"no such file": {mod: func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Data[0].SourcePath = "absent" }, reason: syncv1.ReasonUserInputValidationFailed},
		"tls, a key that is not tls's": {mod: func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Type = "kubernetes.io/tls" },
			reason: syncv1.ReasonUserInputValidationFailed},
		"tls, a file that is no certificate": {mod: func(ss *syncv1.SecretSync) {
			ss.Spec.SecretObject.Type = "kubernetes.io/tls"
			ss.Spec.SecretObject.Data[0].TargetKey = "tls.crt"
		}, reason: syncv1.ReasonUserInputValidationFailed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ss := testSync()
			if tc.mod != nil {
				tc.mod(ss)
			}
			got, err := secretData(ss, files)
			if tc.reason != "" {
				if err == nil || err.Reason != tc.reason {
					t.Fatalf("got %v; want %s", err, tc.reason)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("the error holds a value: %v", err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("%v %v", got, err)
			}
			for k, v := range tc.want {
				if string(got[k]) != v {
					t.Errorf("%s = %q", k, got[k])
				}
			}
		})
	}
	_, err := secretData(testSync(func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Data[0].SourcePath = "absent" }), files)
	if !strings.Contains(err.Error(), "db, other") {
		t.Errorf("the error does not list the files: %v", err)
	}
}

// checkSpec refuses the controller's prefix in labels and annotations.
func TestCheckSpec(t *testing.T) {
	tests := map[string]struct {
		mod    func(*syncv1.SecretSync)
		reason string
	}{
		"fine":           {},
		"reserved label": {func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Labels = map[string]string{syncv1.SecretLabel: "x"} }, syncv1.ReasonInvalidClusterSecretLabelError},
		"reserved annotation": {func(ss *syncv1.SecretSync) {
			ss.Spec.SecretObject.Annotations = map[string]string{syncv1.ReservedPrefix + "/a": "x"}
		}, syncv1.ReasonInvalidClusterSecretAnnotationError},
		"no data": {func(ss *syncv1.SecretSync) { ss.Spec.SecretObject.Data = nil }, syncv1.ReasonUserInputValidationFailed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ss := testSync()
			if tc.mod != nil {
				tc.mod(ss)
			}
			err := checkSpec(ss)
			if (err == nil) != (tc.reason == "") || err != nil && err.Reason != tc.reason {
				t.Fatalf("got %v, want %q", err, tc.reason)
			}
		})
	}
}

// The status after a sync: which condition a failure sets, when the
// hash and time move, and that a sync that found nothing new writes
// nothing.
func TestNextStatus(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := metav1.NewTime(t0.Add(time.Minute))
	synced := func(reason string) syncv1.SecretSyncStatus {
		return syncv1.SecretSyncStatus{SyncHash: "h1", LastSuccessfulSyncTime: &t0, Conditions: []metav1.Condition{
			{Type: syncv1.ConditionCreate, Status: metav1.ConditionTrue, Reason: syncv1.ReasonCreateSucceeded, Message: "The Secret was created.", ObservedGeneration: 1, LastTransitionTime: t0},
			{Type: syncv1.ConditionUpdate, Status: metav1.ConditionTrue, Reason: reason, Message: map[string]string{
				syncv1.ReasonNoValueChange:                    "The Secret holds the provider's current data.",
				syncv1.ReasonValueChangeOrForceUpdateDetected: "The Secret was updated: the data, the SecretSync, its class or forceSynchronization changed."}[reason],
				ObservedGeneration: 1, LastTransitionTime: t0},
		}}
	}
	outage := failed(syncv1.ReasonProviderError, "provider azure: Unreachable")
	type cond struct{ status, reason string }
	tests := map[string]struct {
		status   syncv1.SecretSyncStatus
		outcome  outcome
		changed  bool
		create   cond
		update   cond
		hash     string
		syncTime *metav1.Time
	}{
		"first sync": {outcome: outcome{created: true, hash: "h1"}, changed: true,
			create: cond{"True", syncv1.ReasonCreateSucceeded}, update: cond{"True", syncv1.ReasonNoValueChange}, hash: "h1", syncTime: &now},
		"first sync fails": {outcome: outcome{err: failed(syncv1.ReasonControllerSPCError, "no class")}, changed: true,
			create: cond{"False", syncv1.ReasonControllerSPCError}},
		"nothing new": {status: synced(syncv1.ReasonNoValueChange), outcome: outcome{hash: "h1"}, changed: false,
			create: cond{"True", syncv1.ReasonCreateSucceeded}, update: cond{"True", syncv1.ReasonNoValueChange}, hash: "h1", syncTime: &t0},
		"nothing new after a change": {status: synced(syncv1.ReasonValueChangeOrForceUpdateDetected), outcome: outcome{hash: "h1"}, changed: false,
			update: cond{"True", syncv1.ReasonValueChangeOrForceUpdateDetected}, create: cond{"True", syncv1.ReasonCreateSucceeded}, hash: "h1", syncTime: &t0},
		"a change": {status: synced(syncv1.ReasonNoValueChange), outcome: outcome{hash: "h2"}, changed: true,
			create: cond{"True", syncv1.ReasonCreateSucceeded}, update: cond{"True", syncv1.ReasonValueChangeOrForceUpdateDetected}, hash: "h2", syncTime: &now},
		"an outage keeps the last good state": {status: synced(syncv1.ReasonNoValueChange), outcome: outcome{err: outage}, changed: true,
			create: cond{"True", syncv1.ReasonCreateSucceeded}, update: cond{"False", syncv1.ReasonProviderError}, hash: "h1", syncTime: &t0},
		"recovered, unchanged": {status: func() syncv1.SecretSyncStatus {
			s := synced(syncv1.ReasonNoValueChange)
			s.Conditions[1].Status, s.Conditions[1].Reason = metav1.ConditionFalse, syncv1.ReasonProviderError
			return s
		}(), outcome: outcome{hash: "h1"}, changed: true,
			create: cond{"True", syncv1.ReasonCreateSucceeded}, update: cond{"True", syncv1.ReasonNoValueChange}, hash: "h1", syncTime: &t0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ss := testSync()
			ss.Status = tc.status
			st, changed := nextStatus(ss, tc.outcome, now)
			if changed != tc.changed {
				t.Errorf("changed = %v, want %v", changed, tc.changed)
			}
			for _, c := range []struct {
				typ  string
				want cond
			}{{syncv1.ConditionCreate, tc.create}, {syncv1.ConditionUpdate, tc.update}} {
				got := meta.FindStatusCondition(st.Conditions, c.typ)
				if c.want.status == "" {
					if got != nil {
						t.Errorf("%s = %+v, want none", c.typ, got)
					}
					continue
				}
				if got == nil || string(got.Status) != c.want.status || got.Reason != c.want.reason || got.ObservedGeneration != 1 {
					t.Errorf("%s = %+v, want %v", c.typ, got, c.want)
				}
			}
			if st.SyncHash != tc.hash || !st.LastSuccessfulSyncTime.Equal(tc.syncTime) {
				t.Errorf("hash %q time %v, want %q %v", st.SyncHash, st.LastSuccessfulSyncTime, tc.hash, tc.syncTime)
			}
		})
	}
}

// The hash changes with the data and forceSynchronization, is keyed by
// the Secret's UID, and is stable.
func TestSyncHash(t *testing.T) {
	ss := testSync()
	spc := &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{UID: "spc", Generation: 3}}
	s := managedSecret(ss, "v1")
	h := syncHash("k", s, spc, ss)
	if h != syncHash("k", managedSecret(ss, "v1"), spc, ss) {
		t.Fatal("unstable")
	}
	forced := testSync(func(ss *syncv1.SecretSync) { ss.Spec.ForceSynchronization = "now" })
	for name, other := range map[string]string{
		"another value":  syncHash("k", managedSecret(ss, "v2"), spc, ss),
		"another key":    syncHash("k2", s, spc, ss),
		"forced":         syncHash("k", s, spc, forced),
		"class modified": syncHash("k", s, &secretsstorev1.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{UID: "spc", Generation: 4}}, ss),
	} {
		if other == h {
			t.Errorf("%s: the hash did not change", name)
		}
	}
}

func TestTargetPath(t *testing.T) {
	ns, name, ok := parseTarget(targetPath("team-a", "db"))
	if !ok || ns != "team-a" || name != "db" {
		t.Fatal(ns, name, ok)
	}
	for _, bad := range []string{"/var/lib/kubelet/pods/x/volumes/v/mount", "/secretsync/ns", "/secretsync//n", "/secretsync/ns/a/b"} {
		if _, _, ok := parseTarget(bad); ok {
			t.Errorf("%s parsed", bad)
		}
	}
}
