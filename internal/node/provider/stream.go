package provider

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
)

// Vault watches (docs/vault-watch.md): one streaming request per vault
// server and identity watches every object that the node's volumes of
// that identity hold. The server authorizes the identity for each object
// when the watch opens, again before it reports any change, and again on
// a timer and whenever access changes; it reports an object Dropped once
// the identity may no longer read it.
//
// So, while a watch is healthy, what it says is what a read with that
// identity's token would find: a Mount for a volume of that identity
// answers the objects the watch vouches for from the cache, and sends no
// request (fresh). A watch is healthy from its Ready until it breaks, and
// for at most freshFor after the server last confirmed it (Ready or
// Authorized): a server that goes silent stops being trusted, and the
// mounts read the vault again. Whatever a watch does not vouch for (an
// object it has not confirmed yet or that was dropped, a pinned version,
// a version history, a missing optional object) is read from the vault
// as always.
const (
	// watchDebounce gathers the registrations of a burst of mounts into
	// one new watch.
	watchDebounce = 100 * time.Millisecond
	// readyTimeout bounds the server's first pass.
	readyTimeout = 2 * time.Minute
	// defaultReauthorize is the server's re-authorization period when its
	// Ready does not say.
	defaultReauthorize = 30 * time.Second
)

// stream is one vault watch: a server and an identity, the objects its
// volumes hold, and the state of the request that watches them.
type stream struct {
	key      string
	resource string
	objects  map[string]*streamObject // by watchItem.key
	targets  map[string]struct{}

	// stale: the open request does not ask for what is to be watched
	// (an object was added, or a mount read another state than the watch
	// knows), or there is none: open a new one.
	stale bool
	wake  chan struct{}
	stop  context.CancelFunc

	// The open request.
	ready     bool
	confirmed time.Time     // the server's last Ready or Authorized
	freshFor  time.Duration // how long a confirmation is trusted
	sent      []sentObject  // by their index in the request
}

// sentObject is one object of the open request: its key, and the state it
// was asked for at.
type sentObject struct{ key, etag string }

// streamObject is one object of a vault watch.
type streamObject struct {
	item watchItem // etag: the newest state known
	// covered: the open request vouches for item.etag.
	covered bool
	// dropped: the server stopped watching it for this identity, which
	// may no longer read it; it is asked for again once a mount of it
	// succeeds.
	dropped bool
	refs    int // the stream's volumes that hold it
}

// streamKey names the vault watch of one server and identity.
func streamKey(resource, principal string) string { return resource + "\x00" + principal }

// principalOf names a token's identity, or "" when its claims do not
// say (a token that is not a JWT): the vault watch is per identity.
func principalOf(c authclient.Claims) string {
	if c.TenantID == "" || c.ObjectID == "" {
		return ""
	}
	return c.TenantID + "/" + c.ObjectID
}

