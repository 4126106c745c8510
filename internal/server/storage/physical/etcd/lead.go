package etcd

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// leaseTTL is how long a dead leader's lease lasts: the next leader takes
// over within it.
const leaseTTL = 10

// fenceKey carries a leadership's fence in a context.
type fenceKey struct{}

// fence is the election key a leader holds and the revision it was created
// at: a write is fenced by comparing them, so that a leader whose lease
// expired (paused, partitioned) cannot write after another took over. An
// etcd lock alone does not give that.
type fence struct {
	key string
	rev int64
}

// Lead implements physical.Leader with an etcd election per job, under
// {prefix}leader/{job} (physical.LeasePrefix, which tools that copy a store
// pass over). It returns once this process leads; the context
// ends when the leadership's lease is lost, and fences every Apply made
// with it.
func (b *Backend) Lead(ctx context.Context, job string) (context.Context, error) {
	s, err := concurrency.NewSession(b.cli, concurrency.WithTTL(leaseTTL), concurrency.WithContext(b.ctx))
	if err != nil {
		return nil, b.unavailable("start a lease for "+job, err)
	}
	e := concurrency.NewElection(s, b.prefix+physical.LeasePrefix+job)
	if err := e.Campaign(ctx, b.o.Identity()); err != nil {
		s.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, b.unavailable("campaign for "+job, err)
	}
	lctx, cancel := context.WithCancelCause(context.WithValue(ctx, fenceKey{}, fence{key: e.Key(), rev: e.Rev()}))
	l := &leadership{ctx: lctx, over: make(chan struct{})}
	b.mu.Lock()
	if b.leads == nil {
		b.leads = map[*leadership]struct{}{}
	}
	b.leads[l] = struct{}{}
	b.mu.Unlock()
	go func() {
		defer func() {
			b.mu.Lock()
			delete(b.leads, l)
			b.mu.Unlock()
			close(l.over)
		}()
		select {
		case <-s.Done():
			cancel(fmt.Errorf("the lease of the %s leadership expired", job))
		case <-lctx.Done():
			// Resign lets the next leader start at once instead of after
			// the lease; it must not wait on a context that ended.
			rctx, rcancel := context.WithTimeout(context.Background(), b.o.RequestTimeout)
			e.Resign(rctx)
			rcancel()
			s.Close()
		}
	}()
	return lctx, nil
}

// leadership is one held election; over is closed once it has been given
// up (resigned, or its lease lost).
type leadership struct {
	ctx  context.Context
	over chan struct{}
}

// awaitResignations waits (within the request timeout) for the leaderships
// whose contexts have ended to resign, so that a process that gives up a
// job and closes at once (operator init, a server shutting down) hands it
// over now rather than when its lease runs out. Leaderships still held are
// not waited for: closing ends their leases.
func (b *Backend) awaitResignations() {
	b.mu.Lock()
	var ended []*leadership
	for l := range b.leads {
		if l.ctx.Err() != nil {
			ended = append(ended, l)
		}
	}
	b.mu.Unlock()
	deadline := time.NewTimer(b.o.RequestTimeout)
	defer deadline.Stop()
	for _, l := range ended {
		select {
		case <-l.over:
		case <-deadline.C:
			return
		}
	}
}
