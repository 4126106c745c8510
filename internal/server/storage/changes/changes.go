// Package changes tells waiters when a vault object changes. It is the
// vault's side of push rotation: a node's conditional read may ask to be
// held until the object it holds changes (Prefer: wait), instead of being
// answered 304 at once and asking again every rotation interval.
package changes

import (
	"strings"
	"sync"
)

// Feed wakes the watchers of an object when a write to it commits. It
// carries no data: a woken watcher reads the object again, with the same
// authorization as any read.
//
// A watcher is either a held read, which waits on one subject's channel
// (Watch), or a Follower, which follows many subjects without a goroutine
// per subject (Follow): the vault watch's streams, one per node and
// identity.
type Feed struct {
	mu        sync.Mutex
	topics    map[string]*topic
	followed  map[string]map[Follower]struct{} // subject -> its followers
	followers map[Follower]int                 // -> how many subjects it follows
	closed    bool
	done      chan struct{} // closed by Close
}

// Follower is told of the changes to the subjects it follows. Its methods
// are called with the feed's lock held, from the store's dispatch
// goroutine or a writer's: they must not block, nor call the feed.
type Follower interface {
	// Changed reports a committed write to subject.
	Changed(subject string)
	// Recheck reports that anything may have changed: with all, any
	// subject (a gap in the store's watch); without, who may read what
	// (a vault's access policies or the role assignments changed).
	Recheck(all bool)
}

type topic struct {
	ch   chan struct{}
	refs int
}

// New returns an empty feed.
func New() *Feed {
	return &Feed{topics: map[string]*topic{}, followed: map[string]map[Follower]struct{}{},
		followers: map[Follower]int{}, done: make(chan struct{})}
}

// Subject names one object of a vault: kind is secrets, keys or
// certificates. Names are case-insensitive, as in Key Vault.
func Subject(vault, kind, name string) string {
	return strings.ToLower(vault) + "/" + kind + "/" + strings.ToLower(name)
}

// Watch returns a channel that is closed by the next Publish of subject
// (or by Close), and a release to call when the caller stops waiting. A
// caller must watch before it reads, so a change between its read and its
// wait still wakes it.
func (f *Feed) Watch(subject string) (<-chan struct{}, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		ch := make(chan struct{})
		close(ch)
		return ch, func() {}
	}
	t := f.topics[subject]
	if t == nil {
		t = &topic{ch: make(chan struct{})}
		f.topics[subject] = t
	}
	t.refs++
	var once sync.Once
	return t.ch, func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if t.refs--; t.refs == 0 && f.topics[subject] == t {
				delete(f.topics, subject)
			}
		})
	}
}

// Follow tells fl of every later change to the subjects, until the
// function it returns is called. As with Watch, a follower must follow
// before it reads.
func (f *Feed) Follow(fl Follower, subjects ...string) (stop func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range subjects {
		m := f.followed[s]
		if m == nil {
			m = map[Follower]struct{}{}
			f.followed[s] = m
		}
		if _, dup := m[fl]; !dup {
			m[fl] = struct{}{}
			f.followers[fl]++
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, s := range subjects {
				m := f.followed[s]
				if _, ok := m[fl]; !ok {
					continue
				}
				delete(m, fl)
				if len(m) == 0 {
					delete(f.followed, s)
				}
				if f.followers[fl]--; f.followers[fl] <= 0 {
					delete(f.followers, fl)
				}
			}
		})
	}
}

// Done is closed by Close: followers end their streams.
func (f *Feed) Done() <-chan struct{} { return f.done }

// Publish wakes every watcher of the subjects.
func (f *Feed) Publish(subjects ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range subjects {
		if t := f.topics[s]; t != nil {
			close(t.ch)
			delete(f.topics, s)
		}
		for fl := range f.followed[s] {
			fl.Changed(s)
		}
	}
}

// AccessChanged tells every follower that who may read what may have
// changed: a vault's access policies, or the role assignments. Held reads
// need no telling: each pass authorizes again.
func (f *Feed) AccessChanged() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fl := range f.followers {
		fl.Recheck(false)
	}
}

// Close wakes every watcher, now and later: a stopping server answers its
// held reads instead of keeping them until their wait ends.
func (f *Feed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	close(f.done)
	for s, t := range f.topics {
		close(t.ch)
		delete(f.topics, s)
	}
}

// Closed reports whether Close was called.
func (f *Feed) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// Watching returns the number of subjects being watched, by held reads
// or followers, for tests and metrics.
func (f *Feed) Watching() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.topics)
	for s := range f.followed {
		if _, held := f.topics[s]; !held {
			n++
		}
	}
	return n
}

// Following returns the number of followers and of the subjects they
// follow, counted once per follower, for tests and metrics.
func (f *Feed) Following() (followers, subscriptions int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.followers {
		subscriptions += n
	}
	return len(f.followers), subscriptions
}

// PublishAll wakes every watcher: after a gap in what the store reported,
// any object may have changed.
func (f *Feed) PublishAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for subject, t := range f.topics {
		close(t.ch)
		delete(f.topics, subject)
	}
	for fl := range f.followers {
		fl.Recheck(true)
	}
}