// fresh returns the state at which the vault watch named watch vouches
// for the object key, or "" if it does not vouch for it now.
func (w *watcher) fresh(watch, key string) string {
	if watch == "" {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.watches[watch]
	if st == nil || !st.ready || w.now().Sub(st.confirmed) > st.freshFor {
		return ""
	}
	if so := st.objects[key]; so != nil && so.covered && !so.dropped {
		return so.item.etag
	}
	return ""
}

// streamLocked watches t's objects through its vault watch, in place of
// what old (the volume's previous registration on the same watch, or
// nil) held.
func (w *watcher) streamLocked(r registration, t, old *watchedTarget) {
	st := w.watches[t.stream]
	if st == nil {
		ctx, cancel := context.WithCancel(context.Background())
		st = &stream{key: t.stream, resource: r.resource, objects: map[string]*streamObject{}, targets: map[string]struct{}{},
			stale: true, wake: make(chan struct{}, 1), stop: cancel}
		w.watches[t.stream] = st
		go w.runStream(ctx, st)
	}
	st.targets[r.target] = struct{}{}
	for key, it := range t.items {
		so := st.objects[key]
		if so == nil {
			so = &streamObject{item: it}
			st.objects[key] = so
			st.stale = true
		}
		if old == nil || old.items[key] == (watchItem{}) {
			so.refs++
		}
		if so.item.etag != it.etag || so.dropped {
			// A mount read another state than the watch knows (or one it
			// dropped is readable again): ask for it from that state.
			so.item.etag, so.covered, so.dropped = it.etag, false, false
			st.stale = true
		}
	}
	if old != nil {
		for key := range old.items {
			if _, still := t.items[key]; !still {
				w.releaseLocked(st, key)
			}
		}
	}
	if st.stale {
		signal(st.wake)
	}
	w.countLocked()
}

// unstreamLocked removes a volume from its vault watch, and ends the
// watch once it has no volume left.
func (w *watcher) unstreamLocked(target string, t *watchedTarget) {
	st := w.watches[t.stream]
	if st == nil {
		return
	}
	delete(st.targets, target)
	for key := range t.items {
		w.releaseLocked(st, key)
	}
	if len(st.targets) == 0 {
		st.stop()
		delete(w.watches, t.stream)
	}
	w.countLocked()
}

// releaseLocked lets go of one volume's hold on an object. An object no
// volume holds is no longer watched: the open request's records about it
// are ignored, and the next one leaves it out.
func (w *watcher) releaseLocked(st *stream, key string) {
	if so := st.objects[key]; so != nil {
		if so.refs--; so.refs <= 0 {
			delete(st.objects, key)
		}
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// runStream keeps st's vault watch open until st is stopped: it opens a
// request with every object to watch, applies its records, and opens a
// new one when the objects change, the token nears expiry, or the request
// fails (after a backoff with jitter). A server without the vault watch
// moves st's volumes to held reads.
func (w *watcher) runStream(ctx context.Context, st *stream) {
	backoff := time.Second
	for ctx.Err() == nil {
		req, token, expires, ok := w.nextRequest(ctx, st)
		if !ok {
			return
		}
		start := time.Now()
		err := w.watchOnce(ctx, st, req, token, expires)
		w.mu.Lock()
		st.ready = false
		for _, so := range st.objects {
			so.covered = false
		}
		st.stale = true
		w.mu.Unlock()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			backoff = time.Second // a new request at once: the objects or the token changed
			continue
		case errors.Is(err, kvclient.ErrNoWatch):
			w.log.Info("push rotation: the vault server does not offer the vault watch; its objects are watched with held reads", "server", st.resource)
			w.fallBack(st)
			return
		case refused(err):
			// The token itself was refused: the volumes' refreshes renew
			// it, or say on their pods why they cannot.
			w.mu.Lock()
			for target := range st.targets {
				w.notifyLocked(target)
			}
			w.mu.Unlock()
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		w.log.Debug("push rotation: a vault watch ended; opening it again", "server", st.resource, "class", kvclient.Classify(err), "retry", backoff)
		if !sleep(ctx, backoff+rand.N(backoff/2)) {
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// nextRequest waits until st has something to watch with a token good
// for a while, after watchDebounce, and returns the request: every
// object not dropped, each at the newest state known.
func (w *watcher) nextRequest(ctx context.Context, st *stream) (req []vaultwatch.Object, token string, expires time.Time, ok bool) {
	for {
		if !sleep(ctx, watchDebounce) {
			return nil, "", time.Time{}, false
		}
		w.mu.Lock()
		token, expires = w.bestTokenLocked(st)
		if token != "" {
			req, st.sent = req[:0], st.sent[:0]
			for key, so := range st.objects {
				if !so.dropped {
					req = append(req, vaultwatch.Object{Vault: vaultOf(so.item.base), Kind: collection(so.item.objType), Name: so.item.name, ETag: so.item.etag})
					st.sent = append(st.sent, sentObject{key: key, etag: so.item.etag})
				}
			}
			st.stale = false
		}
		w.mu.Unlock()
		if token != "" && len(req) > 0 {
			return req, token, expires, true
		}
		select { // nothing to watch, or no token to watch with: wait for a mount
		case <-ctx.Done():
			return nil, "", time.Time{}, false
		case <-st.wake:
		}
	}
}

// bestTokenLocked returns the token of st's volumes that lasts longest,
// if it is good for more than tokenSlack. The volumes whose tokens are
// closer to expiry than that are reported, once each: their refreshes
// bring fresh tokens.
func (w *watcher) bestTokenLocked(st *stream) (string, time.Time) {
	var token string
	var until time.Time
	for target := range st.targets {
		t := w.targets[target]
		if t == nil {
			continue
		}
		if t.expires.Before(w.now().Add(tokenSlack)) {
			if t.token != "" {
				t.token = "" // reported once; its next mount registers it again
				w.notifyLocked(target)
			}
			continue
		}
		if t.expires.After(until) {
			token, until = t.token, t.expires
		}
	}
	return token, until
}

// vaultOf is a vault's name: the first label of its base URL's host.
func vaultOf(base string) string {
	host := strings.TrimPrefix(base, "https://")
	name, _, _ := strings.Cut(host, ".")
	return name
}

// watchOnce runs one request of st's vault watch. It returns nil when a
// new request is due (the objects or the token changed, or the server
// ended the stream to be asked again), and otherwise why it failed.
func (w *watcher) watchOnce(ctx context.Context, st *stream, req []vaultwatch.Object, token string, expires time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := w.stream.OpenWatch(ctx, st.resource, token, req)
	if err != nil {
		return err
	}
	defer ws.Close()
	type next struct {
		rec vaultwatch.Record
		err error
	}
	records := make(chan next, 16)
	go func() {
		for {
			rec, err := ws.Next()
			select {
			case records <- next{rec, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	silence := time.NewTimer(readyTimeout)
	defer silence.Stop()
	renew := time.NewTimer(time.Until(expires.Add(-tokenSlack)))
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-renew.C:
			return nil // the token nears expiry: a new request, with the freshest one
		case <-silence.C:
			return errors.New("the vault watch went silent")
		case <-st.wake:
			w.mu.Lock()
			stale := st.stale
			w.mu.Unlock()
			if stale {
				// Gather the rest of a burst of mounts while this request
				// still vouches for what it watches.
				if !sleep(ctx, watchDebounce) {
					return ctx.Err()
				}
				return nil
			}
		case n := <-records:
			if n.err == io.EOF {
				return errors.New("the server ended the vault watch without saying why")
			}
			if n.err != nil {
				return n.err
			}
			if n.rec.Type == vaultwatch.End {
				if n.rec.Reason == vaultwatch.ReasonUnavailable {
					return errors.New("the vault server cannot reach its store")
				}
				return nil
			}
			if d := w.apply(st, n.rec); d > 0 {
				silence.Reset(d)
			}
		}
	}
}

// apply takes one record of st's open request, and returns how long the
// request may now stay silent (0: unchanged).
func (w *watcher) apply(st *stream, rec vaultwatch.Record) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var so *streamObject
	var key string
	if rec.Object >= 0 && rec.Object < len(st.sent) {
		key = st.sent[rec.Object].key
		so = st.objects[key]
	}
	switch rec.Type {
	case vaultwatch.Ready:
		st.freshFor = defaultReauthorize * 3 / 2
		if rec.Reauthorize > 0 {
			st.freshFor = time.Duration(rec.Reauthorize) * time.Second * 3 / 2
		}
		// What was asked for and not reported is at the state asked for,
		// unless a mount has found it in another state since (then a new
		// request is due, which settles it).
		for _, sent := range st.sent {
			if o := st.objects[sent.key]; o != nil && !o.dropped && o.item.etag == sent.etag {
				o.covered = true
			}
		}
		st.ready, st.confirmed = true, w.now()
		return st.freshFor
	case vaultwatch.Authorized:
		st.confirmed = w.now()
		return st.freshFor
	case vaultwatch.Changed:
		if so == nil {
			return 0
		}
		so.item.etag, so.covered = rec.ETag, rec.ETag != ""
		for target := range st.targets {
			if t := w.targets[target]; t != nil {
				if it, ok := t.items[key]; ok && it.etag != rec.ETag {
					w.notifyLocked(target)
				}
			}
		}
	case vaultwatch.Dropped:
		if so == nil {
			return 0
		}
		so.covered, so.dropped = false, true
		for target := range st.targets {
			if t := w.targets[target]; t != nil {
				if _, ok := t.items[key]; ok {
					w.notifyLocked(target) // its refresh reads the object, and says why it cannot
				}
			}
		}
	}
	return 0
}

// fallBack moves st's volumes to held reads: its server does not offer
// the vault watch. It is asked again, by later mounts, after
// notHeldPause.
func (w *watcher) fallBack(st *stream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.noWatch[st.resource] = w.now()
	if w.watches[st.key] == st {
		delete(w.watches, st.key)
	}
	for target := range st.targets {
		t := w.targets[target]
		if t == nil || t.stream != st.key {
			continue
		}
		t.stream = ""
		w.holdLocked(target, t, nil)
	}
	w.countLocked()
}
