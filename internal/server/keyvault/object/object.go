// Package object stores Key Vault objects (secrets, keys, certificates): named
// objects with immutable versions, a current version, soft delete with
// scheduled purge, paging (objects by name, versions newest first), and
// whole-object export for backups.
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
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

const maxRetries = 32

// Store is the slice of the barrier that collections use.
type Store interface {
	Get(ctx context.Context, key string) (barrier.Record, error)
	GetRaw(ctx context.Context, key string) ([]byte, error)
	Holds(ctx context.Context, key string, raw []byte) (bool, error)
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

// Patch is a change to a version's attributes and tags, as a PATCH gives
// it: nil members are left alone, and empty tags remove them all.
type Patch struct {
	Enabled   *bool
	NotBefore *int64
	Expires   *int64
	Tags      map[string]string
}

// Apply lays p over a version's attributes and tags, and checks that nbf
// stays before exp.
func (p Patch) Apply(a *Attributes, tags *map[string]string) error {
	if p.Enabled != nil {
		a.Enabled = *p.Enabled
	}
	if p.NotBefore != nil {
		a.NotBefore = p.NotBefore
	}
	if p.Expires != nil {
		a.Expires = p.Expires
	}
	if a.NotBefore != nil && a.Expires != nil && *a.Expires <= *a.NotBefore {
		return Invalidf("attributes.exp (%d) must be later than attributes.nbf (%d).", *a.Expires, *a.NotBefore)
	}
	if p.Tags != nil {
		*tags = p.Tags
		if len(p.Tags) == 0 {
			*tags = nil
		}
	}
	return nil
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
	// Order is the object's head Seq when this version was created. Seq
	// grows with every write to the object, so Order ranks its versions
	// in creation order exactly, where attributes.created (whole seconds)
	// ties. It is 0 for versions stored before Order existed; newestFirst
	// ranks those.
	Order uint64 `json:"order,omitempty"`
	Data  T      `json:"data"`
	// Memo is the read cache's slot for what the API layer derives from
	// this version as read (see Memo); nil when the read did not come
	// from the cache.
	Memo *Memo `json:"-"`
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
	// Purging marks a soft-deleted object that a purge or an import done
	// in several batches owns (see Collection.batchLimits): it holds
	// that operation's random token. Such an object can no longer be
	// recovered, only purged, which finishes the removal.
	Purging string `json:"purging,omitempty"`
	// Meta is object-level data of the kind (a certificate's policy).
	Meta json.RawMessage `json:"meta,omitempty"`
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

// New returns a collection of kind ("secrets", "keys", ...) over st. When
// st tells of its committed batches, the collection follows them for as
// long as st lives (see evict): make one per kind and store, as the
// server does, not one per request.
func New[T any](st Store, kind string, now func() time.Time) *Collection[T] {
	if now == nil {
		now = time.Now
	}
	c := &Collection[T]{st: st, kind: kind, now: now, seed: maphash.MakeSeed()}
	if sub, ok := st.(subscriber); ok {
		sub.Subscribe(c.evict)
	}
	return c
}

// Kind returns the collection's kind.
func (c *Collection[T]) Kind() string { return c.kind }

func (c *Collection[T]) base(vault string) string { return "o/" + vault + "/" + c.kind + "/" }

// The keys below are each one concatenation, not base's and then their
// own: headKey is built on every read.
func (c *Collection[T]) headKey(vault, name string) string {
	return "o/" + vault + "/" + c.kind + "/h/" + strings.ToLower(name)
}
func (c *Collection[T]) deletedKey(vault, name string) string {
	return c.base(vault) + "d/" + strings.ToLower(name)
}
func (c *Collection[T]) versionPrefix(vault, name string) string {
	return c.base(vault) + "v/" + strings.ToLower(name) + "/"
}
func (c *Collection[T]) versionKey(vault, name, version string) string {
	return "o/" + vault + "/" + c.kind + "/v/" + strings.ToLower(name) + "/" + strings.ToLower(version)
}

// Named returns the vault, kind and name of the object that a store key
// belongs to (its head, a version or its deleted record); ok is false
// for keys that are not an object's.
func Named(key string) (vault, kind, name string, ok bool) {
	rest, found := strings.CutPrefix(key, "o/")
	if !found {
		return "", "", "", false
	}
	parts := strings.SplitN(rest, "/", 5)
	if len(parts) < 4 || parts[0] == "" || parts[1] == "" || parts[3] == "" {
		return "", "", "", false
	}
	switch parts[2] {
	case "h", "v", "d":
		return parts[0], parts[1], parts[3], true
	}
	return "", "", "", false
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

// Retry runs attempt until it stops failing with a revision conflict, for
// callers that apply staged changes themselves.
func Retry(attempt func() error) error { return retry(attempt) }

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
	v, err := c.cachedVersion(ctx, e, vault, name, strings.ToLower(version))
	return v, e.head, err
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

// ListVersions returns up to limit versions of a live object (all of them
// if limit <= 0) that come after version after, newest first in creation
// order, and the cursor for the next page ("" at the end). Versions are
// stored by id, which is random, so each page reads all of the object's
// versions to order them; an object has few.
func (c *Collection[T]) ListVersions(ctx context.Context, vault, name, after string, limit int) ([]Version[T], string, error) {
	h, _, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
	if err != nil {
		return nil, "", err
	}
	recs, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", 0)
	if err != nil {
		return nil, "", err
	}
	all := make([]Version[T], len(recs))
	for i, rec := range recs {
		if err := json.Unmarshal(rec.Value, &all[i]); err != nil {
			return nil, "", fmt.Errorf("decode %s: %w", rec.Key, err)
		}
	}
	slices.SortFunc(all, newestFirst[T](h))
	start := 0
	if after != "" {
		// Versions are never removed one by one, so the cursor's stays;
		// one created since ranks before it and is not listed. (Only
		// versions stored before Order existed can move, when a newer
		// version takes the head's current or previous place.)
		i := slices.IndexFunc(all, func(v Version[T]) bool { return v.ID == strings.ToLower(after) })
		if i < 0 {
			return nil, "", Invalidf("The $skiptoken does not continue a listing of the versions of %s.", name)
		}
		start = i + 1
	}
	end := len(all)
	if limit > 0 {
		end = min(end, start+limit)
	}
	next := ""
	if end < len(all) {
		next = all[end-1].ID
	}
	return all[start:end], next, nil
}

// newestFirst compares versions of the object whose head is h, newest
// first. Order decides when the versions differ in it: every version
// with an Order was created after every version without one. Among those
// without (stored before Order existed), the head's current version is
// the newest and its previous one the next; then created, then the id,
// which at least keeps the order the same from page to page.
func newestFirst[T any](h Head) func(a, b Version[T]) int {
	rank := func(v Version[T]) int {
		switch v.ID {
		case h.Current:
			return 2
		case h.Previous:
			return 1
		}
		return 0
	}
	return func(a, b Version[T]) int {
		if c := cmp.Compare(b.Order, a.Order); c != 0 {
			return c
		}
		if c := cmp.Compare(rank(b), rank(a)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Attributes.Created, a.Attributes.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	}
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
