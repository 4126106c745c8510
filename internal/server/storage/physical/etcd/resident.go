package etcd

import (
	"container/list"
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// DefaultViewBytes bounds what the local view holds unless configured.
// Holding the whole prefix, as the view once did, made each replica's
// memory and its start grow with the store: at 10⁶ secret versions a
// server was not ready within 2 minutes.
const DefaultViewBytes = 64 << 20

// resident is what the view holds of one key: its value at revision rev,
// or (exists false) that it was absent at rev.
type resident struct {
	key    string
	rev    int64
	exists bool
	value  []byte
}

// values is the local view: a bounded set of residents, least recently used
// first out. It is guarded by the Backend's mu.
//
// Every resident is the key's state at the view's revision. Two rules keep
// it so. The watch applies an event only if it is newer than what is held
// (a read may have already held a later state). A read from the cluster is
// held only if it was at the view's revision or later: one from before it
// might miss an event the watch has applied to a resident since pushed
// out.
type values struct {
	max   int
	bytes int
	order *list.List // of *resident, most recent at the front
	byKey map[string]*list.Element
}

func newValues(max int) *values {
	return &values{max: max, order: list.New(), byKey: make(map[string]*list.Element)}
}

// cost counts a resident's bytes and a share for its bookkeeping, so that
// many small residents, or absences, are bounded too.
func cost(r *resident) int { return len(r.key) + len(r.value) + 64 }

// get returns what is held of key.
func (vs *values) get(key string) (*resident, bool) {
	el, ok := vs.byKey[key]
	if !ok {
		return nil, false
	}
	vs.order.MoveToFront(el)
	return el.Value.(*resident), true
}

// observe holds r unless something at r's revision or later is held.
func (vs *values) observe(r *resident) {
	if el, ok := vs.byKey[r.key]; ok && el.Value.(*resident).rev >= r.rev {
		return
	}
	vs.put(r)
}

// put holds r, then pushes out the least recently used residents until the
// set is within its bound. A resident larger than the whole bound is not
// held.
func (vs *values) put(r *resident) {
	vs.drop(r.key)
	if cost(r) > vs.max {
		return
	}
	vs.byKey[r.key] = vs.order.PushFront(r)
	vs.bytes += cost(r)
	for vs.bytes > vs.max {
		vs.drop(vs.order.Back().Value.(*resident).key)
	}
}

// drop forgets key.
func (vs *values) drop(key string) {
	el, ok := vs.byKey[key]
	if !ok {
		return
	}
	r := vs.order.Remove(el).(*resident)
	delete(vs.byKey, key)
	vs.bytes -= cost(r)
}

// read reads the cluster at revision least or later: from the member this
// process talks to when it has reached least, and otherwise (or with least
// 0) with a quorum read.
func (b *Backend) read(ctx context.Context, least int64, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if least > 0 {
		resp, err := b.cli.Get(ctx, key, append(opts, clientv3.WithSerializable())...)
		if err == nil && resp.Header.Revision >= least {
			return resp, nil
		}
	}
	return b.cli.Get(ctx, key, opts...)
}

// fetch reads a key the view does not hold, at revision least (the view's
// when the read began) or later, and holds what it read.
func (b *Backend) fetch(ctx context.Context, key string, least int64) ([]byte, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.read(cctx, least, b.prefix+key)
	b.metrics.observe("fetch", start)
	if err != nil {
		return nil, b.unavailable("get", err)
	}
	if at := resp.Header.Revision; at < least {
		return nil, fmt.Errorf("%w: the cluster answered at revision %d, older than this replica's view (%d)", physical.ErrUnavailable, at, least)
	}
	r := &resident{key: key, rev: resp.Header.Revision}
	if len(resp.Kvs) > 0 {
		r.exists, r.rev, r.value = true, resp.Kvs[0].ModRevision, resp.Kvs[0].Value
	}
	b.mu.Lock()
	if resp.Header.Revision >= b.viewRev {
		b.vals.observe(r)
	}
	b.mu.Unlock()
	if !r.exists {
		return nil, physical.ErrNotFound
	}
	return clone(r.value), nil
}
