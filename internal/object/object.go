// Package object stores Key Vault objects (secrets, keys, certificates): named
// objects with immutable versions, a current version, soft delete with
// scheduled purge, key-ordered paging, and whole-object export for backups.
//
// Layout under the barrier, for vault V and kind K (names are lowercased,
// since Key Vault names are case-insensitive):
//
//	o/V/K/h/{name}            head: display name, current and previous version
//	o/V/K/v/{name}/{version}  one version, with its kind-specific data
//	o/V/K/d/{name}            head of a soft-deleted object
//
// Versions stay in place while an object is deleted, so recovering it is one
// small write. Every change is a single atomic batch guarded by revisions.
package object

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/barrier"
)

const maxRetries = 32

// Store is the slice of the barrier that collections use.
type Store interface {
	Get(ctx context.Context, key string) (barrier.Record, error)
	GetRaw(ctx context.Context, key string) ([]byte, error)
	Unseal(key string, raw []byte) ([]byte, error)
	Scan(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, error)
	Apply(ctx context.Context, conds []barrier.Cond, ops []barrier.Op) error
}

// Attributes are the lifecycle attributes every object version carries. Times
// are Unix seconds; NotBefore and Expires are nil when unset.
type Attributes struct {
	Enabled   bool   `json:"enabled"`
	NotBefore *int64 `json:"nbf,omitempty"`
	Expires   *int64 `json:"exp,omitempty"`
	Created   int64  `json:"created"`
	Updated   int64  `json:"updated"`
}

// Version is one immutable version of an object. Only its attributes, tags
// and content type change after creation.
type Version[T any] struct {
	Name        string            `json:"name"`
	ID          string            `json:"version"`
	Attributes  Attributes        `json:"attributes"`
	Tags        map[string]string `json:"tags,omitempty"`
	ContentType string            `json:"contentType,omitempty"`
	Managed     bool              `json:"managed,omitempty"`
	Data        T                 `json:"data"`
}

// Head tracks an object's current version. For a deleted object it also
// holds when it was deleted and when it will be purged.
type Head struct {
	// Seq counts the writes to the object. Every change to any of its
	// versions rewrites the head, so an unchanged head means an unchanged
	// object; the read cache relies on that.
	Seq            uint64 `json:"seq"`
	Name           string `json:"name"`
	Current        string `json:"current"`
	Previous       string `json:"previous,omitempty"`
	DeletedDate    int64  `json:"deletedDate,omitempty"`
	ScheduledPurge int64  `json:"scheduledPurgeDate,omitempty"`
}

// Item is one listed object: its head and its current version.
type Item[T any] struct {
	Head    Head
	Current Version[T]
}

// Export is a whole object, every version included, for a backup.
type Export[T any] struct {
	Kind     string       `json:"kind"`
	Head     Head         `json:"head"`
	Versions []Version[T] `json:"versions"`
}

// Collection holds the objects of one kind across all vaults.
type Collection[T any] struct {
	st   Store
	kind string
	now  func() time.Time
	// Writers to one object in this process queue on a striped lock, so
	// revision conflicts (and their retries) only happen between replicas.
	seed  maphash.Seed
	locks [64]sync.Mutex
	// cache holds decoded heads and versions for reads; see cache.go.
	cache      sync.Map // head key -> *headEntry[T]
	cacheBytes atomic.Int64
}

func (c *Collection[T]) lock(vault, name string) func() {
	m := &c.locks[maphash.String(c.seed, vault+"/"+strings.ToLower(name))%uint64(len(c.locks))]
	m.Lock()
	return m.Unlock
}

// New returns a collection of kind ("secrets", "keys", ...) over st.
func New[T any](st Store, kind string, now func() time.Time) *Collection[T] {
	if now == nil {
		now = time.Now
	}
	return &Collection[T]{st: st, kind: kind, now: now, seed: maphash.MakeSeed()}
}

// Kind returns the collection's kind.
func (c *Collection[T]) Kind() string { return c.kind }

func (c *Collection[T]) base(vault string) string { return "o/" + vault + "/" + c.kind + "/" }
func (c *Collection[T]) headKey(vault, name string) string {
	return c.base(vault) + "h/" + strings.ToLower(name)
}
func (c *Collection[T]) deletedKey(vault, name string) string {
	return c.base(vault) + "d/" + strings.ToLower(name)
}
func (c *Collection[T]) versionPrefix(vault, name string) string {
	return c.base(vault) + "v/" + strings.ToLower(name) + "/"
}
func (c *Collection[T]) versionKey(vault, name, version string) string {
	return c.versionPrefix(vault, name) + strings.ToLower(version)
}

