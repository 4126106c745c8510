// Package inmem is a volatile storage engine for tests and ephemeral servers.
package inmem

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"sync"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// Backend keeps entries in a map guarded by a mutex.
type Backend struct {
	mu     sync.RWMutex
	data   map[string][]byte
	closed bool
}

var (
	_ physical.Backend = (*Backend)(nil)
	_ physical.Walker  = (*Backend)(nil)
)

// New returns an empty backend.
func New() *Backend { return &Backend{data: map[string][]byte{}} }

// Get implements physical.Backend.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return nil, physical.ErrClosed
	}
	v, ok := b.data[key]
	if !ok {
		return nil, physical.ErrNotFound
	}
	return bytes.Clone(v), nil
}

// Scan implements physical.Backend.
func (b *Backend) Scan(ctx context.Context, prefix, after string, limit int) ([]physical.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return nil, physical.ErrClosed
	}
	var keys []string
	for k := range b.data {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if limit > 0 && len(keys) > limit {
		keys = keys[:limit]
	}
	out := make([]physical.Entry, len(keys))
	for i, k := range keys {
		out[i] = physical.Entry{Key: k, Value: bytes.Clone(b.data[k])}
	}
	return out, nil
}

// Apply implements physical.Backend.
func (b *Backend) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	if err := physical.ValidateBatch(conds, ops); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return physical.ErrClosed
	}
	for _, c := range conds {
		cur, ok := b.data[c.Key]
		if (c.Value == nil) == ok || !bytes.Equal(cur, c.Value) {
			return &physical.ConflictError{Key: c.Key}
		}
	}
	for _, o := range ops {
		if o.Delete {
			delete(b.data, o.Key)
		} else {
			b.data[o.Key] = bytes.Clone(o.Value)
		}
	}
	return nil
}

// ForEach implements physical.Walker on a copy taken under the lock.
func (b *Backend) ForEach(ctx context.Context, prefix string, fn func(physical.Entry) error) error {
	all, err := b.Scan(ctx, prefix, "", 0)
	if err != nil {
		return err
	}
	for _, e := range all {
		if physical.IsLease(e.Key) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// Close implements physical.Backend.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

// Lead implements physical.Leader: one process owns this store, so it
// always leads, and its writes need no fence.
func (b *Backend) Lead(ctx context.Context, job string) (context.Context, error) {
	return ctx, ctx.Err()
}
