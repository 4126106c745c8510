package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// restart follows the prefix again after the watch lost events (a
// compaction, a broken stream): the view forgets everything it holds and
// moves to the cluster's current revision, and subscribers hear a Reset.
// It returns that revision, for the next watch.
func (b *Backend) restart(ctx context.Context) (int64, error) {
	rev, err := b.currentRevision(ctx)
	if err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.vals = newValues(b.o.ViewBytes)
	b.advanceLocked(rev)
	b.enqueueLocked(batch{rev: rev, change: physical.Change{Reset: true}})
	b.mu.Unlock()
	return rev, nil
}

// advanceLocked moves the view's revision forward and wakes its waiters.
func (b *Backend) advanceLocked(rev int64) {
	if rev <= b.viewRev {
		return
	}
	b.viewRev = rev
	close(b.viewCh)
	b.viewCh = make(chan struct{})
}

func (b *Backend) enqueueLocked(bt batch) {
	b.queue = append(b.queue, bt)
	select {
	case b.queueCh <- struct{}{}:
	default:
	}
}

// watchLoop applies the watch's events to the view, from revision from+1.
// After a compaction or a broken stream it restarts, which reports a
// Reset: a missed change then still wakes whoever waits for it.
func (b *Backend) watchLoop(from int64) {
	for b.ctx.Err() == nil {
		err := b.watch(from)
		if b.ctx.Err() != nil {
			return
		}
		b.setWatch(false, err)
		b.log.Warn("etcd watch ended; following again", "error", err)
		// Only a restart gives a revision to watch from again: watching
		// from the old one would replay every event since, over what the
		// view (and each subscriber) already holds.
		var ok bool
		if from, ok = b.restartUntilDone(); !ok {
			return
		}
	}
}

// restartUntilDone restarts, with backoff, until it succeeds (false: the
// engine closed first).
func (b *Backend) restartUntilDone() (int64, bool) {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-b.ctx.Done():
			return 0, false
		case <-time.After(backoff):
		}
		rev, err := b.restart(b.ctx)
		if err == nil {
			return rev, true
		}
		b.setWatch(false, err)
		b.log.Warn("etcd: cannot follow the store again yet", "error", err, "retryIn", backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (b *Backend) setWatch(ok bool, err error) {
	b.mu.Lock()
	b.watchOK, b.lastErr = ok, err
	b.mu.Unlock()
	b.metrics.setWatching(ok)
}

// watch follows the prefix from revision from+1 until the stream fails.
func (b *Backend) watch(from int64) error {
	// WithRequireLeader ends the stream when the member loses its leader,
	// so that a partitioned member never feeds a stale view.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(b.ctx))
	defer cancel()
	wch := b.cli.Watch(wctx, b.prefix, clientv3.WithPrefix(), clientv3.WithRev(from+1), clientv3.WithProgressNotify())
	b.setWatch(true, nil)
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		if resp.CompactRevision != 0 {
			return fmt.Errorf("the watch's revision %d was compacted (now %d)", from+1, resp.CompactRevision)
		}
		b.mu.Lock()
		if resp.IsProgressNotify() {
			b.enqueueLocked(batch{rev: resp.Header.Revision})
			b.advanceLocked(resp.Header.Revision)
			b.mu.Unlock()
			continue
		}
		// A response may hold several revisions; each is one batch.
		var cur *batch
		for _, ev := range resp.Events {
			rev := ev.Kv.ModRevision
			if cur != nil && cur.rev != rev {
				b.enqueueLocked(*cur)
				cur = nil
			}
			if cur == nil {
				cur = &batch{rev: rev}
			}
			k := b.keyOf(ev.Kv)
			cur.change.Keys = append(cur.change.Keys, k)
			// What was just written is likely read next: by this
			// process, or by the nodes its watchers tell.
			b.vals.observe(&resident{key: k, rev: rev, exists: ev.Type != clientv3.EventTypeDelete, value: ev.Kv.Value})
			from = rev
		}
		if cur != nil {
			b.enqueueLocked(*cur)
			b.advanceLocked(cur.rev)
			b.metrics.lag(resp.Header.Revision, cur.rev)
		}
		b.mu.Unlock()
	}
	return errors.New("the watch stream closed")
}

