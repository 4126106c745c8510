// Package barrier is the encryption layer between Coffer's logical storage and
// the untrusted physical store.
//
// Every value is sealed with AES-256-GCM under a data key. Data keys live in a
// keyring that is itself sealed with the root key (envelope encryption). A
// sealed blob describes itself:
//
//	[term: uint32 big-endian][version: 1 byte][nonce: 12 bytes][ciphertext+tag]
//
// The term names the data key. The storage path is the additional data, so a
// blob copied to another path fails to open. Paths (object names) stay in
// plaintext; values never do.
package barrier

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// KeyringKey is where the keyring is stored, under the reserved prefix.
// Tools that copy sealed blobs write it last, so that a half-copied store
// has no keyring that would open it.
const KeyringKey = keyringPath

// ReservedPrefix is the barrier's own namespace: Apply refuses writes
// under it, and Scan refuses to cover it.
const ReservedPrefix = reservedPrefix

const (
	keyringPath = "core/keyring"
	// reservedPrefix holds the barrier's own records; callers cannot touch it.
	reservedPrefix = "core/"

	blobVersion    = 1
	keyringVersion = 1
	termSize       = 4
	nonceSize      = 12
	headerSize     = termSize + 1 + nonceSize
	maxCASRetries  = 16
)

// ErrNotFound is returned when a path holds no value.
var ErrNotFound = errors.New("barrier: not found")

// ErrConflict is returned by Apply when a condition does not hold.
var ErrConflict = errors.New("barrier: condition failed")

// ErrReservedPath is returned for writes to the barrier's own namespace.
var ErrReservedPath = errors.New("barrier: path is reserved")

// ErrCorrupt means a blob failed to decrypt: it was altered, moved to another
// path, or sealed with a key this keyring does not hold.
var ErrCorrupt = errors.New("barrier: sealed value failed authentication")

// RootKeyMismatchError means the given root key did not seal this store.
type RootKeyMismatchError struct {
	Given, Sealed string // root key IDs, never key material
}

func (e *RootKeyMismatchError) Error() string {
	return fmt.Sprintf("root key %s does not unlock this store, which is sealed with root key %s: pass the matching --root-key-file or %s", e.Given, e.Sealed, rootkey.EnvVar)
}

// Rev is an opaque revision of a stored value, used in conditions.
type Rev []byte

// Record is a decrypted value, with the revision it was read at.
type Record struct {
	Key   string
	Value []byte
	Rev   Rev
}

// Op is a write: put Value at Key, or delete Key.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Cond requires Key to be at revision Rev, or absent when Rev is nil.
type Cond struct {
	Key string
	Rev Rev
}

type dataKey struct {
	Term    uint32 `json:"term"`
	Key     []byte `json:"key"`
	Created int64  `json:"created"`
}

type keyring struct {
	Active uint32    `json:"active"`
	Keys   []dataKey `json:"keys"`
}

// Barrier seals values on their way to a physical.Backend.
type Barrier struct {
	phys physical.Backend

	mu      sync.RWMutex
	root    rootkey.Key
	ring    keyring
	aeads   map[uint32]cipher.AEAD
	rawRing []byte // the keyring blob as stored, for compare-and-swap
	// followErr is why the last keyring another replica wrote could not
	// be installed.
	followErr error
	// reread gives the root key again from its source (a file a
	// Kubernetes Secret updates), for a keyring another replica wrapped
	// with a new root key.
	reread func() []rootkey.Key

	subsMu sync.Mutex
	subs   []func(physical.Change) // of a store only this process writes
}

// Shared reports whether other processes write the store too (the etcd
// engine): then whoever keeps state from it must follow Subscribe, and
// requests must Sync first.
func (b *Barrier) Shared() bool {
	_, ok := b.phys.(physical.Shared)
	return ok
}

// Subscribe adds fn, called with the keys of every committed batch: on a
// shared store, every process's batches in commit order, from one
// goroutine; otherwise this process's own, after Apply made them durable,
// from the goroutine that applied them (so fn must not take a lock its
// writer may hold). fn must not block.
func (b *Barrier) Subscribe(fn func(physical.Change)) {
	if sh, ok := b.phys.(physical.Shared); ok {
		sh.Subscribe(fn)
		return
	}
	b.subsMu.Lock()
	b.subs = append(b.subs, fn)
	b.subsMu.Unlock()
}

