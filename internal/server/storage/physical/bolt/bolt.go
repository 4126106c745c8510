// Package bolt is the embedded, single-file storage engine, built on bbolt.
package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	bbolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var bucket = []byte("coffer")

// ErrLocked is returned by Open when another process holds the store file.
var ErrLocked = errors.New("the store file is locked by another process (is a coffer server already running on this data directory?)")

// Backend stores entries in one bbolt bucket. Concurrent Apply calls are
// coalesced into group commits, so many writers share one fsync.
type Backend struct {
	db     *bbolt.DB
	hot    hotReads
	closed atomic.Bool
}

var (
	_ physical.Backend = (*Backend)(nil)
	_ physical.Walker  = (*Backend)(nil)
)

// Open opens or creates the store file at path with mode 0600.
func Open(path string) (*Backend, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      time.Second,
		FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// Group commit: writers arriving within a couple of milliseconds share a
	// transaction and its fsync, which is what makes durable writes cheap.
	db.MaxBatchDelay = 2 * time.Millisecond
	db.MaxBatchSize = 512
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise store %s: %w", path, err)
	}
	return &Backend{db: db}, nil
}

// Get implements physical.Backend.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.closed.Load() {
		return nil, physical.ErrClosed
	}
	if v, ok := b.hot.load(key); ok {
		return bytes.Clone(v), nil
	}
	gen := b.hot.begin()
	var out []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(key))
		if v == nil {
			return physical.ErrNotFound
		}
		out = bytes.Clone(v)
		return nil
	})
	if err == nil {
		b.hot.remember(gen, key, bytes.Clone(out))
	}
	return out, mapErr(err)
}

// Holds implements physical.Matcher: a hot key is compared where it is
// held, and any other is read as Get reads it.
func (b *Backend) Holds(ctx context.Context, key string, value []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if b.closed.Load() {
		return false, physical.ErrClosed
	}
	if v, ok := b.hot.load(key); ok {
		return bytes.Equal(v, value), nil
	}
	return physical.HoldsByGet(ctx, b, key, value)
}

// Scan implements physical.Backend.
func (b *Backend) Scan(ctx context.Context, prefix, after string, limit int) ([]physical.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []physical.Entry
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		start := prefix
		if after > start {
			start = after
		}
		k, v := c.Seek([]byte(start))
		for ; k != nil; k, v = c.Next() {
			ks := string(k)
			if !strings.HasPrefix(ks, prefix) {
				break
			}
			if ks <= after {
				continue
			}
			out = append(out, physical.Entry{Key: ks, Value: bytes.Clone(v)})
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, mapErr(err)
}

// Apply implements physical.Backend. bbolt's Batch may run the function more
// than once, so it only reads and writes inside the transaction.
func (b *Backend) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	if err := physical.ValidateBatch(conds, ops); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.hot.writeStarts(ops)
	defer b.hot.writeEnds()
	err := b.db.Batch(func(tx *bbolt.Tx) error {
		bk := tx.Bucket(bucket)
		for _, c := range conds {
			cur := bk.Get([]byte(c.Key))
			if (c.Value == nil) != (cur == nil) || !bytes.Equal(cur, c.Value) {
				return &physical.ConflictError{Key: c.Key}
			}
		}
		for _, o := range ops {
			var err error
			if o.Delete {
				err = bk.Delete([]byte(o.Key))
			} else {
				err = bk.Put([]byte(o.Key), o.Value)
			}
			if err != nil {
				return fmt.Errorf("write %q: %w", o.Key, err)
			}
		}
		return nil
	})
	return mapErr(err)
}

// ForEach implements physical.Walker within one read transaction.
func (b *Backend) ForEach(ctx context.Context, prefix string, fn func(physical.Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			if physical.IsLease(string(k)) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			// The transaction's slices die with it; fn owns what it gets.
			if err := fn(physical.Entry{Key: string(k), Value: bytes.Clone(v)}); err != nil {
				return err
			}
		}
		return nil
	})
	return mapErr(err)
}

// Close implements physical.Backend.
func (b *Backend) Close() error {
	b.closed.Store(true)
	b.hot.clear()
	return b.db.Close()
}

// Path returns the store file's path.
func (b *Backend) Path() string { return b.db.Path() }

func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return physical.ErrClosed
	}
	return err
}

// Lead implements physical.Leader: one process owns this store, so it
// always leads, and its writes need no fence.
func (b *Backend) Lead(ctx context.Context, job string) (context.Context, error) {
	return ctx, ctx.Err()
}