// dispatchLoop hands committed batches to the subscribers, in order, apart
// from the watch: a subscriber that waits on a lock held by a writer (who
// waits for the view) cannot stall the view.
func (b *Backend) dispatchLoop() {
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.queueCh:
		}
		for {
			b.mu.Lock()
			if len(b.queue) == 0 {
				b.mu.Unlock()
				break
			}
			bt := b.queue[0]
			b.queue = b.queue[1:]
			subs := b.subs
			b.mu.Unlock()
			if len(bt.change.Keys) > 0 || bt.change.Reset {
				for _, fn := range subs {
					fn(bt.change)
				}
			}
			b.mu.Lock()
			if bt.rev > b.seen {
				b.seen = bt.rev
				close(b.seenCh)
				b.seenCh = make(chan struct{})
			}
			b.mu.Unlock()
		}
	}
}

// Subscribe implements physical.Shared.
func (b *Backend) Subscribe(fn func(physical.Change)) {
	b.mu.Lock()
	b.subs = append(b.subs, fn)
	b.mu.Unlock()
}

// waitView waits until the local view holds revision rev.
func (b *Backend) waitView(ctx context.Context, rev int64) error {
	for {
		b.mu.Lock()
		ok, ch := b.viewRev >= rev, b.viewCh
		b.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: the local view did not reach revision %d in time: %v", physical.ErrUnavailable, rev, ctx.Err())
		case <-b.ctx.Done():
			return physical.ErrClosed
		}
	}
}

// Sync implements physical.Shared.
func (b *Backend) Sync(ctx context.Context) (context.Context, error) {
	if b.isClosed() {
		return ctx, physical.ErrClosed
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, b.o.SyncTimeout)
	defer cancel()
	rev, err := b.revs.fetch(sctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("%w: no quorum read of the cluster's revision within %v", physical.ErrUnavailable, b.o.SyncTimeout)
		}
		return ctx, err
	}
	for {
		b.mu.Lock()
		seen, viewRev, ch := b.seen, b.viewRev, b.seenCh
		b.mu.Unlock()
		if seen >= rev {
			b.metrics.observe("sync", start)
			return physical.Synced(ctx), nil
		}
		if viewRev < rev {
			// No event of this prefix may come for a while: other
			// installations' writes move the revision too. A progress
			// notification says the watch has seen everything up to now.
			b.requestProgress(sctx, rev)
		}
		select {
		case <-ch:
		case <-time.After(progressRetry): // a lost progress request is asked again
		case <-sctx.Done():
			return ctx, fmt.Errorf("%w: this replica has not caught up with the cluster (at revision %d of %d): %v", physical.ErrUnavailable, seen, rev, sctx.Err())
		case <-b.ctx.Done():
			return ctx, physical.ErrClosed
		}
	}
}

// progressRetry is how long a requested progress notification may take
// before it is requested again.
const progressRetry = 100 * time.Millisecond

// requestProgress asks the watch for a progress notification, once per
// revision and progressRetry however many requests wait for it. Asking
// again matters: a request lost with a watch stream that broke and came
// back would otherwise leave every later request for the same revision
// waiting out its deadline until some write moved the view.
func (b *Backend) requestProgress(ctx context.Context, rev int64) {
	b.progress.Lock()
	defer b.progress.Unlock()
	b.mu.Lock()
	ok := b.watchOK
	b.mu.Unlock()
	if !ok || b.asked >= rev && time.Since(b.askedAt) < progressRetry {
		return
	}
	if err := b.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err == nil {
		b.asked, b.askedAt = max(b.asked, rev), time.Now()
	}
}

// currentRevision is a quorum read of the cluster's revision.
func (b *Backend) currentRevision(ctx context.Context) (int64, error) {
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.cli.Get(cctx, b.prefix, clientv3.WithCountOnly(), clientv3.WithLimit(1))
	b.metrics.observe("revision", start)
	if err != nil {
		return 0, b.unavailable("read the current revision", err)
	}
	return resp.Header.Revision, nil
}

// Ready reports whether the engine follows the cluster: its watch is up and
// a quorum read answers.
func (b *Backend) Ready(ctx context.Context) error {
	b.mu.Lock()
	ok, err := b.watchOK, b.lastErr
	b.mu.Unlock()
	if !ok {
		if err == nil {
			err = errors.New("not watching yet")
		}
		return fmt.Errorf("%w: the etcd watch is down: %v", physical.ErrUnavailable, err)
	}
	_, err = b.Sync(ctx)
	return err
}