// Sync returns a context whose reads see every write acknowledged before
// Sync was called, on any process; see physical.Shared. On a store only
// this process writes it returns ctx at once.
func (b *Barrier) Sync(ctx context.Context) (context.Context, error) {
	if sh, ok := b.phys.(physical.Shared); ok {
		return sh.Sync(ctx)
	}
	return ctx, nil
}

// Leader is the store's leader election, for singleton jobs.
func (b *Barrier) Leader() physical.Leader {
	l, _ := b.phys.(physical.Leader)
	return l
}

// StoreRootKeyID returns the ID of the root key that sealed the store behind
// phys, or "" if the store has no keyring yet.
func StoreRootKeyID(ctx context.Context, phys physical.Backend) (string, error) {
	raw, err := phys.Get(ctx, keyringPath)
	if errors.Is(err, physical.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	id, _, err := splitKeyring(raw)
	return id, err
}

// BatchLimits are the engine's limits for one Apply, in plaintext: a
// sealed value is larger than the value, so the bytes are two thirds of
// the engine's. ok is false if the engine has none (bbolt, in-memory).
func (b *Barrier) BatchLimits() (ops, bytes int, ok bool) {
	l, ok := b.phys.(physical.Limited)
	if !ok {
		return 0, 0, false
	}
	ops, bytes = l.BatchLimits()
	return ops, bytes * 2 / 3, true
}

// Open unseals the store's keyring with root, creating the keyring (one fresh
// data key) if the store is new.
func Open(ctx context.Context, phys physical.Backend, root rootkey.Key) (*Barrier, error) {
	if root.IsZero() {
		return nil, errors.New("barrier: zero root key")
	}
	b := &Barrier{phys: phys, root: root}
	raw, err := phys.Get(ctx, keyringPath)
	switch {
	case errors.Is(err, physical.ErrNotFound):
		ring := keyring{Active: 1, Keys: []dataKey{newDataKey(1)}}
		blob, err := wrapKeyring(root, ring)
		if err != nil {
			return nil, err
		}
		if err := phys.Apply(ctx, []physical.Cond{{Key: keyringPath}}, []physical.Op{{Key: keyringPath, Value: blob}}); err != nil {
			if errors.Is(err, physical.ErrConflict) {
				return Open(ctx, phys, root) // another replica initialised it first
			}
			return nil, fmt.Errorf("barrier: store new keyring: %w", err)
		}
		if err := b.install(ring, blob); err != nil {
			return nil, err
		}
		b.follow() // the replica that made the keyring follows it too
		return b, nil
	case err != nil:
		return nil, fmt.Errorf("barrier: read keyring: %w", err)
	}
	ring, err := unwrapKeyring(root, raw)
	if err != nil {
		return nil, err
	}
	if err := b.install(ring, raw); err != nil {
		return nil, err
	}
	b.follow()
	return b, nil
}

// follow keeps the keyring current on a shared store: another replica that
// rotates a data key writes the keyring before it seals anything with the
// new key, and subscribers hear of batches in commit order, so the new key
// is here before any blob sealed with it.
func (b *Barrier) follow() {
	sh, ok := b.phys.(physical.Shared)
	if !ok {
		return
	}
	sh.Subscribe(func(c physical.Change) {
		if !c.Reset && !slices.Contains(c.Keys, keyringPath) {
			return
		}
		err := b.reloadKeyring(physical.Synced(context.Background()))
		b.mu.Lock()
		b.followErr = err
		b.mu.Unlock()
	})
}

// Healthy reports why this process cannot follow the shared keyring, if
// it cannot: another replica rotated the root key to one this process was
// not given, say. Such a replica must not serve.
func (b *Barrier) Healthy() error {
	b.mu.RLock()
	failed := b.followErr != nil
	b.mu.RUnlock()
	if failed {
		// The key source may have the new root key by now (a Secret
		// updated after the rotation): try again.
		err := b.reloadKeyring(physical.Synced(context.Background()))
		b.mu.Lock()
		b.followErr = err
		b.mu.Unlock()
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.followErr != nil {
		return fmt.Errorf("barrier: the keyring another replica wrote cannot be opened here (give every replica the same root key): %w", b.followErr)
	}
	return nil
}

// reloadKeyring reads the keyring again and installs it.
func (b *Barrier) reloadKeyring(ctx context.Context) error {
	raw, err := b.phys.Get(ctx, keyringPath)
	if err != nil {
		return fmt.Errorf("barrier: read keyring: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if bytes.Equal(raw, b.rawRing) {
		return nil
	}
	ring, err := unwrapKeyring(b.root, raw)
	if err != nil && b.reread != nil {
		// Another replica rotated the root key. If this replica's key
		// source already has the new key (the Secret was updated
		// first), it follows.
		for _, k := range b.reread() {
			if k.ID() == b.root.ID() {
				continue
			}
			if r2, uerr := unwrapKeyring(k, raw); uerr == nil {
				b.root, ring, err = k, r2, nil
				break
			}
		}
	}
	if err != nil {
		return err
	}
	return b.install(ring, raw)
}

// RereadRootKey sets where a replica finds a new root key that another
// replica rotated to: the keys its key source holds now.
func (b *Barrier) RereadRootKey(fn func() []rootkey.Key) {
	b.mu.Lock()
	b.reread = fn
	b.mu.Unlock()
}

func (b *Barrier) install(ring keyring, raw []byte) error {
	aeads := make(map[uint32]cipher.AEAD, len(ring.Keys))
	for _, k := range ring.Keys {
		a, err := newAEAD(k.Key)
		if err != nil {
			return err
		}
		aeads[k.Term] = a
	}
	if _, ok := aeads[ring.Active]; !ok {
		return fmt.Errorf("barrier: keyring has no active term %d", ring.Active)
	}
	b.ring, b.aeads, b.rawRing = ring, aeads, raw
	return nil
}

// RootKeyID returns the ID of the root key currently wrapping the keyring.
func (b *Barrier) RootKeyID() string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.root.ID()
}

// ActiveTerm returns the term of the data key that seals new writes.
func (b *Barrier) ActiveTerm() uint32 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.ring.Active
}

// Get returns the decrypted value at key.
func (b *Barrier) Get(ctx context.Context, key string) (Record, error) {
	raw, err := b.phys.Get(ctx, key)
	if errors.Is(err, physical.ErrNotFound) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, err
	}
	plain, err := b.Unseal(key, raw)
	if err != nil {
		return Record{}, err
	}
	return Record{Key: key, Value: plain, Rev: raw}, nil
}

