package provider

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"

	"github.com/cofferhq/coffer/internal/node/azparams"
	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// cache keeps the objects last read, with their ETags, so a read of an
// unchanged object is a conditional request answered 304: the vault still
// authorizes every read, but no value crosses the network again. It is
// keyed by vault, type, name and requested version, not by identity: the
// vault decides per request whether the caller may have it. Bounded by
// bytes, least recently used first out.
type cache struct{ l *lru[cached] }

type cached struct {
	etag string
	obj  *fetched
}

func newCache(max int) *cache { return &cache{l: newLRU[cached](max)} }

func (c *cache) get(key string) (string, *fetched) {
	it, _ := c.l.get(key)
	return it.etag, it.obj
}

func (c *cache) put(key, etag string, obj *fetched) {
	if etag == "" {
		return // nothing to revalidate with
	}
	c.l.put(key, cached{etag: etag, obj: obj}, obj.size())
}

// Throttling: a throttled read is tried again, at most throttleRetries
// times, after the vault's Retry-After (or an exponential backoff from
// throttleBackoff), with jitter so a node's mounts do not retry in step,
// while the mount's deadline leaves room; then the mount fails Throttled.
const (
	throttleRetries = 3
	throttleBackoff = 250 * time.Millisecond
	maxRetryAfter   = 10 * time.Second
)

// reader is who reads a mount's objects: the vault, the mount's token,
// and the vault watch (streamKey) that may vouch for its objects, if any.
type reader struct{ base, token, watch string }

// fetchPatiently is fetch, retrying throttled reads.
func (s *Server) fetchPatiently(ctx context.Context, rd reader, objType, name, version string) (*fetched, error) {
	backoff := throttleBackoff
	for attempt := 0; ; attempt++ {
		f, err := s.fetch(ctx, rd, objType, name, version)
		if err == nil || attempt == throttleRetries || kvclient.Classify(err) != mounterr.Throttled {
			return f, err
		}
		wait := backoff
		var ke *kvclient.Error
		if errors.As(err, &ke) && ke.RetryAfter > 0 {
			wait = ke.RetryAfter
		}
		if wait > maxRetryAfter {
			return f, err // longer than a mount should wait: the kubelet retries later
		}
		wait += rand.N(wait/4 + 1)
		// Room for the wait and the read after it; otherwise the 429 is
		// the honest answer, not the deadline the retry would hit.
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait+time.Second {
			return f, err
		}
		s.requests.WithLabelValues(objType, "throttled_retry").Inc()
		if !sleep(ctx, wait) {
			return f, err
		}
		backoff *= 2
	}
}

// cacheKey names one object version in the cache: "" is the latest.
func cacheKey(base, objType, name, version string) string {
	return base + "\x00" + objType + "\x00" + name + "\x00" + version
}

// decoding is where a read of one object type decodes to, and how what
// it decoded becomes a fetched. A mount's reads and the held reads of
// push rotation share it, so a value a held read brought is cached
// exactly as the mount's own read would have cached it.
type decoding struct {
	out any
	get func() *fetched
}

func decodingFor(objType string) decoding {
	switch objType {
	case azparams.TypeKey:
		var k kvclient.Key
		return decoding{&k, func() *fetched { return &fetched{Version: kvclient.VersionOf(k.Key.Kid), Key: &k.Key} }}
	case azparams.TypeCert:
		var c kvclient.Certificate
		return decoding{&c, func() *fetched { return &fetched{Version: kvclient.VersionOf(c.ID), CER: c.CER} }}
	}
	var sec kvclient.Secret
	return decoding{&sec, func() *fetched {
		return &fetched{Version: kvclient.VersionOf(sec.ID), Value: sec.Value, ContentType: sec.ContentType, CertBacked: sec.KID != ""}
	}}
}

// fetch reads one object version, conditionally when it is cached. The
// latest version of an object that the mount's own vault watch vouches
// for, at the state the cache holds, is answered from the cache without a
// request: that watch's identity is the mount's, and the vault authorized
// it for the object and reports every change and loss of access to it.
func (s *Server) fetch(ctx context.Context, rd reader, objType, name, version string) (*fetched, error) {
	key := cacheKey(rd.base, objType, name, version)
	etag, prev := s.cache.get(key)
	if version == "" && prev != nil && etag != "" && s.watch.fresh(rd.watch, key) == etag {
		s.fromWatch.WithLabelValues(objType).Inc()
		return prev, nil
	}
	d := decodingFor(objType)
	newTag, notMod, err := s.cfg.Vault.Get(ctx, rd.base, rd.token, collection(objType), name, version, etag, d.out)
	switch {
	case err != nil:
		s.requests.WithLabelValues(objType, "error").Inc()
		return nil, err
	case notMod && prev != nil:
		s.requests.WithLabelValues(objType, "not_modified").Inc()
		return prev, nil
	case notMod:
		s.requests.WithLabelValues(objType, "error").Inc()
		return nil, errors.New("the vault answered 304 to an unconditional read")
	}
	s.requests.WithLabelValues(objType, "fetched").Inc()
	f := d.get()
	f.ETag = newTag
	if f.Version == "" {
		return nil, errors.New("the vault's answer has no object id")
	}
	s.cache.put(key, newTag, f)
	return f, nil
}
