package csidriver

import (
	"slices"
	"sync"
	"time"
)

// volume is the driver's state for one target path, and the lock that
// serializes the calls for it. Every read and write of its fields is in
// this file, each under the lock that guards it.
//
// # Published
//
// A volume is published from the first NodePublishVolume for its target
// path that succeeds until the NodeUnpublishVolume that unmounts it. The
// successful call is either a first mount that the provider filled, or a
// republish of a path the driver finds mounted already (after a driver
// restart, the first it sees). req is set for exactly that span, so
// "req != nil" is the one test of published, for the rotation loop, for
// pushes and for the bookkeeping alike. A failed call changes nothing: a
// failed first mount leaves the volume unpublished, and a failed refresh
// keeps the old files and the old state.
//
// # Locks
//
//   - mu serializes the calls for the target path: kubelet's publishes and
//     unpublishes and the driver's own rotations. It is held across
//     provider calls, so nothing that must not wait takes it (the push
//     listeners, the recorder and the rotation loop's scan do not).
//   - Driver.mu guards the map Driver.volumes and every field below mu. It
//     is only held for a few statements, never across a call out.
//   - req, versions, provider and lastSync change only while mu is held
//     too, so the holder of mu sees them stable between its reads (it still
//     reads them under Driver.mu). lastCheck and pending also change without
//     mu: the push listeners make volumes due and queue them.
//
// The lock order is volume.mu, then recorder.mu, then Driver.mu: no one
// waits for a volume's mu while holding Driver.mu (volumeLock lets go of
// Driver.mu first), nor for recorder.mu while holding Driver.mu.
//
// # Lifetime
//
// A volume stays in Driver.volumes while it is published, queued for a
// push, or held or awaited by a call, and is dropped once none of these
// holds. So every call for a target path serializes on the same mu, and a
// volume the driver no longer knows of costs nothing.
type volume struct {
	mu sync.Mutex

	// refs counts the calls holding or waiting for mu.
	refs int
	// pending is set while the volume is in Driver.pushes, so a second
	// push of it merges into the first.
	pending bool

	// req is the kubelet's newest request for the volume, nil when the
	// volume is not published. Rotations between the kubelet's republishes
	// use it, for its tokens; it holds the request's secrets in memory, as
	// the call did, until the volume is unpublished. With rotation off it
	// holds only the names (see Driver.kept).
	req *publication
	// versions are the object versions mounted, as the provider last
	// reported them: replaced, never changed in place, so a copy of the
	// reference may be read after letting go of the lock. Nil until the
	// driver has filled the volume (after a driver restart, until its
	// first refresh).
	versions map[string]string
	// provider is the provider that last filled the volume; it alone may
	// push it. Empty until the driver has filled the volume.
	provider string
	// lastCheck is when the driver last asked the provider for the
	// volume's objects; zero makes the volume due.
	lastCheck time.Time
	// lastSync is when the volume's Secrets were last synced.
	lastSync time.Time
}

// volumeLock takes the lock of target's volume, adding the volume if the
// driver has none for it, and returns the volume with the function that
// lets it go. kubelet may republish while a previous call still runs.
func (d *Driver) volumeLock(target string) (*volume, func()) {
	d.mu.Lock()
	v := d.volumeLocked(target)
	v.refs++
	d.mu.Unlock()
	v.mu.Lock()
	return v, func() {
		v.mu.Unlock()
		d.mu.Lock()
		v.refs--
		d.dropIfIdleLocked(target, v)
		d.mu.Unlock()
	}
}

// volumeLocked returns target's volume, adding it if need be; d.mu is
// held.
func (d *Driver) volumeLocked(target string) *volume {
	v, ok := d.volumes[target]
	if !ok {
		v = &volume{}
		d.volumes[target] = v
	}
	return v
}

// dropIfIdleLocked removes v, target's volume, once nothing keeps it (see
// volume); d.mu is held.
func (d *Driver) dropIfIdleLocked(target string, v *volume) {
	if v.refs == 0 && !v.pending && v.req == nil {
		delete(d.volumes, target)
	}
}

// published reports whether target's volume is published.
func (d *Driver) published(target string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.volumes[target]
	return v != nil && v.req != nil
}

// publishedTargets returns the target paths of the published volumes, in
// order.
func (d *Driver) publishedTargets() []string {
	d.mu.Lock()
	targets := make([]string, 0, len(d.volumes))
	for target, v := range d.volumes {
		if v.req != nil {
			targets = append(targets, target)
		}
	}
	d.mu.Unlock()
	slices.Sort(targets)
	return targets
}

