package provider

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// Push rotation, the provider's half. After a mount, each object it read
// at its latest version is watched with a held conditional read (Prefer:
// wait) on the vault; when one changes, the volumes that hold it are
// reported to the driver listening on the Push service, which refreshes
// them through an ordinary Mount. One held read per object serves every
// volume on the node that holds it. Nothing is watched while no driver
// listens (the upstream driver never does).
//
// The held read's answer to a change carries the new value: it goes into
// the object cache under its new ETag before the volumes are reported, so
// each follow-up Mount's conditional read is answered 304 and the value
// crosses the network once per change. Each Mount still asks the vault,
// with its own volume's token: the vault authorizes every volume's read,
// and a 304 is only the answer to an authorized one.
const (
	// holdFor is the wait asked of the vault per held read: under its
	// 30-second cap, so the vault, not a timeout, ends each one.
	holdFor = 25 * time.Second
	// tokenSlack keeps a token from being used in a held read that could
	// outlive it.
	tokenSlack = holdFor + 5*time.Second
	// notHeldPause is how long a vault that does not hold reads is left
	// alone before it is tried again.
	notHeldPause = 10 * time.Minute
	// maxWatchedTargets bounds the volumes watched at once.
	maxWatchedTargets = 10000
)

// watchItem is one object a mount read at its latest version.
type watchItem struct {
	base, objType, name, etag string
}

func (i watchItem) key() string { return cacheKey(i.base, i.objType, i.name, "") }

// watcher holds the vault reads that watch mounted objects.
type watcher struct {
	vault *kvclient.Client // with a timeout longer than holdFor
	cache *cache           // the mounts' object cache, which held reads' answers seed
	log   *slog.Logger
	now   func() time.Time

	watched prometheus.Gauge
	pushes  prometheus.Counter

	done chan struct{} // closed by close: the provider is stopping

	mu        sync.Mutex
	listeners map[chan string]struct{}
	objects   map[string]*watchedObject // by watchItem.key
	targets   map[string][]string       // target path -> object keys
	notHeld   map[string]time.Time      // vault base -> when it answered without holding
}

// watchedObject is one object watched for every volume holding it.
type watchedObject struct {
	item   watchItem // etag: the newest state known
	subs   map[string]subscriber
	cancel context.CancelFunc
}

// subscriber is one volume's interest: the state it holds and the token
// its mount proved, with which the object may be watched.
type subscriber struct {
	etag    string
	token   string
	expires time.Time
}

func newWatcher(vault *kvclient.Client, c *cache, reg prometheus.Registerer, log *slog.Logger) *watcher {
	hc := &http.Client{Timeout: holdFor + 15*time.Second}
	if vault.HTTP != nil {
		hc.Transport = vault.HTTP.Transport
	}
	w := &watcher{vault: &kvclient.Client{HTTP: hc}, cache: c, log: log, now: time.Now, done: make(chan struct{}),
		watched: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_provider_watched_objects",
			Help: "Vault objects watched for push rotation (one held read each)."}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_provider_pushes_total",
			Help: "Volumes reported to the driver because an object they hold changed."}),
		listeners: map[chan string]struct{}{}, objects: map[string]*watchedObject{}, targets: map[string][]string{}, notHeld: map[string]time.Time{}}
	reg.MustRegister(w.watched, w.pushes)
	return w
}

// Watch serves one driver's Push stream.
func (w *watcher) Watch(ctx context.Context, send func(target string) error) error {
	ch := make(chan string, 1024)
	w.mu.Lock()
	w.listeners[ch] = struct{}{}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.listeners, ch)
		if len(w.listeners) == 0 {
			// Nobody to tell: stop watching. A driver that comes back
			// re-registers its volumes with their next mounts.
			w.dropAllLocked()
		}
		w.mu.Unlock()
	}()
	if err := send(""); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.done:
			return nil // the driver sees the stream end, and reconnects to the next provider
		case target := <-ch:
			if err := send(target); err != nil {
				return err
			}
		}
	}
}

// close ends every Watch stream and held read, so a stopping provider's
// graceful stop does not wait on streams that never end by themselves.
func (w *watcher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closedLocked() {
		return
	}
	close(w.done)
	w.dropAllLocked()
}

// dropAllLocked stops watching everything.
func (w *watcher) dropAllLocked() {
	for key := range w.objects {
		w.dropLocked(key)
	}
	clear(w.targets)
}

func (w *watcher) closedLocked() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// Forget stops watching for a volume.
func (w *watcher) Forget(target string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.forgetLocked(target)
}

func (w *watcher) forgetLocked(target string) {
	for _, key := range w.targets[target] {
		w.unsubscribeLocked(key, target)
	}
	delete(w.targets, target)
}

// unsubscribeLocked removes target from one object, and stops watching
// the object if no volume is left.
func (w *watcher) unsubscribeLocked(key, target string) {
	if o := w.objects[key]; o != nil {
		delete(o.subs, target)
		if len(o.subs) == 0 {
			w.dropLocked(key)
		}
	}
}

func (w *watcher) dropLocked(key string) {
	if o := w.objects[key]; o != nil {
		o.cancel()
		delete(w.objects, key)
		w.watched.Set(float64(len(w.objects)))
	}
}