// GetRaw returns the sealed blob at key, for callers that keep decoded
// values and only need to know whether the stored blob changed. Every write
// seals with a fresh nonce, so equal blobs mean an unchanged value.
func (b *Barrier) GetRaw(ctx context.Context, key string) ([]byte, error) {
	raw, err := b.phys.Get(ctx, key)
	if errors.Is(err, physical.ErrNotFound) {
		return nil, ErrNotFound
	}
	return raw, err
}

// Holds reports whether key still holds raw, a sealed blob GetRaw
// returned (false if key holds nothing), without copying the stored blob
// where the engine can compare it in place.
func (b *Barrier) Holds(ctx context.Context, key string, raw []byte) (bool, error) {
	return physical.Holds(ctx, b.phys, key, raw)
}

// Scan returns decrypted entries under prefix after key after, in key order.
func (b *Barrier) Scan(ctx context.Context, prefix, after string, limit int) ([]Record, error) {
	if strings.HasPrefix(reservedPrefix, prefix) || strings.HasPrefix(prefix, reservedPrefix) {
		return nil, ErrReservedPath // the scan would cover the barrier's own records
	}
	es, err := b.phys.Scan(ctx, prefix, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Record, len(es))
	for i, e := range es {
		plain, err := b.Unseal(e.Key, e.Value)
		if err != nil {
			return nil, err
		}
		out[i] = Record{Key: e.Key, Value: plain, Rev: e.Value}
	}
	return out, nil
}

