package etcd

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
// it so. A read from the cluster is made at the view's revision, and held
// only if the view has not moved since: an event the watch applied
// meanwhile found nothing held to update. The watch applies an event only
// if it is newer than what is held.
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

// read reads the cluster as it was at revision least, the view's when the
// read began (0: as it is now, with a quorum read). Reading at exactly the
// view's revision, not at whatever a member has reached, keeps every synced
// answer in step with the view: a scan and a get of the same request agree,
// and no answer runs ahead of the view, from which a later one, from the
// view or from another member, would go back. The member this process
// talks to answers if it has reached least; one that has not answers after
// a quorum read has caught it up.
func (b *Backend) read(ctx context.Context, least int64, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if least == 0 {
		return b.cli.Get(ctx, key, opts...)
	}
	opts = append(opts, clientv3.WithRev(least))
	resp, err := b.cli.Get(ctx, key, append(opts, clientv3.WithSerializable())...)
	if errors.Is(err, rpctypes.ErrFutureRev) {
		resp, err = b.cli.Get(ctx, key, opts...)
	}
	if errors.Is(err, rpctypes.ErrCompacted) {
		// The view lags so far behind that the cluster has compacted its
		// revision: its watch fails next, and the view starts again.
		return nil, fmt.Errorf("%w: this replica's view (revision %d) is older than the cluster's compaction", physical.ErrUnavailable, least)
	}
	return resp, err
}

// fetch reads a key the view does not hold, at revision least (the view's
// when the read began), and holds what it read.
func (b *Backend) fetch(ctx context.Context, key string, least int64) ([]byte, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.read(cctx, least, b.prefix+key)
	b.metrics.observe("fetch", start)
	if err != nil {
		return nil, b.unavailable("get", err)
	}
	r := &resident{key: key, rev: least}
	if len(resp.Kvs) > 0 {
		r.exists, r.rev, r.value = true, resp.Kvs[0].ModRevision, resp.Kvs[0].Value
	}
	// Held only if the view has not moved since: an event for this key
	// after least would have found nothing held to update.
	b.mu.Lock()
	if b.viewRev == least {
		b.vals.observe(r)
	}
	b.mu.Unlock()
	if !r.exists {
		return nil, physical.ErrNotFound
	}
	return clone(r.value), nil
}