// register replaces what target watches with items, read by a mount
// with token, good until expires. Objects the volume still holds keep
// their held read: a remount every interval does not restart it.
func (w *watcher) register(target, token string, expires time.Time, items []watchItem) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closedLocked() || len(w.listeners) == 0 || target == "" || len(items) == 0 || expires.Before(w.now().Add(tokenSlack)) {
		w.forgetLocked(target)
		return
	}
	if _, known := w.targets[target]; !known && len(w.targets) >= maxWatchedTargets {
		w.log.Warn("push rotation: too many volumes watched; this one rotates on its interval only", "limit", maxWatchedTargets)
		return
	}
	maps.DeleteFunc(w.notHeld, func(_ string, t time.Time) bool { return w.now().Sub(t) >= notHeldPause })
	var keys []string
	for _, it := range items {
		if _, ok := w.notHeld[it.base]; ok {
			continue
		}
		key := it.key()
		o := w.objects[key]
		if o == nil {
			ctx, cancel := context.WithCancel(context.Background())
			o = &watchedObject{item: it, subs: map[string]subscriber{}, cancel: cancel}
			w.objects[key] = o
			w.watched.Set(float64(len(w.objects)))
			go w.poll(ctx, key, o)
		}
		// The mount has just read it: its state is the newest known.
		o.item.etag = it.etag
		o.subs[target] = subscriber{etag: it.etag, token: token, expires: expires}
		keys = append(keys, key)
	}
	for _, key := range w.targets[target] {
		if !slices.Contains(keys, key) {
			w.unsubscribeLocked(key, target)
		}
	}
	if len(keys) == 0 {
		delete(w.targets, target)
		return
	}
	w.targets[target] = keys
}

// poll holds reads of one object until it has no subscriber left.
func (w *watcher) poll(ctx context.Context, key string, o *watchedObject) {
	backoff := time.Second
	for ctx.Err() == nil {
		w.mu.Lock()
		item := o.item
		holder, token := w.tokenLocked(o)
		if token == "" {
			if w.objects[key] == o {
				w.dropLocked(key)
			}
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		start := time.Now()
		d := decodingFor(item.objType)
		held, err := w.vault.Wait(ctx, item.base, token, collection(item.objType), item.name, item.etag, holdFor, d.out)
		if held.Changed && (held.ETag == "" || held.ETag == item.etag) {
			// A 200 that is not a change (a proxy that ignores
			// If-None-Match, say) would make this loop spin.
			err = kvclient.ErrNotHeld
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, kvclient.ErrNotHeld):
			w.log.Info("push rotation: the vault does not hold reads; its volumes rotate on their interval", "vault", item.base)
			w.mu.Lock()
			w.notHeld[item.base] = w.now()
			if w.objects[key] == o {
				w.dropLocked(key)
			}
			w.mu.Unlock()
			return
		case refused(err):
			// That volume's identity may no longer read it: drop it (its
			// refresh reports why, on the pod) and go on at once with
			// another volume's token, so one refusal does not stop the
			// pushes of every volume holding the object.
			w.mu.Lock()
			if _, ok := o.subs[holder]; ok {
				delete(o.subs, holder)
				w.notifyLocked(holder)
			}
			w.mu.Unlock()
			continue
		case err != nil:
			// Gone or unreachable: interval rotation reports it on the
			// volume; here, only try again later.
			w.log.Debug("push rotation: a held read failed", "vault", item.base, "object", item.objType+"/"+item.name, "class", kvclient.Classify(err), "retry", backoff)
			if !sleep(ctx, backoff+rand.N(backoff/2)) {
				return
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		if held.Changed {
			w.seed(item, held, d)
			w.changed(o, held.ETag)
		} else if time.Since(start) < time.Second && !sleep(ctx, time.Second) {
			return // answered at once (a vault at its cap, or stopping): not faster than once a second
		}
	}
}

// refused reports whether the vault refused the token (401) or the
// identity (403).
func refused(err error) bool {
	var ke *kvclient.Error
	return errors.As(err, &ke) && (ke.Status == 401 || ke.Status == 403)
}

// sleep waits d, or until ctx ends (then false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// tokenLocked returns the volume whose token lasts longest, and that
// token. A subscriber whose token is too close to expiry to hold a read
// with is dropped and its volume reported: the driver's refresh mounts it
// with a fresh token (the token cache no longer hands out one that close
// to expiry), which watches it again.
func (w *watcher) tokenLocked(o *watchedObject) (target, token string) {
	until := w.now().Add(tokenSlack)
	for t, s := range o.subs {
		if s.expires.Before(w.now().Add(tokenSlack)) {
			delete(o.subs, t)
			w.notifyLocked(t)
			continue
		}
		if !s.expires.Before(until) {
			target, token, until = t, s.token, s.expires
		}
	}
	return target, token
}

// seed caches the new state a held read brought, under its ETag, for the
// follow-up mounts' conditional reads. An answer that did not decode, or
// names no version, is left out: those mounts read it themselves, and
// report what is wrong with it.
func (w *watcher) seed(item watchItem, held kvclient.Held, d decoding) {
	if held.Undecoded != nil {
		// Its code only: a JSON syntax error quotes the body.
		code := "unknown"
		if ke := (*kvclient.Error)(nil); errors.As(held.Undecoded, &ke) {
			code = ke.Code
		}
		w.log.Debug("push rotation: a held read's answer did not decode; the mounts read it again", "vault", item.base, "object", item.objType+"/"+item.name, "code", code)
		return
	}
	f := d.get()
	if f.Version == "" {
		return
	}
	f.ETag = held.ETag
	w.cache.put(item.key(), held.ETag, f)
}

// changed records an object's new state and reports each volume that
// holds an older one.
func (w *watcher) changed(o *watchedObject, etag string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	o.item.etag = etag
	for target, s := range o.subs {
		if s.etag != etag {
			w.pushes.Inc()
			w.notifyLocked(target)
		}
	}
}

// notifyLocked reports a volume to every listening driver. A driver that
// is not keeping up misses it, and the volume waits for its interval.
func (w *watcher) notifyLocked(target string) {
	for ch := range w.listeners {
		select {
		case ch <- target:
		default:
			w.log.Warn("push rotation: the driver is not keeping up; a volume waits for its interval", "target", target)
		}
	}
}
