package server

import (
	"context"
	"time"
)

// leadEvents runs the events job (making events from changes and the
// clock, and delivering them) on the one replica that leads it. It has its
// own leadership, apart from the scheduler's, because it ticks much faster
// than the purge and would otherwise wait behind it; its writes are fenced
// by that leadership like the scheduler's.
func (s *Server) leadEvents(ctx context.Context) {
	for ctx.Err() == nil {
		lctx, err := s.store.Leader.Lead(ctx, "events")
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("cannot campaign for the events job's leadership; retrying", "error", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		s.runEvents(lctx)
		if ctx.Err() == nil {
			s.log.Warn("this replica lost the events job's leadership", "cause", context.Cause(lctx))
		}
	}
}

func (s *Server) runEvents(ctx context.Context) {
	// What another leader did meanwhile is in the store; a full first
	// pass makes sure nothing in between is missed.
	s.Events.TouchAll()
	t := time.NewTicker(s.cfg.EventInterval)
	defer t.Stop()
	for {
		if sctx, err := s.store.Barrier.Sync(ctx); err == nil {
			s.Events.Tick(sctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
