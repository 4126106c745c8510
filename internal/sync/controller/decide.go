package controller

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/crypto/certfmt"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// The controller's decisions, as pure functions of what it observed: which
// Secret a SecretSync asks for, what to do about the Secret that exists,
// and the status that results. Reconcile does the reading and writing
// around them.

// syncError is a failed sync: the condition reason it sets, and why, in
// words fit for a condition, an event and a log (never a value).
type syncError struct {
	Reason string
	Err    error
}

func (e *syncError) Error() string { return e.Err.Error() }
func (e *syncError) Unwrap() error { return e.Err }

func failed(reason string, format string, args ...any) *syncError {
	return &syncError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// checkSpec refuses what the CRD's validation should already have
// refused, for objects stored before it existed or written around it.
func checkSpec(ss *syncv1.SecretSync) *syncError {
	for k := range ss.Spec.SecretObject.Labels {
		if strings.HasPrefix(k, syncv1.ReservedPrefix) {
			return failed(syncv1.ReasonInvalidClusterSecretLabelError, "secretObject.labels has %s: the prefix %s is the controller's", k, syncv1.ReservedPrefix)
		}
	}
	for k := range ss.Spec.SecretObject.Annotations {
		if strings.HasPrefix(k, syncv1.ReservedPrefix) {
			return failed(syncv1.ReasonInvalidClusterSecretAnnotationError, "secretObject.annotations has %s: the prefix %s is the controller's", k, syncv1.ReservedPrefix)
		}
	}
	if len(ss.Spec.SecretObject.Data) == 0 {
		return failed(syncv1.ReasonUserInputValidationFailed, "secretObject.data is empty")
	}
	return nil
}

// secretType is the Secret type a SecretSync asks for.
func secretType(ss *syncv1.SecretSync) corev1.SecretType {
	if t := strings.TrimSpace(ss.Spec.SecretObject.Type); t != "" {
		return corev1.SecretType(t)
	}
	return corev1.SecretTypeOpaque
}

// secretData maps the provider's files to the Secret's keys; a
// kubernetes.io/tls Secret's tls.crt and tls.key are split out of a PEM
// bundle or PKCS#12, as the CSI driver's secretObjects do.
func secretData(ss *syncv1.SecretSync, files map[string][]byte) (map[string][]byte, *syncError) {
	typ := secretType(ss)
	out := make(map[string][]byte, len(ss.Spec.SecretObject.Data))
	for _, d := range ss.Spec.SecretObject.Data {
		src, key := strings.TrimSpace(d.SourcePath), strings.TrimSpace(d.TargetKey)
		content, ok := files[src]
		if !ok {
			return nil, failed(syncv1.ReasonUserInputValidationFailed, "sourcePath %s names no file of the provider's answer (it has %s)", src, fileNames(files))
		}
		if typ != corev1.SecretTypeTLS {
			out[key] = content
			continue
		}
		var err error
		out[key], err = certfmt.TLSSecretValue(key, content)
		if err != nil {
			return nil, failed(syncv1.ReasonUserInputValidationFailed, "targetKey %s from sourcePath %s: %v", key, src, err)
		}
	}
	return out, nil
}

// fileNames lists the paths of files (never their contents), sorted.
func fileNames(files map[string][]byte) string {
	if len(files) == 0 {
		return "no files"
	}
	names := slices.Sorted(maps.Keys(files))
	if len(names) > 10 {
		names = append(names[:10], "...")
	}
	return strings.Join(names, ", ")
}

// ownerRef is the reference that makes ss the Secret's owner and its
// controller, so that the garbage collector deletes the Secret with ss,
// and only with ss.
func ownerRef(ss *syncv1.SecretSync) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: syncv1.GroupVersion.String(), Kind: syncv1.Kind, Name: ss.Name, UID: ss.UID, Controller: &yes}
}

