package csidriver

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/node/atomicdir"
)

// bookkeeping is the Kubernetes side of one publish: the volume's status
// object and its synced Secrets. It runs after NodePublishVolume returns,
// so a pod's start never waits on apiserver writes; it is retried with
// backoff until it succeeds, the volume is unpublished, or a newer publish
// of the same volume replaces it, and a final failure is an event.
type bookkeeping struct {
	p           *publication
	spc         *secretsstorev1.SecretProviderClass
	versions    map[string]string
	files       []atomicdir.File
	writeStatus bool // the versions changed, or this is the first publish
	sync        bool // the synced Secrets are due
	rotation    bool
	attempt     int
	notBefore   time.Time
}

// recorder runs bookkeeping in one background goroutine, newest job per
// volume only.
type recorder struct {
	mu      sync.Mutex
	pending map[string]*bookkeeping // by target path
	wake    chan struct{}
	idle    *sync.Cond
	busy    bool
}

func newRecorder() *recorder {
	r := &recorder{pending: map[string]*bookkeeping{}, wake: make(chan struct{}, 1)}
	r.idle = sync.NewCond(&r.mu)
	return r
}

// enqueue schedules b, replacing an older job for the same volume; the
// duties the older job still had carry over.
func (r *recorder) enqueue(b *bookkeeping) {
	r.mu.Lock()
	if old, ok := r.pending[b.p.target]; ok {
		b.writeStatus = b.writeStatus || old.writeStatus
		b.sync = b.sync || old.sync
	}
	r.pending[b.p.target] = b
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// forget drops a volume's pending job (it was unpublished).
func (r *recorder) forget(target string) {
	r.mu.Lock()
	delete(r.pending, target)
	r.mu.Unlock()
}

// Wait blocks until no bookkeeping is pending or running; tests and a
// graceful stop use it.
func (r *recorder) Wait() {
	r.mu.Lock()
	for len(r.pending) > 0 || r.busy {
		r.idle.Wait()
	}
	r.mu.Unlock()
}

const maxBookkeepingAttempts = 8

// run processes jobs until ctx ends.
func (d *Driver) runRecorder(ctx context.Context) {
	r := d.recorder
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		now := d.cfg.Now()
		var next *bookkeeping
		wait := time.Hour
		for _, b := range r.pending {
			if !b.notBefore.After(now) {
				next = b
				break
			}
			wait = min(wait, b.notBefore.Sub(now))
		}
		if next != nil {
			delete(r.pending, next.p.target)
			r.busy = true
		} else {
			r.idle.Broadcast()
		}
		r.mu.Unlock()
		if next == nil {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				r.mu.Lock()
				r.pending = map[string]*bookkeeping{}
				r.busy = false
				r.idle.Broadcast()
				r.mu.Unlock()
				return
			case <-r.wake:
			case <-timer.C:
			}
			continue
		}
		d.keepBooks(ctx, next)
		r.mu.Lock()
		r.busy = false
		r.mu.Unlock()
	}
}

// keepBooks writes the status and syncs the Secrets, rescheduling itself
// on failure.
func (d *Driver) keepBooks(ctx context.Context, b *bookkeeping) {
	if !d.published(b.p.target) {
		return // unpublished since: the pod is gone
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if b.writeStatus {
		if err := d.recordStatus(cctx, b.p, b.versions); err != nil {
			b.attempt++
			if b.attempt >= maxBookkeepingAttempts {
				d.cfg.Metrics.publishFailed(string(b.spc.Spec.Provider), ReasonFailedToCreateSPCPS, 0)
				d.event(b.p, corev1.EventTypeWarning, ReasonFailedToCreateSPCPS, "Recording the status of SecretProviderClass %s/%s failed %d times; giving up until the next publish: %v", b.p.podNS, b.p.spcName, b.attempt, err)
				return
			}
			d.cfg.Log.Warn("recording the volume status failed; retrying", "target", b.p.target, "attempt", b.attempt, "err", err)
			b.notBefore = d.cfg.Now().Add(time.Duration(1<<min(b.attempt, 6)) * 250 * time.Millisecond)
			d.recorder.mu.Lock()
			if _, newer := d.recorder.pending[b.p.target]; !newer && d.published(b.p.target) {
				d.recorder.pending[b.p.target] = b
			}
			d.recorder.mu.Unlock()
			return
		}
	}
	if b.sync {
		d.syncSecrets(cctx, b.p, b.spc, b.files, b.rotation)
	}
}
