package controller

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/node/providerclient"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Reconciler syncs SecretSyncs: it is what the elected replica runs.
type Reconciler struct {
	opts      Options
	kube      client.Client // reads from the watch cache (Secrets: the labelled ones only)
	live      client.Reader // reads from the apiserver
	tokens    *tokens
	providers *providerclient.Clients
	pusher    *pusher
	recorder  events.EventRecorder
	metrics   *Metrics
	now       func() time.Time

	mu    sync.Mutex
	syncs map[types.NamespacedName]*syncState
}

// syncState is what the controller remembers of one SecretSync between
// syncs; nothing in it is needed after a restart.
type syncState struct {
	provider string            // of the last Mount: the one provider whose pushes count
	versions map[string]string // the objects' versions of the last Mount
	failures int               // consecutive failed syncs, for the backoff
	pushedAt time.Time         // when a push asked for a refresh not yet done
}

// state returns key's state, made on first use; r.mu must be held.
func (r *Reconciler) stateLocked(key types.NamespacedName) *syncState {
	st := r.syncs[key]
	if st == nil {
		st = &syncState{}
		r.syncs[key] = st
	}
	return st
}

// claimPush reports whether provider serves key, and notes when the push
// came, for the latency metric.
func (r *Reconciler) claimPush(key types.NamespacedName, provider string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.syncs[key]
	if st == nil || st.provider != provider {
		return false
	}
	if st.pushedAt.IsZero() {
		st.pushedAt = r.now()
	}
	return true
}

// requeueProvider queues every SecretSync last synced through provider.
func (r *Reconciler) requeueProvider(provider string) {
	r.mu.Lock()
	var keys []types.NamespacedName
	for key, st := range r.syncs {
		if st.provider == provider {
			keys = append(keys, key)
		}
	}
	r.mu.Unlock()
	for _, key := range keys {
		r.pusher.queue(key)
	}
}