// NewVersionID returns a random 32-hex-digit version identifier.
func NewVersionID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("object: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

func getJSON[V any](ctx context.Context, st Store, key string) (V, barrier.Rev, error) {
	var v V
	rec, err := st.Get(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return v, nil, ErrNotFound
	}
	if err != nil {
		return v, nil, err
	}
	if err := json.Unmarshal(rec.Value, &v); err != nil {
		return v, nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, rec.Rev, nil
}

func put(key string, v any) (barrier.Op, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return barrier.Op{}, err
	}
	return barrier.Op{Key: key, Value: b}, nil
}

// exists reports whether key holds a value, returning its revision.
func (c *Collection[T]) exists(ctx context.Context, key string) (barrier.Rev, bool, error) {
	rec, err := c.st.Get(ctx, key)
	if errors.Is(err, barrier.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return rec.Rev, true, nil
}

// retry runs attempt until it stops failing with a revision conflict.
func retry(attempt func() error) error {
	for range maxRetries {
		err := attempt()
		if !errors.Is(err, barrier.ErrConflict) {
			return err
		}
	}
	return ErrBusy
}

// Create adds a new version and makes it current. build gets the current
// version (nil for a new object) and returns the new version's content; the
// collection fills in its name, ID and timestamps. A soft-deleted name gives
// ErrDeleted.
func (c *Collection[T]) Create(ctx context.Context, vault, name string, build func(cur *Version[T]) (Version[T], error)) (Version[T], Head, error) {
	defer c.lock(vault, name)()
	var out Version[T]
	var head Head
	err := retry(func() error {
		if _, deleted, err := c.exists(ctx, c.deletedKey(vault, name)); err != nil {
			return err
		} else if deleted {
			return ErrDeleted
		}
		h, hrev, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
		var cur *Version[T]
		switch {
		case errors.Is(err, ErrNotFound):
			h = Head{Name: name}
		case err != nil:
			return err
		default:
			v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, name, h.Current))
			if err != nil {
				return fmt.Errorf("read current version of %s: %w", name, err)
			}
			cur = &v
		}
		v, err := build(cur)
		if err != nil {
			return err
		}
		now := c.now().Unix()
		v.Name, v.ID = h.Name, NewVersionID()
		v.Attributes.Created, v.Attributes.Updated = now, now
		h.Previous, h.Current = h.Current, v.ID
		h.Seq++
		vop, err := put(c.versionKey(vault, name, v.ID), v)
		if err != nil {
			return err
		}
		hop, err := put(c.headKey(vault, name), h)
		if err != nil {
			return err
		}
		conds := []barrier.Cond{
			{Key: c.headKey(vault, name), Rev: hrev},
			{Key: c.deletedKey(vault, name)},
			{Key: c.versionKey(vault, name, v.ID)},
		}
		if err := c.st.Apply(ctx, conds, []barrier.Op{vop, hop}); err != nil {
			return err
		}
		out, head = v, h
		return nil
	})
	return out, head, err
}

// Get returns a version of a live object; an empty version means the
// current one. The result may be shared with other readers: callers must not
// modify it (its Tags in particular).
func (c *Collection[T]) Get(ctx context.Context, vault, name, version string) (Version[T], Head, error) {
	e, err := c.cachedHead(ctx, c.headKey(vault, name))
	if err != nil {
		return Version[T]{}, Head{}, err
	}
	if version == "" {
		version = e.head.Current
	}
	v, err := c.cachedVersion(ctx, e, c.versionKey(vault, name, version), strings.ToLower(version))
	return v, e.head, err
}

// Update changes one version of a live object in place (an empty version
// means the current one). fn may change attributes, tags and content type.
func (c *Collection[T]) Update(ctx context.Context, vault, name, version string, fn func(*Version[T]) error) (Version[T], error) {
	defer c.lock(vault, name)()
	var out Version[T]
	err := retry(func() error {
		h, hrev, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
		if err != nil {
			return err
		}
		ver := version
		if ver == "" {
			ver = h.Current
		}
		key := c.versionKey(vault, name, ver)
		v, vrev, err := getJSON[Version[T]](ctx, c.st, key)
		if err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		v.Attributes.Updated = c.now().Unix()
		op, err := put(key, v)
		if err != nil {
			return err
		}
		h.Seq++
		hop, err := put(c.headKey(vault, name), h)
		if err != nil {
			return err
		}
		if err := c.st.Apply(ctx, []barrier.Cond{{Key: c.headKey(vault, name), Rev: hrev}, {Key: key, Rev: vrev}}, []barrier.Op{op, hop}); err != nil {
			return err
		}
		out = v
		return nil
	})
	return out, err
}

