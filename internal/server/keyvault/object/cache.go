package object

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// maxCacheBytes bounds the sealed bytes the read cache accounts for.
const maxCacheBytes = 64 << 20

// headEntry is the read cache's view of one object: the sealed head blob
// last read, its decoding, and the versions decoded under that head.
//
// Every write to an object rewrites its head with a fresh nonce, so while a
// read finds the same head blob in the store, nothing in the object changed,
// whoever writes (this process or another replica). A read therefore costs
// one store lookup and no decryption or decoding when the object is hot.
//
// The cache holds decrypted values in memory. That exposes nothing new: the
// same process holds the data keys that decrypt everything.
type headEntry[T any] struct {
	raw      []byte
	head     Head
	versions sync.Map // version id -> Version[T]
	count    atomic.Int32
}

// Memo holds one thing the API layer derives from a cached version, such
// as its encoded response, so that a hot read need not derive it again.
// A memo lives exactly as long as its version's place in the read cache:
// any write to the object rewrites its head, which replaces the cache's
// entry and every memo under it, so what a memo holds is never older than
// the version and head it came with. It can hold a secret's value, as the
// cache itself does.
type Memo struct {
	v       atomic.Pointer[memoValue]
	account func(int)
}

type memoValue struct{ v any }

// Load returns what was last stored, or nil; a nil memo holds nothing.
func (m *Memo) Load() any {
	if m == nil {
		return nil
	}
	if mv := m.v.Load(); mv != nil {
		return mv.v
	}
	return nil
}

// Store keeps v, about size bytes, which count toward the read cache's
// bound; storing in a nil memo does nothing.
func (m *Memo) Store(v any, size int) {
	if m == nil {
		return
	}
	m.v.Store(&memoValue{v})
	m.account(size)
}

// subscriber is a store that tells of its committed batches, as the
// barrier does.
type subscriber interface {
	Subscribe(fn func(physical.Change))
}

// evict drops the cache's entries for the keys a committed batch wrote,
// whichever process wrote them (on a shared store, the barrier tells of
// every replica's batches). Reads are correct without it, since each
// checks its entry against the store; it is there so that what a delete
// or a purge took away, decrypted values and the responses kept in
// memos included, does not stay in memory until the same name is read
// again or the cache is cleared.
func (c *Collection[T]) evict(ch physical.Change) {
	if ch.Reset {
		c.cache.Clear()
		return
	}
	for _, k := range ch.Keys {
		c.cache.Delete(k) // keys other than heads are not in it: a miss
	}
}

func (c *Collection[T]) account(n int) {
	if c.cacheBytes.Add(int64(n)) > maxCacheBytes {
		// Rare: start over rather than track recency on every read.
		c.cache.Clear()
		c.cacheBytes.Store(int64(n))
	}
}

func (c *Collection[T]) cachedHead(ctx context.Context, key string) (*headEntry[T], error) {
	if v, ok := c.cache.Load(key); ok {
		e := v.(*headEntry[T])
		same, err := c.st.Holds(ctx, key, e.raw)
		if err != nil {
			return nil, err
		}
		if same {
			return e, nil
		}
	}
	raw, err := c.st.GetRaw(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	e := &headEntry[T]{raw: raw}
	if err := c.decode(key, raw, &e.head); err != nil {
		return nil, err
	}
	c.account(len(raw))
	c.cache.Store(key, e)
	return e, nil
}

// cachedVersion returns version id (lower case) of the object name, whose
// head is e. Its store key is built only on a miss.
func (c *Collection[T]) cachedVersion(ctx context.Context, e *headEntry[T], vault, name, id string) (Version[T], error) {
	if v, ok := e.versions.Load(id); ok {
		return v.(Version[T]), nil
	}
	key := c.versionKey(vault, name, id)
	var v Version[T]
	raw, err := c.st.GetRaw(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return Version[T]{}, ErrNotFound
	}
	if err != nil {
		return Version[T]{}, err
	}
	if err := c.decode(key, raw, &v); err != nil {
		return Version[T]{}, err
	}
	if e.count.Add(1) <= 64 {
		v.Memo = &Memo{account: c.account}
		e.versions.Store(id, v)
	}
	c.account(len(raw))
	return v, nil
}

func (c *Collection[T]) decode(key string, raw []byte, v any) error {
	plain, err := c.st.Unseal(key, raw)
	if err != nil {
		return err
	}
	defer clear(plain)
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}
