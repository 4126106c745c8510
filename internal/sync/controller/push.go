package controller

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/cofferhq/coffer/internal/node/push"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// Push refresh, as Coffer's CSI driver does it (docs/push-protocol.md):
// one Watch stream per provider, opened when the controller first
// connects to it; a provider that pushes a SecretSync's target path gets
// that SecretSync refreshed at once. Upstream providers answer
// Unimplemented, and their SecretSyncs are refreshed on the poll interval.

// pushReady bounds how long the first call to a provider waits for its
// Push stream, so that the first sync is already watched.
const pushReady = 2 * time.Second

// pusher listens to providers' pushes and queues the SecretSyncs they
// name for the reconciler.
type pusher struct {
	r      *Reconciler
	events chan event.GenericEvent // to the controller's channel source
	ctx    context.Context         // ends with the daemon
	wg     sync.WaitGroup
}

// subscribe is providerclient.Clients.Dialed: it keeps the new
// connection's Push stream open, and returns a channel that closes once
// the provider listens or will not.
func (p *pusher) subscribe(name string, c *grpc.ClientConn) <-chan struct{} {
	ready := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		push.Follow(p.ctx, c, push.Follower{
			Provider: name, Log: p.r.opts.Log, Fallback: "its SecretSyncs are refreshed every poll interval",
			Listening: func(reconnected bool) {
				if reconnected {
					// Pushes were lost while the stream was down, and a
					// restarted provider forgot every SecretSync: refresh
					// them all, which registers them again.
					p.r.requeueProvider(name)
				}
			},
			Changed: func(target string) { p.pushed(name, target) },
			Ready:   func() { close(ready) },
		})
	}()
	return ready
}

// pushed queues the SecretSync a provider reported changed. A provider may
// push only the SecretSyncs it serves: others are ignored, as the driver
// ignores pushes of volumes another provider mounts.
func (p *pusher) pushed(provider, target string) {
	ns, name, ok := parseTarget(target)
	if !ok {
		p.r.opts.Log.Debug("a provider pushed a target that is not a SecretSync's; ignored", "provider", provider, "target", target)
		return
	}
	key := types.NamespacedName{Namespace: ns, Name: name}
	if !p.r.claimPush(key, provider) {
		p.r.opts.Log.Debug("a provider pushed a SecretSync it does not serve; ignored", "provider", provider, "secretsync", key)
		return
	}
	p.r.metrics.pushes.Inc()
	p.queue(key)
}

// queue hands key to the reconciler. A full queue drops it: the
// SecretSync still refreshes on its interval.
func (p *pusher) queue(key types.NamespacedName) {
	ss := &syncv1.SecretSync{}
	ss.Namespace, ss.Name = key.Namespace, key.Name
	select {
	case p.events <- event.GenericEvent{Object: ss}:
	default:
		p.r.opts.Log.Warn("push queue full; the SecretSync waits for its poll interval", "secretsync", key)
	}
}

// forget tells every provider, in the background, that a SecretSync is
// gone, so none keeps watching its objects.
func (p *pusher) forget(key types.NamespacedName) {
	target := targetPath(key.Namespace, key.Name)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.r.providers.Each(func(name string, c *grpc.ClientConn) {
			ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
			defer cancel()
			if err := push.Forget(ctx, c, target); err != nil && status.Code(err) != codes.Unimplemented && p.ctx.Err() == nil {
				p.r.opts.Log.Debug("the provider did not take a forgotten SecretSync", "provider", name, "err", err)
			}
		})
	}()
}