// Delete soft-deletes an object: it disappears from reads and lists and can
// be recovered until purgeAfter has passed.
func (c *Collection[T]) Delete(ctx context.Context, vault, name string, purgeAfter time.Duration) (Head, Version[T], error) {
	return c.moveHead(ctx, vault, name, c.headKey(vault, name), c.deletedKey(vault, name), func(h *Head) {
		now := c.now()
		h.DeletedDate, h.ScheduledPurge = now.Unix(), now.Add(purgeAfter).Unix()
	})
}

// GetDeleted returns a soft-deleted object's head and current version.
func (c *Collection[T]) GetDeleted(ctx context.Context, vault, name string) (Head, Version[T], error) {
	h, _, err := getJSON[Head](ctx, c.st, c.deletedKey(vault, name))
	if err != nil {
		return Head{}, Version[T]{}, err
	}
	v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, name, h.Current))
	return h, v, err
}

// Recover brings a soft-deleted object back, with all its versions.
func (c *Collection[T]) Recover(ctx context.Context, vault, name string) (Head, Version[T], error) {
	return c.moveHead(ctx, vault, name, c.deletedKey(vault, name), c.headKey(vault, name), func(h *Head) {
		h.DeletedDate, h.ScheduledPurge = 0, 0
		h.Seq++
	})
}

// moveHead moves an object's head from one key to the other (live to
// deleted, or back), changed by edit, in one conditional batch. The versions
// stay where they are.
func (c *Collection[T]) moveHead(ctx context.Context, vault, name, from, to string, edit func(*Head)) (Head, Version[T], error) {
	defer c.lock(vault, name)()
	var head Head
	var cur Version[T]
	err := retry(func() error {
		h, rev, err := getJSON[Head](ctx, c.st, from)
		if err != nil {
			return err
		}
		v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, name, h.Current))
		if err != nil {
			return err
		}
		edit(&h)
		op, err := put(to, h)
		if err != nil {
			return err
		}
		conds := []barrier.Cond{{Key: from, Rev: rev}, {Key: to}}
		if err := c.st.Apply(ctx, conds, []barrier.Op{{Key: from, Delete: true}, op}); err != nil {
			return err
		}
		head, cur = h, v
		return nil
	})
	return head, cur, err
}