// desiredSecret is the Secret ss asks for: data from the provider, type,
// exactly secretObject's labels and annotations plus the controller's
// label, and ss as its one SecretSync owner.
func desiredSecret(ss *syncv1.SecretSync, data map[string][]byte) *corev1.Secret {
	labels := maps.Clone(ss.Spec.SecretObject.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[syncv1.SecretLabel] = ss.Name
	var annotations map[string]string
	if len(ss.Spec.SecretObject.Annotations) > 0 {
		annotations = maps.Clone(ss.Spec.SecretObject.Annotations)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: ss.Name, Namespace: ss.Namespace, Labels: labels, Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{ownerRef(ss)}},
		Type: secretType(ss), Data: data,
	}
}

// managedBy reports whether the Secret is one the controller may write
// for ss: it carries the controller's label with ss's name. A Secret
// without it (a user's own) is never touched.
func managedBy(s *corev1.Secret, ss *syncv1.SecretSync) bool {
	return s.Labels[syncv1.SecretLabel] == ss.Name
}

// action is what to do about the Secret.
type action int

const (
	actNone   action = iota // it is as desired
	actCreate               // it does not exist
	actUpdate               // it differs
)

func (a action) String() string {
	return [...]string{"none", "create", "update"}[a]
}

// plan decides what to do about the Secret current (nil: none exists)
// for ss, and returns the object to write: current changed to match
// want, keeping its identity and any owners that are not SecretSyncs.
func plan(ss *syncv1.SecretSync, current, want *corev1.Secret) (action, *corev1.Secret, *syncError) {
	if current == nil {
		return actCreate, want, nil
	}
	if !managedBy(current, ss) {
		return actNone, nil, failed(syncv1.ReasonUserInputValidationFailed,
			"the Secret %s/%s exists and is not managed by this SecretSync (it has no %s=%s label); it is left alone: rename the SecretSync or delete that Secret",
			current.Namespace, current.Name, syncv1.SecretLabel, ss.Name)
	}
	if current.Type != want.Type {
		return actNone, nil, failed(syncv1.ReasonUserInputValidationFailed,
			"the Secret %s/%s has type %s and secretObject.type is %s; a Secret's type cannot change: delete the Secret and the controller creates it again",
			current.Namespace, current.Name, current.Type, want.Type)
	}
	next := current.DeepCopy()
	next.Data, next.StringData = want.Data, nil
	next.Labels, next.Annotations = want.Labels, want.Annotations
	next.OwnerReferences = slices.DeleteFunc(next.OwnerReferences, func(o metav1.OwnerReference) bool {
		return o.Kind == syncv1.Kind && strings.HasPrefix(o.APIVersion, syncv1.GroupVersion.Group+"/")
	})
	next.OwnerReferences = append(next.OwnerReferences, want.OwnerReferences...)
	if maps.EqualFunc(current.Data, next.Data, bytes.Equal) && len(current.StringData) == 0 &&
		maps.Equal(current.Labels, next.Labels) && maps.Equal(nonNil(current.Annotations), nonNil(next.Annotations)) &&
		slices.EqualFunc(current.OwnerReferences, next.OwnerReferences, sameOwner) {
		return actNone, current, nil
	}
	return actUpdate, next, nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func sameOwner(a, b metav1.OwnerReference) bool {
	return a.APIVersion == b.APIVersion && a.Kind == b.Kind && a.Name == b.Name && a.UID == b.UID &&
		(a.Controller != nil && *a.Controller) == (b.Controller != nil && *b.Controller)
}

// release is the Secret of a SecretSync deleted with the Retain policy:
// without ss's owner reference and the controller's label, so that the
// garbage collector keeps it and it becomes an ordinary Secret. It
// returns nil when there is nothing to release.
func release(ss *syncv1.SecretSync, current *corev1.Secret) *corev1.Secret {
	if current == nil || !managedBy(current, ss) {
		return nil
	}
	next := current.DeepCopy()
	delete(next.Labels, syncv1.SecretLabel)
	next.OwnerReferences = slices.DeleteFunc(next.OwnerReferences, func(o metav1.OwnerReference) bool { return o.UID == ss.UID })
	return next
}

// syncHash identifies the synced state. It is keyed with the Secret's UID,
// which readers of SecretSyncs alone do not know, so that the hash of a
// weak value cannot be checked against guesses without reading the
// Secret; and it is cheap, as it runs for every SecretSync at every
// refresh.
func syncHash(secretUID types.UID, s *corev1.Secret, spc *secretsstorev1.SecretProviderClass, ss *syncv1.SecretSync) string {
	m := hmac.New(sha256.New, []byte(secretUID))
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		m.Write(n[:])
		m.Write(b)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Data)) {
		field([]byte(k))
		field(s.Data[k])
	}
	field([]byte(s.Type))
	for _, mp := range []map[string]string{s.Labels, s.Annotations} {
		field([]byte(strconv.Itoa(len(mp))))
		for _, k := range slices.Sorted(maps.Keys(mp)) {
			field([]byte(k))
			field([]byte(mp[k]))
		}
	}
	for _, v := range []string{string(spc.UID), strconv.FormatInt(spc.Generation, 10), string(ss.UID), strconv.FormatInt(ss.Generation, 10), ss.Spec.ForceSynchronization} {
		field([]byte(v))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// outcome is what one sync did.
type outcome struct {
	err     *syncError // nil: the Secret is as desired
	created bool       // the Secret was created
	hash    string     // with err nil: the synced state's hash
}

// nextStatus is ss's status after a sync with outcome o at now, and
// whether it differs from the current one (a sync that found nothing
// new writes no status). A failure sets Create False while no Secret was
// ever created for ss, and Update False after, leaving the rest as it was.
func nextStatus(ss *syncv1.SecretSync, o outcome, now metav1.Time) (syncv1.SecretSyncStatus, bool) {
	st := *ss.Status.DeepCopy()
	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: ss.Generation, LastTransitionTime: now})
	}
	switch {
	case o.err != nil && st.SyncHash == "":
		set(syncv1.ConditionCreate, metav1.ConditionFalse, o.err.Reason, o.err.Error())
	case o.err != nil:
		set(syncv1.ConditionUpdate, metav1.ConditionFalse, o.err.Reason, o.err.Error())
	case o.created:
		set(syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded, "The Secret was created.")
		set(syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonNoValueChange, "The Secret holds the provider's current data.")
		st.SyncHash, st.LastSuccessfulSyncTime = o.hash, &now
	case o.hash != st.SyncHash:
		set(syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded, "The Secret was created.")
		set(syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonValueChangeOrForceUpdateDetected, "The Secret was updated: the data, the SecretSync, its class or forceSynchronization changed.")
		st.SyncHash, st.LastSuccessfulSyncTime = o.hash, &now
	default:
		set(syncv1.ConditionCreate, metav1.ConditionTrue, syncv1.ReasonCreateSucceeded, "The Secret was created.")
		if c := meta.FindStatusCondition(st.Conditions, syncv1.ConditionUpdate); c == nil || c.Status != metav1.ConditionTrue {
			set(syncv1.ConditionUpdate, metav1.ConditionTrue, syncv1.ReasonNoValueChange, "The Secret holds the provider's current data.")
		}
	}
	return st, !statusEqual(ss.Status, st)
}

// statusEqual compares statuses, conditions by content: SetStatusCondition
// keeps a condition's transition time while its status holds.
func statusEqual(a, b syncv1.SecretSyncStatus) bool {
	if a.SyncHash != b.SyncHash || !a.LastSuccessfulSyncTime.Equal(b.LastSuccessfulSyncTime) || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for _, c := range a.Conditions {
		d := meta.FindStatusCondition(b.Conditions, c.Type)
		if d == nil || d.Status != c.Status || d.Reason != c.Reason || d.Message != c.Message || d.ObservedGeneration != c.ObservedGeneration || !d.LastTransitionTime.Equal(&c.LastTransitionTime) {
			return false
		}
	}
	return true
}
