package csidriver

import (
	"context"
	"encoding/json"
	"time"
)

// tokenMargin is how long before its expiry a kubelet-issued token is no
// longer used for a rotation between republishes: the provider, the
// authority and the node agent all need it valid a little longer.
const tokenMargin = 30 * time.Second

// rotate refreshes, every tick until ctx ends, each mounted volume whose
// rotation interval has passed since it was last checked, one volume at a
// time (so a slow vault slows rotation, never floods it). Without it, a
// volume would rotate only when the kubelet republishes it, which it does
// on its own period (a minute by default), whatever the interval says.
//
// Volumes that a provider pushes (an object of theirs changed) are
// refreshed at once, between the ticks.
func (d *Driver) rotate(ctx context.Context) {
	var tick <-chan time.Time
	if d.cfg.RotationTick > 0 {
		t := time.NewTicker(d.cfg.RotationTick)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case target := <-d.pushes:
			d.rotatePushed(ctx, target)
			continue
		case <-tick:
		}
		for _, target := range d.publishedTargets() {
			if ctx.Err() != nil {
				return
			}
			// Pushes go first, even in the middle of a long pass.
			for drained := false; !drained; {
				select {
				case pushed := <-d.pushes:
					d.rotatePushed(ctx, pushed)
				default:
					drained = true
				}
			}
			d.rotateOne(ctx, target, false)
		}
	}
}

// rotateOne refreshes one volume if it is still published, due (or
// pushed), and its tokens are good for a while yet; with tokens about to
// expire it waits for the kubelet's next republish, which brings fresh
// ones. A pushed volume that is not published is forgotten by the
// providers.
func (d *Driver) rotateOne(ctx context.Context, target string, pushed bool) {
	v, unlock := d.volumeLock(target)
	defer unlock()
	// Decided under v.mu: a push that comes while the first publish still
	// writes the files (the provider watches the volume from its Mount on)
	// waits for it, then refreshes the volume rather than forgetting it.
	p := d.request(v)
	if p == nil {
		if pushed {
			d.forget(target)
		}
		return
	}
	if pushed {
		d.cfg.Metrics.pushed()
	}
	if tokensExpire(p, d.cfg.Now().Add(tokenMargin)) {
		return
	}
	if pushed {
		d.checked(v)
	} else if !d.due(v) {
		return
	}
	d.republish(ctx, v, p, time.Now())
}

// tokensExpire reports whether a service-account token of the request
// (from its secrets or its volume context, as the kubelet passes them)
// expires before t. Tokens that cannot be read are left to the provider
// to judge.
func tokensExpire(p *publication, t time.Time) bool {
	raw := p.tokens
	if raw == "" {
		return false
	}
	var tokens map[string]struct {
		ExpirationTimestamp time.Time `json:"expirationTimestamp"`
	}
	if json.Unmarshal([]byte(raw), &tokens) != nil {
		return false
	}
	for _, tok := range tokens {
		if !tok.ExpirationTimestamp.IsZero() && tok.ExpirationTimestamp.Before(t) {
			return true
		}
	}
	return false
}