// Apply seals every put and commits the batch atomically and durably, if all
// conditions hold; otherwise it returns an error matching ErrConflict.
func (b *Barrier) Apply(ctx context.Context, conds []Cond, ops []Op) error {
	pconds := make([]physical.Cond, len(conds))
	for i, c := range conds {
		if strings.HasPrefix(c.Key, reservedPrefix) {
			return ErrReservedPath
		}
		pconds[i] = physical.Cond{Key: c.Key, Value: c.Rev}
	}
	pops := make([]physical.Op, len(ops))
	for i, o := range ops {
		if strings.HasPrefix(o.Key, reservedPrefix) {
			return ErrReservedPath
		}
		pops[i] = physical.Op{Key: o.Key, Delete: o.Delete}
		if !o.Delete {
			pops[i].Value = b.Seal(o.Key, o.Value)
		}
	}
	err := b.phys.Apply(ctx, pconds, pops)
	if errors.Is(err, physical.ErrConflict) {
		return fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err == nil {
		b.subsMu.Lock()
		subs := b.subs
		b.subsMu.Unlock()
		if len(subs) > 0 {
			keys := make([]string, len(ops))
			for i, o := range ops {
				keys[i] = o.Key
			}
			for _, fn := range subs {
				fn(physical.Change{Keys: keys})
			}
		}
	}
	return err
}

// Seal encrypts plain under the active data key, bound to aad.
func (b *Barrier) Seal(aad string, plain []byte) []byte {
	b.mu.RLock()
	term := b.ring.Active
	a := b.aeads[term]
	b.mu.RUnlock()
	out := make([]byte, headerSize, headerSize+len(plain)+a.Overhead())
	binary.BigEndian.PutUint32(out, term)
	out[termSize] = blobVersion
	nonce := out[termSize+1 : headerSize]
	if _, err := rand.Read(nonce); err != nil {
		panic("barrier: crypto/rand failed: " + err.Error())
	}
	return a.Seal(out, nonce, plain, []byte(aad))
}

// Unseal decrypts a blob made by Seal with the same aad.
func (b *Barrier) Unseal(aad string, blob []byte) ([]byte, error) {
	if len(blob) < headerSize || blob[termSize] != blobVersion {
		return nil, fmt.Errorf("%w: %q has an unknown format", ErrCorrupt, aad)
	}
	term := binary.BigEndian.Uint32(blob)
	b.mu.RLock()
	a, ok := b.aeads[term]
	b.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q is sealed with unknown key term %d", ErrCorrupt, aad, term)
	}
	plain, err := a.Open(nil, blob[termSize+1:headerSize], blob[headerSize:], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("%w: %q", ErrCorrupt, aad)
	}
	return plain, nil
}

// RotateRootKey re-wraps the keyring with next. Data keys, and so every
// stored value and backup, are unchanged; the old root key stops working as
// soon as this returns.
func (b *Barrier) RotateRootKey(ctx context.Context, next rootkey.Key) error {
	if next.IsZero() {
		return errors.New("barrier: zero root key")
	}
	return b.updateKeyring(ctx, func(ring keyring) (rootkey.Key, keyring) { return next, ring })
}

// RotateDataKey adds a fresh data key and makes it the active one. Existing
// values keep their term and stay readable.
func (b *Barrier) RotateDataKey(ctx context.Context) (uint32, error) {
	var term uint32
	err := b.updateKeyring(ctx, func(ring keyring) (rootkey.Key, keyring) {
		term = 0
		for _, k := range ring.Keys {
			term = max(term, k.Term)
		}
		term++
		ring.Keys = append(append([]dataKey(nil), ring.Keys...), newDataKey(term))
		ring.Active = term
		return b.root, ring
	})
	return term, err
}