// request returns the kubelet's newest request for v, nil if v is not
// published.
func (d *Driver) request(v *volume) *publication {
	d.mu.Lock()
	defer d.mu.Unlock()
	return v.req
}

// remember publishes v with the kubelet's request p, or replaces the
// request of a published v with p: the newest request carries the
// freshest tokens. The caller holds v.mu.
func (d *Driver) remember(v *volume, p *publication) {
	p = d.kept(p)
	d.mu.Lock()
	v.req = p
	d.mu.Unlock()
}

// kept is what a published volume keeps of its request p: all of it while
// rotation may call the provider between the kubelet's republishes, else
// no more than the names.
func (d *Driver) kept(p *publication) *publication {
	if d.cfg.RotationEnabled {
		return p
	}
	return p.withoutCall()
}

// mountedVersions returns v's object versions, and whether the driver
// knows them (it does not after a restart, until its first refresh). The
// caller holds v.mu.
func (d *Driver) mountedVersions(v *volume) (map[string]string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return v.versions, v.versions != nil
}

// due reports whether v's rotation interval has passed since the driver
// last asked its provider, and claims the slot if so. It tracks the last
// check, not the files' mtime: an unchanged object writes nothing, so the
// mtime says nothing about when it was checked.
func (d *Driver) due(v *volume) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.cfg.Now()
	if !v.lastCheck.IsZero() && now.Sub(v.lastCheck) < d.cfg.RotationInterval {
		return false
	}
	v.lastCheck = now
	return true
}

// checked records that the driver is asking v's provider now, whatever
// the interval says (a push).
func (d *Driver) checked(v *volume) {
	d.mu.Lock()
	v.lastCheck = d.cfg.Now()
	d.mu.Unlock()
}

// filledFirst publishes v, which the provider has just filled for the
// first time, with request p. It is one step, so that the bookkeeping the
// caller enqueues next finds the volume published. The caller holds v.mu.
func (d *Driver) filledFirst(v *volume, p *publication, provider string, versions map[string]string) {
	now := d.cfg.Now()
	p = d.kept(p)
	d.mu.Lock()
	v.req = p
	v.versions = versions
	v.provider = provider
	v.lastCheck = now
	v.lastSync = now
	d.mu.Unlock()
}

// refilled records a refresh of v by provider, and reports whether the
// Secrets are to be synced. They are synced when force says so (the
// objects changed, or the driver did not know them) and otherwise every
// resyncInterval, so that one deleted by hand comes back, rather than on
// every republish, which would cost apiserver reads for nothing. The
// caller holds v.mu.
func (d *Driver) refilled(v *volume, provider string, versions map[string]string, force bool) (sync bool) {
	now := d.cfg.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	v.versions = versions
	v.provider = provider
	sync = force || v.lastSync.IsZero() || now.Sub(v.lastSync) >= resyncInterval
	if sync {
		v.lastSync = now
	}
	return sync
}

// unpublished forgets everything about v but the calls and the push that
// still hold it; v goes from the map once they are done. The caller holds
// v.mu.
func (d *Driver) unpublished(v *volume) {
	d.mu.Lock()
	v.req, v.versions, v.provider = nil, nil, ""
	v.lastCheck, v.lastSync = time.Time{}, time.Time{}
	d.mu.Unlock()
}

// allDue makes every published volume due, and returns their providers by
// target path.
func (d *Driver) allDue() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	owners := make(map[string]string, len(d.volumes))
	for target, v := range d.volumes {
		if v.req != nil {
			v.lastCheck = time.Time{}
			owners[target] = v.provider
		}
	}
	return owners
}

// pushOutcome says what became of a provider's push.
type pushOutcome int

const (
	pushQueue   pushOutcome = iota // the caller is to put the volume in Driver.pushes
	pushMerged                     // the volume is queued already
	pushRefused                    // a published volume another provider fills
)

// claimPush marks target queued for a push by provider, unless provider
// does not fill it or it is queued already. A volume the driver does not
// publish is queued too: unless its first publish is under way and
// succeeds, the rotation loop tells the providers to forget it.
func (d *Driver) claimPush(provider, target string) pushOutcome {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.volumes[target]
	if v != nil && v.req != nil && v.provider != provider {
		return pushRefused
	}
	if v == nil {
		v = d.volumeLocked(target)
	}
	if v.pending {
		return pushMerged
	}
	v.pending = true
	return pushQueue
}

// unqueued clears target's push mark: the rotation loop took it from
// Driver.pushes, or it could not be put there.
func (d *Driver) unqueued(target string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v := d.volumes[target]; v != nil {
		v.pending = false
		d.dropIfIdleLocked(target, v)
	}
}