// Reconcile syncs one SecretSync.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ss := &syncv1.SecretSync{}
	if err := r.kube.Get(ctx, req.NamespacedName, ss); err != nil {
		if apierrors.IsNotFound(err) {
			r.gone(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !r.opts.ClusterWide && !slices.Contains(r.opts.Namespaces, ss.Namespace) {
		return ctrl.Result{}, nil // SecretSyncs are watched everywhere, served only here
	}
	if n := ss.Spec.SecretSyncControllerName; n != "" && n != r.opts.ControllerName {
		return ctrl.Result{}, nil // another controller's
	}
	if done, err := r.finalize(ctx, ss); done || err != nil {
		return ctrl.Result{}, err
	}
	o, act, written := r.sync(ctx, ss)
	return r.record(ctx, ss, o, act, written)
}

// gone forgets a deleted SecretSync; the garbage collector deletes its
// Secret, which it owns.
func (r *Reconciler) gone(key types.NamespacedName) {
	r.mu.Lock()
	st := r.syncs[key]
	delete(r.syncs, key)
	r.mu.Unlock()
	if st != nil && st.provider != "" && r.pusher != nil {
		r.pusher.forget(key)
	}
}

// finalize keeps the retain finalizer in step with the deletion-policy
// annotation, and releases the Secret of a SecretSync being deleted with
// Retain. done means there is nothing more to do for ss.
func (r *Reconciler) finalize(ctx context.Context, ss *syncv1.SecretSync) (done bool, err error) {
	retain := ss.Annotations[syncv1.DeletionPolicyAnnotation] == syncv1.DeletionPolicyRetain
	has := controllerutil.ContainsFinalizer(ss, syncv1.RetainFinalizer)
	if ss.DeletionTimestamp != nil {
		if has {
			if retain {
				if err := r.release(ctx, ss); err != nil {
					return true, err
				}
			}
			if err := r.patchFinalizer(ctx, ss, false); err != nil {
				return true, err
			}
		}
		r.gone(client.ObjectKeyFromObject(ss))
		return true, nil
	}
	if retain != has {
		return false, r.patchFinalizer(ctx, ss, retain)
	}
	return false, nil
}

func (r *Reconciler) patchFinalizer(ctx context.Context, ss *syncv1.SecretSync, add bool) error {
	orig := ss.DeepCopy()
	if add {
		controllerutil.AddFinalizer(ss, syncv1.RetainFinalizer)
	} else {
		controllerutil.RemoveFinalizer(ss, syncv1.RetainFinalizer)
	}
	// Optimistic: the finalizers are a list, and a merge patch replaces it.
	return r.kube.Patch(ctx, ss, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
}

// release turns ss's Secret into an ordinary one, which outlives ss.
func (r *Reconciler) release(ctx context.Context, ss *syncv1.SecretSync) error {
	cur := &corev1.Secret{}
	if err := r.live.Get(ctx, client.ObjectKeyFromObject(ss), cur); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	next := release(ss, cur)
	if next == nil {
		return nil
	}
	if err := r.kube.Update(ctx, next); err != nil {
		return err
	}
	r.metrics.write("update")
	r.metrics.result("released")
	r.recorder.Eventf(ss, nil, corev1.EventTypeNormal, "SecretRetained", "Delete",
		"SecretSync deleted with %s=%s: Secret %s/%s is kept, no longer managed", syncv1.DeletionPolicyAnnotation, syncv1.DeletionPolicyRetain, cur.Namespace, cur.Name)
	return nil
}

// sync fetches ss's data and writes its Secret, and returns what happened
// and what it wrote.
func (r *Reconciler) sync(ctx context.Context, ss *syncv1.SecretSync) (outcome, action, *corev1.Secret) {
	fail := func(e *syncError) (outcome, action, *corev1.Secret) {
		return outcome{err: e}, actNone, nil
	}
	if e := checkSpec(ss); e != nil {
		return fail(e)
	}
	key := client.ObjectKeyFromObject(ss)
	spc := &secretsstorev1.SecretProviderClass{}
	if err := r.kube.Get(ctx, types.NamespacedName{Namespace: ss.Namespace, Name: ss.Spec.SecretProviderClassName}, spc); err != nil {
		if apierrors.IsNotFound(err) {
			return fail(failed(syncv1.ReasonControllerSPCError, "SecretProviderClass %s/%s does not exist", ss.Namespace, ss.Spec.SecretProviderClassName))
		}
		return fail(failed(syncv1.ReasonControllerInternalError, "reading SecretProviderClass %s/%s: %v", ss.Namespace, ss.Spec.SecretProviderClassName, err))
	}
	r.mu.Lock()
	st := r.stateLocked(key)
	previous := st.versions
	if st.provider != string(spc.Spec.Provider) {
		previous = nil // another provider's versions mean nothing to this one
	}
	r.mu.Unlock()
	got, e := r.fetch(ctx, ss, spc, previous)
	if e != nil {
		return fail(e)
	}
	r.mu.Lock()
	st.provider, st.versions = string(spc.Spec.Provider), got.versions
	r.mu.Unlock()
	data, e := secretData(ss, got.files)
	if e != nil {
		return fail(e)
	}
	want := desiredSecret(ss, data)
	var current *corev1.Secret
	cur := &corev1.Secret{}
	switch err := r.kube.Get(ctx, key, cur); {
	case err == nil:
		current = cur
	case !apierrors.IsNotFound(err):
		return fail(failed(syncv1.ReasonControllerInternalError, "reading Secret %s: %v", key, err))
	}
	act, obj, e := plan(ss, current, want)
	if e != nil {
		return fail(e)
	}
	switch act {
	case actCreate:
		err := r.kube.Create(ctx, obj)
		if apierrors.IsAlreadyExists(err) {
			// Not in the cache: a Secret without the label (the cache
			// holds only labelled ones), or one the cache has not seen
			// yet. The apiserver says which.
			live := &corev1.Secret{}
			if err := r.live.Get(ctx, key, live); err != nil {
				return fail(failed(syncv1.ReasonControllerInternalError, "reading Secret %s: %v", key, err))
			}
			if act, obj, e = plan(ss, live, want); e != nil {
				return fail(e)
			}
			if act == actUpdate {
				err = r.kube.Update(ctx, obj)
			} else {
				err = nil
			}
		}
		if err != nil {
			return fail(&syncError{Reason: writeFailure(err), Err: err})
		}
	case actUpdate:
		if err := r.kube.Update(ctx, obj); err != nil {
			return fail(&syncError{Reason: writeFailure(err), Err: err})
		}
	}
	if act != actNone {
		r.metrics.write(act.String())
	}
	return outcome{created: act == actCreate, hash: syncHash(obj.UID, obj, spc, ss)}, act, obj
}

// writeFailure is the reason of a refused Secret write.
func writeFailure(err error) string {
	if apierrors.IsForbidden(err) {
		return writeReason(err, syncv1.ReasonControllerInternalError)
	}
	return writeReason(err, syncv1.ReasonUnknownError)
}

// record writes the status, events and metrics of a sync, and when to
// sync again.
func (r *Reconciler) record(ctx context.Context, ss *syncv1.SecretSync, o outcome, act action, written *corev1.Secret) (ctrl.Result, error) {
	now := metav1.NewTime(r.now().Truncate(time.Second))
	st, changed := nextStatus(ss, o, now)
	if changed {
		next := ss.DeepCopy()
		next.Status = st
		if err := r.kube.Status().Patch(ctx, next, client.MergeFrom(ss)); err != nil && !apierrors.IsNotFound(err) {
			r.metrics.result("status_error")
			return ctrl.Result{}, err
		}
		r.metrics.write("status")
	}
	key := client.ObjectKeyFromObject(ss)
	r.mu.Lock()
	s := r.stateLocked(key)
	pushedAt := s.pushedAt
	if o.err != nil {
		s.failures++
	} else {
		s.failures, s.pushedAt = 0, time.Time{}
	}
	failures := s.failures
	r.mu.Unlock()
	if o.err != nil {
		r.metrics.result(o.err.Reason)
		r.recorder.Eventf(ss, nil, corev1.EventTypeWarning, o.err.Reason, "Sync", "%s", o.err.Error())
		r.opts.Log.Info("sync failed", "secretsync", key, "reason", o.err.Reason, "err", o.err.Err)
		return ctrl.Result{RequeueAfter: r.backoff(failures)}, nil
	}
	switch act {
	case actCreate:
		r.metrics.result("created")
		r.recorder.Eventf(ss, nil, corev1.EventTypeNormal, syncv1.ReasonCreateSucceeded, "Sync", "Created Secret %s/%s", written.Namespace, written.Name)
	case actUpdate:
		r.metrics.result("updated")
		r.recorder.Eventf(ss, nil, corev1.EventTypeNormal, syncv1.ReasonValueChangeOrForceUpdateDetected, "Sync", "Updated Secret %s/%s", written.Namespace, written.Name)
	default:
		r.metrics.result("unchanged")
	}
	if act != actNone && !pushedAt.IsZero() {
		r.metrics.pushLatency.Observe(r.now().Sub(pushedAt).Seconds())
	}
	return ctrl.Result{RequeueAfter: r.jitter(r.opts.RotationPollInterval)}, nil
}

// backoff is the wait before the next try after failures in a row: from
// a second, doubling, up to the poll interval.
func (r *Reconciler) backoff(failures int) time.Duration {
	d := time.Second << min(failures-1, 20)
	return r.jitter(min(d, r.opts.RotationPollInterval))
}

// jitter spreads d by up to a tenth, so that SecretSyncs created together
// do not refresh together forever.
func (r *Reconciler) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - time.Duration(rand.Int64N(int64(d)/10+1))
}