func (b *Barrier) updateKeyring(ctx context.Context, change func(keyring) (rootkey.Key, keyring)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range maxCASRetries {
		root, ring := change(b.ring)
		blob, err := wrapKeyring(root, ring)
		if err != nil {
			return err
		}
		err = b.phys.Apply(ctx, []physical.Cond{{Key: keyringPath, Value: b.rawRing}}, []physical.Op{{Key: keyringPath, Value: blob}})
		if errors.Is(err, physical.ErrConflict) {
			// Another replica changed the keyring; reload and apply again.
			raw, gerr := b.phys.Get(ctx, keyringPath)
			if gerr != nil {
				return fmt.Errorf("barrier: reload keyring: %w", gerr)
			}
			cur, uerr := unwrapKeyring(b.root, raw)
			if uerr != nil {
				return uerr
			}
			if err := b.install(cur, raw); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("barrier: store keyring: %w", err)
		}
		b.root = root
		return b.install(ring, blob)
	}
	return fmt.Errorf("barrier: keyring kept changing under %d attempts", maxCASRetries)
}

func newDataKey(term uint32) dataKey {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("barrier: crypto/rand failed: " + err.Error())
	}
	return dataKey{Term: term, Key: k, Created: time.Now().Unix()}
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// Keyring blob: [version][root key ID, 16 hex chars][nonce][ciphertext+tag],
// with the path and the root key ID as additional data.
func wrapKeyring(root rootkey.Key, ring keyring) ([]byte, error) {
	plain, err := json.Marshal(ring)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	a, err := newAEAD(root.Bytes())
	if err != nil {
		return nil, err
	}
	id := root.ID()
	out := append([]byte{keyringVersion}, id...)
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return a.Seal(out, nonce, plain, []byte(keyringPath+"|"+id)), nil
}

// KeyringRootKeyID returns the ID of the root key that wrapped a keyring
// blob, read without the key.
func KeyringRootKeyID(raw []byte) (string, error) {
	id, _, err := splitKeyring(raw)
	return id, err
}

func splitKeyring(raw []byte) (id string, rest []byte, err error) {
	const idLen = 16
	if len(raw) < 1+idLen+nonceSize || raw[0] != keyringVersion {
		return "", nil, fmt.Errorf("%w: keyring has an unknown format", ErrCorrupt)
	}
	return string(raw[1 : 1+idLen]), raw[1+idLen:], nil
}

func unwrapKeyring(root rootkey.Key, raw []byte) (keyring, error) {
	id, rest, err := splitKeyring(raw)
	if err != nil {
		return keyring{}, err
	}
	if id != root.ID() {
		return keyring{}, &RootKeyMismatchError{Given: root.ID(), Sealed: id}
	}
	a, err := newAEAD(root.Bytes())
	if err != nil {
		return keyring{}, err
	}
	plain, err := a.Open(nil, rest[:nonceSize], rest[nonceSize:], []byte(keyringPath+"|"+id))
	if err != nil {
		return keyring{}, fmt.Errorf("%w: keyring", ErrCorrupt)
	}
	defer clear(plain)
	var ring keyring
	if err := json.Unmarshal(plain, &ring); err != nil {
		return keyring{}, fmt.Errorf("%w: keyring does not parse", ErrCorrupt)
	}
	return ring, nil
}

// Equal reports whether two revisions are the same.
func (r Rev) Equal(o Rev) bool { return bytes.Equal(r, o) }

// Follower is what a component that keeps state from the store uses to
// stay current while other replicas write it; a *Barrier is one.
type Follower interface {
	Follow(prefix string, reload func(ctx context.Context, keys []string, all bool))
}

// Follow calls reload, on a shared store, for every committed batch that
// touches keys under prefix (all is true after a gap: reload everything),
// with a context for reads from the local view, which holds that batch.
// reload runs on the store's dispatch goroutine: it must not Sync, and it
// should take the lock its own writers hold across Apply before it reads,
// so that a reload never overwrites a newer local write. On a store only
// this process writes, Follow does nothing: the writers keep their state.
func (b *Barrier) Follow(prefix string, reload func(ctx context.Context, keys []string, all bool)) {
	sh, ok := b.phys.(physical.Shared)
	if !ok {
		return
	}
	sh.Subscribe(func(c physical.Change) {
		var keys []string
		for _, k := range c.Keys {
			if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
		if len(keys) > 0 || c.Reset {
			reload(physical.Synced(context.Background()), keys, c.Reset)
		}
	})
}
