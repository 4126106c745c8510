package etcd

import (
	"container/list"
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// DefaultViewBytes bounds the values the local view keeps in memory unless
// configured. The view always holds every key and its revision; of the
// values, it keeps the ones read or written last, up to this many bytes.
// Holding them all made each replica's memory, and its start, grow with
// the whole store: about 430 MiB and 2 s at 10⁵ secret versions.
const DefaultViewBytes = 64 << 20

// resident is a value the view holds, at the revision it was written.
type resident struct {
	key   string
	rev   int64
	value []byte
}

// values is the view's bounded set of resident values, least recently used
// first out. It is guarded by the Backend's mu.
type values struct {
	max   int
	bytes int
	order *list.List // of *resident, most recent at the front
	byKey map[string]*list.Element
}

func newValues(max int) *values {
	return &values{max: max, order: list.New(), byKey: make(map[string]*list.Element)}
}

// cost counts a value's bytes and a share for its bookkeeping, so that
// many small values are bounded too.
func cost(r *resident) int { return len(r.key) + len(r.value) + 64 }

// get returns key's value if it is held at revision rev.
func (vs *values) get(key string, rev int64) ([]byte, bool) {
	el, ok := vs.byKey[key]
	if !ok {
		return nil, false
	}
	r := el.Value.(*resident)
	if r.rev != rev {
		return nil, false
	}
	vs.order.MoveToFront(el)
	return r.value, true
}

// put holds value as key's at revision rev, then evicts the least recently
// used values until the set is within its bound. A value larger than the
// whole bound is not held.
func (vs *values) put(key string, rev int64, value []byte) {
	vs.drop(key)
	r := &resident{key: key, rev: rev, value: value}
	if cost(r) > vs.max {
		return
	}
	vs.byKey[key] = vs.order.PushFront(r)
	vs.bytes += cost(r)
	for vs.bytes > vs.max {
		vs.drop(vs.order.Back().Value.(*resident).key)
	}
}

// drop forgets key's value.
func (vs *values) drop(key string) {
	el, ok := vs.byKey[key]
	if !ok {
		return
	}
	r := vs.order.Remove(el).(*resident)
	delete(vs.byKey, key)
	vs.bytes -= cost(r)
}

// fetch reads a value the view knows by its key and revision but does not
// hold, and holds it if the key has not changed meanwhile (a value held at
// another revision than the view's is never answered, so that check only
// keeps useless values out). A read from the
// member this process talks to is enough when it has reached that
// revision; one that lags behind it is asked again with a quorum read. A
// value newer than the view's is returned as it is: it was committed before
// this read, so a read that sees it is still linearizable.
func (b *Backend) fetch(ctx context.Context, key string, rev int64) ([]byte, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.cli.Get(cctx, b.prefix+key, clientv3.WithSerializable())
	if err == nil && (len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision < rev) {
		resp, err = b.cli.Get(cctx, b.prefix+key)
	}
	b.metrics.observe("fetch", start)
	if err != nil {
		return nil, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, physical.ErrNotFound // deleted since the view's revision
	}
	kv := resp.Kvs[0]
	if kv.ModRevision < rev {
		return nil, fmt.Errorf("%w: the cluster answered %s at revision %d, older than this replica's view (%d)", physical.ErrUnavailable, key, kv.ModRevision, rev)
	}
	b.mu.Lock()
	if cur, ok := b.view.Get(entry{key: key}); ok && cur.rev == kv.ModRevision {
		b.vals.put(key, kv.ModRevision, kv.Value)
	}
	b.mu.Unlock()
	return clone(kv.Value), nil
}
