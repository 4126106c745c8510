// Package physical defines the untrusted byte store at the bottom of Coffer's
// storage stack. Engines (bbolt, in-memory, later etcd) implement Backend; they
// never see plaintext because the barrier above them seals every value.
package physical

import (
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

// ValidateKey reports whether key is acceptable to every engine.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("physical: empty key")
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
