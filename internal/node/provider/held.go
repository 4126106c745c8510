package provider

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// Held reads: the way to watch objects on a vault server without the
// vault watch. Each object is watched with a held conditional read
// (Prefer: wait) for every volume on the node that holds it.
//
// The held read's answer to a change carries the new value: it goes into
// the object cache under its new ETag before the volumes are reported, so
// each follow-up Mount's conditional read is answered 304 and the value
// crosses the network once per change. Each Mount still asks the vault,
// with its own volume's token: the vault authorizes every volume's read,
// and a 304 is only the answer to an authorized one.

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

// holdLocked watches t's objects with held reads, in place of what old
// (the volume's previous registration, or nil) held.
func (w *watcher) holdLocked(target string, t, old *watchedTarget) {
	for key, it := range t.items {
		if _, ok := w.notHeld[it.base]; ok {
			delete(t.items, key)
			continue
		}
		o := w.objects[key]
		if o == nil {
			ctx, cancel := context.WithCancel(context.Background())
			o = &watchedObject{item: it, subs: map[string]subscriber{}, cancel: cancel}
			w.objects[key] = o
			go w.poll(ctx, key, o)
		}
		// The mount has just read it: its state is the newest known.
		o.item.etag = it.etag
		o.subs[target] = subscriber{etag: it.etag, token: t.token, expires: t.expires}
	}
	if old != nil {
		for key := range old.items {
			if _, still := t.items[key]; !still {
				w.unholdLocked(key, target)
			}
		}
	}
	if len(t.items) == 0 {
		delete(w.targets, target)
	}
	w.countLocked()
}

// unholdLocked removes target from one object, and stops watching the
// object if no volume is left.
func (w *watcher) unholdLocked(key, target string) {
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
		w.countLocked()
	}
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
			w.notifyLocked(target)
		}
	}
}
