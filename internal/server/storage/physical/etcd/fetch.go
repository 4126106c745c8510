package etcd

import (
	"context"
	"sync"
	"time"
)

// fetcher shares quorum reads of the current revision between requests.
// A request may only use a read that began after it arrived (one already
// in flight might have been served before a write the request must see),
// so it joins the next read, and at most one read is in flight: under load
// every request waits for at most two reads, and the cluster sees one read
// per round, however many requests there are.
type fetcher struct {
	get func(context.Context) (int64, error)

	mu       sync.Mutex
	inflight bool
	next     *round // the round that starts when the one in flight ends
}

type round struct {
	done chan struct{}
	rev  int64
	err  error
}

func (f *fetcher) fetch(ctx context.Context) (int64, error) {
	f.mu.Lock()
	r := f.next
	if r == nil {
		r = &round{done: make(chan struct{})}
		f.next = r
	}
	if !f.inflight {
		f.startLocked()
	}
	f.mu.Unlock()
	select {
	case <-r.done:
		return r.rev, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// startLocked starts the waiting round.
func (f *fetcher) startLocked() {
	r := f.next
	f.next, f.inflight = nil, true
	go func() {
		// The round serves many callers, so no one caller's context bounds
		// it; the engine's request timeout, inside get, does.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r.rev, r.err = f.get(ctx)
		cancel()
		close(r.done)
		f.mu.Lock()
		f.inflight = false
		if f.next != nil {
			f.startLocked()
		}
		f.mu.Unlock()
	}()
}