// Purge permanently removes a soft-deleted object and all its versions.
func (c *Collection[T]) Purge(ctx context.Context, vault, name string) error {
	defer c.lock(vault, name)()
	return retry(func() error {
		rec, err := c.st.Get(ctx, c.deletedKey(vault, name))
		if errors.Is(err, barrier.ErrNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return c.purge(ctx, vault, name, rec.Rev)
	})
}

func (c *Collection[T]) purge(ctx context.Context, vault, name string, drev barrier.Rev) error {
	vers, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", 0)
	if err != nil {
		return err
	}
	ops := []barrier.Op{{Key: c.deletedKey(vault, name), Delete: true}}
	for _, v := range vers {
		ops = append(ops, barrier.Op{Key: v.Key, Delete: true})
	}
	return c.st.Apply(ctx, []barrier.Cond{{Key: c.deletedKey(vault, name), Rev: drev}}, ops)
}

// PurgeDue purges every soft-deleted object in vault whose scheduled purge
// date is not after now, and returns how many it purged.
func (c *Collection[T]) PurgeDue(ctx context.Context, vault string, now time.Time) (int, error) {
	n, after := 0, ""
	for {
		recs, err := c.st.Scan(ctx, c.base(vault)+"d/", after, 100)
		if err != nil || len(recs) == 0 {
			return n, err
		}
		for _, rec := range recs {
			after = rec.Key
			var h Head
			if err := json.Unmarshal(rec.Value, &h); err != nil {
				return n, fmt.Errorf("decode %s: %w", rec.Key, err)
			}
			if h.ScheduledPurge > now.Unix() {
				continue
			}
			unlock := c.lock(vault, h.Name)
			err := c.purge(ctx, vault, h.Name, rec.Rev)
			unlock()
			if errors.Is(err, barrier.ErrConflict) {
				continue // recovered or purged meanwhile
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
}

// List returns up to limit live objects whose lowercased names sort after
// after, and the cursor for the next page ("" at the end).
func (c *Collection[T]) List(ctx context.Context, vault, after string, limit int) ([]Item[T], string, error) {
	return c.list(ctx, vault, "h/", after, limit)
}

// ListDeleted is List for soft-deleted objects.
func (c *Collection[T]) ListDeleted(ctx context.Context, vault, after string, limit int) ([]Item[T], string, error) {
	return c.list(ctx, vault, "d/", after, limit)
}

func (c *Collection[T]) list(ctx context.Context, vault, sub, after string, limit int) ([]Item[T], string, error) {
	recs, next, err := c.scanPage(ctx, c.base(vault)+sub, after, limit)
	if err != nil {
		return nil, "", err
	}
	items := make([]Item[T], 0, len(recs))
	for _, rec := range recs {
		var h Head
		if err := json.Unmarshal(rec.Value, &h); err != nil {
			return nil, "", fmt.Errorf("decode %s: %w", rec.Key, err)
		}
		v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, h.Name, h.Current))
		if err != nil {
			return nil, "", fmt.Errorf("read current version of %s: %w", h.Name, err)
		}
		items = append(items, Item[T]{Head: h, Current: v})
	}
	return items, next, nil
}

// scanPage reads up to limit records under prefix after the cursor after
// (a key relative to prefix), and the cursor of the next page ("" at the end).
func (c *Collection[T]) scanPage(ctx context.Context, prefix, after string, limit int) ([]barrier.Record, string, error) {
	recs, err := c.st.Scan(ctx, prefix, prefix+after, limit+1)
	if err != nil || len(recs) <= limit {
		return recs, "", err
	}
	recs = recs[:limit]
	return recs, strings.TrimPrefix(recs[limit-1].Key, prefix), nil
}

// ListVersions returns up to limit versions of a live object after version
// after, and the cursor for the next page ("" at the end).
func (c *Collection[T]) ListVersions(ctx context.Context, vault, name, after string, limit int) ([]Version[T], string, error) {
	if _, _, err := getJSON[Head](ctx, c.st, c.headKey(vault, name)); err != nil {
		return nil, "", err
	}
	recs, next, err := c.scanPage(ctx, c.versionPrefix(vault, name), after, limit)
	if err != nil {
		return nil, "", err
	}
	out := make([]Version[T], len(recs))
	for i, rec := range recs {
		if err := json.Unmarshal(rec.Value, &out[i]); err != nil {
			return nil, "", fmt.Errorf("decode %s: %w", rec.Key, err)
		}
	}
	return out, next, nil
}

// Export returns a live object with all its versions.
func (c *Collection[T]) Export(ctx context.Context, vault, name string) (Export[T], error) {
	h, _, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
	if err != nil {
		return Export[T]{}, err
	}
	recs, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", 0)
	if err != nil {
		return Export[T]{}, err
	}
	e := Export[T]{Kind: c.kind, Head: h, Versions: make([]Version[T], len(recs))}
	for i, rec := range recs {
		if err := json.Unmarshal(rec.Value, &e.Versions[i]); err != nil {
			return Export[T]{}, fmt.Errorf("decode %s: %w", rec.Key, err)
		}
	}
	return e, nil
}

// Import writes an exported object into vault. The name must be unused, live
// or deleted; otherwise it returns ErrExists.
func (c *Collection[T]) Import(ctx context.Context, vault string, e Export[T]) (Head, Version[T], error) {
	name := e.Head.Name
	defer c.lock(vault, name)()
	var cur *Version[T]
	conds := []barrier.Cond{{Key: c.headKey(vault, name)}, {Key: c.deletedKey(vault, name)}}
	h := Head{Seq: e.Head.Seq + 1, Name: name, Current: e.Head.Current, Previous: e.Head.Previous}
	hop, err := put(c.headKey(vault, name), h)
	if err != nil {
		return Head{}, Version[T]{}, err
	}
	ops := []barrier.Op{hop}
	for i := range e.Versions {
		v := e.Versions[i]
		if v.ID == h.Current {
			cur = &e.Versions[i]
		}
		op, err := put(c.versionKey(vault, name, v.ID), v)
		if err != nil {
			return Head{}, Version[T]{}, err
		}
		ops = append(ops, op)
	}
	if cur == nil {
		return Head{}, Version[T]{}, fmt.Errorf("export of %s lacks its current version", name)
	}
	// Stray versions under this name (from a purge racing this import) would
	// otherwise surface; require the version space to be empty.
	if left, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", 1); err != nil {
		return Head{}, Version[T]{}, err
	} else if len(left) > 0 {
		return Head{}, Version[T]{}, ErrExists
	}
	err = c.st.Apply(ctx, conds, ops)
	if errors.Is(err, barrier.ErrConflict) {
		return Head{}, Version[T]{}, ErrExists
	}
	if err != nil {
		return Head{}, Version[T]{}, err
	}
	return h, *cur, nil
}
