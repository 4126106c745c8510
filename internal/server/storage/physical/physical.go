// Package physical defines the untrusted byte store at the bottom of Coffer's
// storage stack. Engines (bbolt, in-memory, later etcd) implement Backend; they
// never see plaintext because the barrier above them seals every value.
package physical

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// ErrNotFound is returned by Get when the key does not exist.
var ErrNotFound = errors.New("physical: key not found")

// ErrConflict is returned by Apply when one of its conditions does not hold.
// Callers re-read and retry; nothing was written.
var ErrConflict = errors.New("physical: condition failed")

// ErrClosed is returned by every method once the backend is closed.
var ErrClosed = errors.New("physical: backend closed")

// ErrUnavailable means the engine could not be reached, or not in time: a
// write's outcome is then unknown, and a read was not served, so that no
// stale data is ever returned. Callers answer 503 and clients retry.
var ErrUnavailable = errors.New("physical: storage unavailable")

// Matcher is a Backend that can tell whether a key still holds a value
// without copying the value out: a hot object's head is checked on every
// read, and the copy was most of that check's cost.
type Matcher interface {
	// Holds reports whether key holds exactly value (false if key holds
	// nothing).
	Holds(ctx context.Context, key string, value []byte) (bool, error)
}

// Holds reports whether key holds exactly value in b (false if key holds
// nothing), through b's Matcher if it has one.
func Holds(ctx context.Context, b Backend, key string, value []byte) (bool, error) {
	if m, ok := b.(Matcher); ok {
		return m.Holds(ctx, key, value)
	}
	return HoldsByGet(ctx, b, key, value)
}

// HoldsByGet is Holds through b.Get: for engines without a Matcher, and
// for a Matcher's keys that it cannot compare in place.
func HoldsByGet(ctx context.Context, b Backend, key string, value []byte) (bool, error) {
	v, err := b.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil && bytes.Equal(v, value), err
}

// Limited is a Backend that bounds one atomic commit; a Backend without
// the method has no bound of its own.
type Limited interface {
	// BatchLimits are the most writes (and conditions) and bytes one
	// Apply may carry.
	BatchLimits() (ops, bytes int)
}

// TooLargeError is a batch over an engine's limit for one atomic commit.
type TooLargeError struct {
	Bytes, Ops       int // the batch's size, and its writes or conditions, whichever are more
	MaxBytes, MaxOps int // the engine's limits
}

func (e *TooLargeError) Error() string {
	if e.Ops > e.MaxOps {
		return fmt.Sprintf("the change has %d writes or conditions in one atomic batch, over the storage engine's limit of %d", e.Ops, e.MaxOps)
	}
	return fmt.Sprintf("the change is %d bytes in one atomic batch, over the storage engine's limit of %d bytes", e.Bytes, e.MaxBytes)
}

// ConflictError names the key whose condition failed. It matches ErrConflict
// with errors.Is.
type ConflictError struct{ Key string }

func (e *ConflictError) Error() string { return fmt.Sprintf("physical: condition on %q failed", e.Key) }

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Entry is one stored key and its raw bytes.
type Entry struct {
	Key   string
	Value []byte
}

// Op is one write in an atomic batch: a put, or a delete when Delete is set.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Cond is a precondition of an atomic batch: the key must currently hold
// exactly Value, or be absent when Value is nil.
type Cond struct {
	Key   string
	Value []byte
}

// Backend is a sorted byte store with atomic, durable batches.
//
// Keys are non-empty UTF-8 strings and sort bytewise. Returned slices belong
// to the caller. Apply returns only after the batch is durable on stable
// storage, so an acknowledged write survives a crash or a kill.
type Backend interface {
	// Get returns the value stored at key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Scan returns, in key order, up to limit entries whose keys start with
	// prefix and sort strictly after after (an empty after starts at prefix).
	// A limit of zero or less means no limit.
	Scan(ctx context.Context, prefix, after string, limit int) ([]Entry, error)
	// Apply checks every condition and, only if all hold, performs every op as
	// one atomic, durable commit. A failed condition yields a *ConflictError.
	Apply(ctx context.Context, conds []Cond, ops []Op) error
	// Close releases the backend. Later calls return ErrClosed.
	Close() error
}

// Change is one committed batch, as a Shared engine reports it.
type Change struct {
	// Keys are the keys the batch wrote or deleted.
	Keys []string
	// Reset means changes may have been missed (a watch restarted after a
	// compaction, say): whoever keeps state from the store reloads it all.
	Reset bool
}

// Shared is implemented by engines that several server processes use at
// once (etcd). Each process keeps a local view of the store that the
// engine's watch keeps current; Sync makes reads from it linearizable.
type Shared interface {
	Backend
	// Subscribe adds fn, called for every batch any process commits, in
	// commit order, from one goroutine. fn may read the store with a
	// context from Synced, and must not call Sync.
	Subscribe(fn func(Change))
	// Sync returns once every batch committed before Sync was called has
	// been seen by every subscriber. A request that calls it first, and
	// reads with the context it returns, sees every write acknowledged
	// before it began, on any process.
	Sync(ctx context.Context) (context.Context, error)
}

// syncedKey marks a context whose reads may be served from the local view.
type syncedKey struct{}

// Synced returns ctx marked as synced: a Shared engine serves its reads from
// the local view without a round trip to the cluster. Only Sync and a
// subscriber may use it.
func Synced(ctx context.Context) context.Context { return context.WithValue(ctx, syncedKey{}, true) }

// IsSynced reports whether ctx came from Synced.
func IsSynced(ctx context.Context) bool { v, _ := ctx.Value(syncedKey{}).(bool); return v }

// Leader elects one process, among those sharing an engine, to run a
// singleton job (purge, renewal, rotation, delivery).
type Leader interface {
	// Lead blocks until this process leads job, or ctx ends. The context it
	// returns ends when the leadership is lost, and fences the writes made
	// with it: once another process leads, they fail with ErrConflict.
	Lead(ctx context.Context, job string) (context.Context, error)
}

// MaxKeyBytes bounds a key, for every engine alike: bbolt refuses keys
// over 32 KiB, and the longest key Coffer makes (an object version of a
// 127-character name) is a few hundred bytes.
const MaxKeyBytes = 4096

// ErrInvalidKey is returned, wrapped, for a key no engine may store: empty,
// or longer than MaxKeyBytes. The error never quotes a long key in full.
var ErrInvalidKey = errors.New("physical: invalid key")

// ValidateKey reports whether key is acceptable to every engine.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("%w: %.64q... is %d bytes, over the %d-byte limit", ErrInvalidKey, key, len(key), MaxKeyBytes)
	}
	return nil
}

// ValidateBatch checks keys in a batch before an engine commits it.
func ValidateBatch(conds []Cond, ops []Op) error {
	for _, c := range conds {
		if err := ValidateKey(c.Key); err != nil {
			return err
		}
	}
	for _, o := range ops {
		if err := ValidateKey(o.Key); err != nil {
			return err
		}
	}
	return nil
}
