package push

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// UnimplementedRetry is how often Follow asks again a provider without
// the Push service: it may have been upgraded in place.
const UnimplementedRetry = 5 * time.Minute

// Follower is what Follow reports to, and how it logs.
type Follower struct {
	// Provider names the provider in logs.
	Provider string
	Log      *slog.Logger
	// Fallback says, in the log line for a provider without the
	// service, how its targets are refreshed meanwhile.
	Fallback string
	// Listening is called each time the provider listens; reconnected
	// is true from the second stream on, when pushes were lost while
	// the stream was down and a restarted provider forgot every target.
	Listening func(reconnected bool)
	// Changed is called with each target the provider reports.
	Changed func(target string)
	// Ready is called once: when the provider first listens, or once
	// the first attempt fails. Callers wait for it, briefly, before
	// their first call, so that the first target is already watched.
	Ready func()
}

// Follow keeps the provider's Push stream behind conn open until ctx
// ends, reconnecting with a backoff from 1 s to 30 s (reset after a
// stream that lasted a minute), and asking a provider without the
// service again every UnimplementedRetry.
func Follow(ctx context.Context, conn grpc.ClientConnInterface, f Follower) {
	var once sync.Once
	signal := func() { once.Do(f.Ready) }
	defer signal()
	backoff := time.Second
	for attempt := 0; ctx.Err() == nil; attempt++ {
		start := time.Now()
		err := Watch(ctx, conn, func() {
			f.Listening(attempt > 0)
			signal()
		}, f.Changed)
		signal()
		if ctx.Err() != nil {
			return
		}
		wait := backoff
		if status.Code(err) == codes.Unimplemented {
			if attempt == 0 {
				f.Log.Info("the provider does not push changes; "+f.Fallback, "provider", f.Provider)
			}
			wait = UnimplementedRetry
		} else {
			if time.Since(start) > time.Minute {
				backoff, wait = time.Second, time.Second
			}
			f.Log.Warn("the provider's push stream ended; reconnecting", "provider", f.Provider, "err", err, "retry", wait)
			backoff = min(2*backoff, 30*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
