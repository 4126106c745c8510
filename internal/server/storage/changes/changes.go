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
type Feed struct {
	mu     sync.Mutex
	topics map[string]*topic
	closed bool
}

type topic struct {
	ch   chan struct{}
	refs int
}

// New returns an empty feed.
func New() *Feed { return &Feed{topics: map[string]*topic{}} }

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

// Publish wakes every watcher of the subjects.
func (f *Feed) Publish(subjects ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range subjects {
		if t := f.topics[s]; t != nil {
			close(t.ch)
			delete(f.topics, s)
		}
	}
}

// Close wakes every watcher, now and later: a stopping server answers its
// held reads instead of keeping them until their wait ends.
func (f *Feed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
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

// Watching returns the number of subjects being watched, for tests and
// metrics.
func (f *Feed) Watching() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.topics)
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
}
