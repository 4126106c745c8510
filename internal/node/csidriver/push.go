package csidriver

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cofferhq/coffer/internal/node/push"
)

// pushReady bounds how long a provider's first call waits for its Push
// stream, so that the first mount is already watched.
const pushReady = 2 * time.Second

// subscribe listens to a newly dialed provider's pushes (Coffer's
// provider reports volumes whose objects changed in the vault). The
// channel it returns closes once the provider listens, or once it is
// clear it will not; calls to the provider wait for it, briefly.
func (d *Driver) subscribe(name string, c *grpc.ClientConn) <-chan struct{} {
	ready := make(chan struct{})
	d.pushWG.Add(1)
	go func() {
		defer d.pushWG.Done()
		push.Follow(d.pushCtx, c, push.Follower{
			Provider: name, Log: d.cfg.Log, Fallback: "its volumes rotate every rotation interval",
			Listening: func(reconnected bool) {
				if reconnected {
					// While the stream was down, changes went unreported
					// and a restarted provider forgot every volume: check
					// them all on the next tick, which registers them again.
					d.recheckAll()
				}
			},
			Changed: func(target string) { d.pushed(name, target) },
			Ready:   func() { close(ready) },
		})
	}()
	return ready
}

// recheckAll makes every published volume due, or, with no tick to find
// them due, queues them as pushed.
func (d *Driver) recheckAll() {
	owners := d.allDue()
	if d.cfg.RotationTick <= 0 {
		for target, provider := range owners {
			d.pushed(provider, target)
		}
	}
}

// pushed queues a volume that provider reported changed, for the rotation
// loop. A published volume that another provider mounts is not that
// provider's to push: it is ignored. A full queue drops the push: the
// volume still rotates on its interval.
func (d *Driver) pushed(provider, target string) {
	switch d.claimPush(provider, target) {
	case pushRefused:
		d.cfg.Log.Debug("a provider pushed a volume it does not mount; ignored", "provider", provider, "target", target)
		return
	case pushMerged:
		return // already queued: one refresh serves both pushes
	}
	select {
	case d.pushes <- target:
	default:
		d.unqueued(target)
		d.cfg.Log.Warn("push rotation queue full; the volume waits for its rotation interval", "target", target)
	}
}

// rotatePushed refreshes a volume a provider reported changed, at once,
// whatever its interval; a volume not published is forgotten by the
// providers.
func (d *Driver) rotatePushed(ctx context.Context, target string) {
	d.unqueued(target)
	d.rotateOne(ctx, target, true)
}

// forget tells every provider, in the background, that a volume is gone,
// so none keeps watching its objects.
func (d *Driver) forget(target string) {
	if d.providers.Dialed == nil {
		return
	}
	d.pushWG.Add(1)
	go func() {
		defer d.pushWG.Done()
		d.providers.Each(func(name string, c *grpc.ClientConn) {
			ctx, cancel := context.WithTimeout(d.pushCtx, 5*time.Second)
			defer cancel()
			if err := push.Forget(ctx, c, target); err != nil && status.Code(err) != codes.Unimplemented && d.pushCtx.Err() == nil {
				d.cfg.Log.Debug("the provider did not take a forgotten volume", "provider", name, "err", err)
			}
		})
	}()
}
