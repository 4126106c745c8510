package provider

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// Push rotation, the provider's half. After a mount, each object it read
// at its latest version is watched on the vault; when one changes, the
// volumes that hold it are reported to the driver listening on the Push
// service, which refreshes them through an ordinary Mount. Nothing is
// watched while no driver listens (the upstream driver never does).
//
// Objects are watched in one of two ways:
//
//   - A vault watch (stream.go, docs/vault-watch.md): one streaming
//     request per vault server and identity carries every object that
//     the node's volumes of that identity hold. While it is healthy, it
//     also vouches for the objects' state, so a Mount answers them from
//     the cache without asking the vault (see fresh): the vault authorized
//     that identity for them, and tells the stream of every change and of
//     every loss of access.
//   - Held reads (held.go), one per object, shared by every volume on the
//     node that holds it: against a server without the vault watch, or
//     for a token whose identity cannot be read. Each Mount still reads
//     the vault, conditionally, with its own token.
const (
	// holdFor is the wait asked of the vault per held read: under its
	// 30-second cap, so the vault, not a timeout, ends each one.
	holdFor = 25 * time.Second
	// tokenSlack keeps a token from being used in a held read or a watch
	// that could outlive it.
	tokenSlack = holdFor + 5*time.Second
	// notHeldPause is how long a vault that does not hold reads, or a
	// server without the vault watch, is left alone before it is tried
	// again.
	notHeldPause = 10 * time.Minute
	// maxWatchedTargets bounds the volumes watched at once.
	maxWatchedTargets = 10000
)

// watchItem is one object a mount read at its latest version.
type watchItem struct {
	base, objType, name, etag string
}

func (i watchItem) key() string { return cacheKey(i.base, i.objType, i.name, "") }

// registration is what a successful mount tells the watcher about its
// volume.
type registration struct {
	target  string
	token   string
	expires time.Time
	// resource is the token's audience, the vault server's authority host
	// (https://{suffix}): where the vault watch is asked for.
	resource string
	// principal names the token's identity (tenant and object id, read
	// from the token); "" when unknown, which only held reads can serve.
	principal string
	items     []watchItem
}

// watchedTarget is one volume being watched.
type watchedTarget struct {
	stream  string // the key of its vault watch; "" for held reads
	token   string
	expires time.Time
	// items are the objects it holds, by key, at the state it holds.
	items map[string]watchItem
}

// watcher watches mounted objects on the vault.
type watcher struct {
	vault  *kvclient.Client // held reads: a timeout longer than holdFor
	stream *kvclient.Client // vault watches: no timeout of their own
	cache  *cache           // the mounts' object cache, which held reads' answers seed
	log    *slog.Logger
	now    func() time.Time

	watched prometheus.Gauge
	streams prometheus.Gauge
	pushes  prometheus.Counter

	done chan struct{} // closed by close: the provider is stopping

	mu        sync.Mutex
	listeners map[chan string]struct{}
	targets   map[string]*watchedTarget
	objects   map[string]*watchedObject // held reads, by watchItem.key
	watches   map[string]*stream        // vault watches, by streamKey
	notHeld   map[string]time.Time      // vault base -> when it answered without holding
	noWatch   map[string]time.Time      // resource -> when it answered without the vault watch
}

func newWatcher(vault *kvclient.Client, c *cache, reg prometheus.Registerer, log *slog.Logger) *watcher {
	held := &http.Client{Timeout: holdFor + 15*time.Second}
	streaming := &http.Client{}
	if vault.HTTP != nil {
		held.Transport, streaming.Transport = vault.HTTP.Transport, vault.HTTP.Transport
	}
	w := &watcher{vault: &kvclient.Client{HTTP: held}, stream: &kvclient.Client{HTTP: streaming}, cache: c, log: log, now: time.Now, done: make(chan struct{}),
		watched: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_provider_watched_objects",
			Help: "Vault objects watched for push rotation, by a vault watch or a held read."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_provider_vault_watches",
			Help: "Vault watches open or being opened: one per vault server and identity."}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_provider_pushes_total",
			Help: "Volumes reported to the driver because an object they hold changed."}),
		listeners: map[chan string]struct{}{}, targets: map[string]*watchedTarget{}, objects: map[string]*watchedObject{},
		watches: map[string]*stream{}, notHeld: map[string]time.Time{}, noWatch: map[string]time.Time{}}
	reg.MustRegister(w.watched, w.streams, w.pushes)
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

// close ends every Watch stream, held read and vault watch, so a stopping
// provider's graceful stop does not wait on streams that never end by
// themselves.
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
	for target := range w.targets {
		w.forgetLocked(target)
	}
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
	t := w.targets[target]
	if t == nil {
		return
	}
	delete(w.targets, target)
	if t.stream != "" {
		w.unstreamLocked(target, t)
		return
	}
	for key := range t.items {
		w.unholdLocked(key, target)
	}
}

// register replaces what a volume watches with what its mount read.
// Objects the volume still holds stay watched as they were: a remount
// every interval restarts nothing.
func (w *watcher) register(r registration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if w.closedLocked() || len(w.listeners) == 0 || r.target == "" || len(r.items) == 0 || r.expires.Before(now.Add(tokenSlack)) {
		w.forgetLocked(r.target)
		return
	}
	old := w.targets[r.target]
	if old == nil && len(w.targets) >= maxWatchedTargets {
		w.log.Warn("push rotation: too many volumes watched; this one rotates on its interval only", "limit", maxWatchedTargets)
		return
	}
	maps.DeleteFunc(w.notHeld, func(_ string, t time.Time) bool { return now.Sub(t) >= notHeldPause })
	maps.DeleteFunc(w.noWatch, func(_ string, t time.Time) bool { return now.Sub(t) >= notHeldPause })
	key := ""
	if _, refused := w.noWatch[r.resource]; !refused && r.principal != "" && r.resource != "" {
		key = streamKey(r.resource, r.principal)
	}
	if old != nil && old.stream != key {
		// Its identity or its way of watching changed: start afresh.
		w.forgetLocked(r.target)
		old = nil
	}
	t := &watchedTarget{stream: key, token: r.token, expires: r.expires, items: make(map[string]watchItem, len(r.items))}
	for _, it := range r.items {
		t.items[it.key()] = it
	}
	w.targets[r.target] = t
	if key != "" {
		w.streamLocked(r, t, old)
		return
	}
	w.holdLocked(r.target, t, old)
}

// countLocked updates the gauges.
func (w *watcher) countLocked() {
	n := len(w.objects)
	for _, st := range w.watches {
		n += len(st.objects)
	}
	w.watched.Set(float64(n))
	w.streams.Set(float64(len(w.watches)))
}

// notifyLocked reports a volume to every listening driver. A driver that
// is not keeping up misses it, and the volume waits for its interval.
func (w *watcher) notifyLocked(target string) {
	w.pushes.Inc()
	for ch := range w.listeners {
		select {
		case ch <- target:
		default:
			w.log.Warn("push rotation: the driver is not keeping up; a volume waits for its interval", "target", target)
		}
	}
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
