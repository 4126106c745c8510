package object

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// Change is a set of writes and the conditions they rest on. A change is
// staged from what was read, and applied in one atomic batch, possibly with
// changes to other collections (a certificate and its managed key and
// secret move together). If any condition fails, nothing is written and the
// caller stages again.
type Change struct {
	Conds []barrier.Cond
	Ops   []barrier.Op
}

// Apply commits changes as one atomic, durable batch.
func Apply(ctx context.Context, st Store, changes ...Change) error {
	var all Change
	for _, c := range changes {
		all.Conds = append(all.Conds, c.Conds...)
		all.Ops = append(all.Ops, c.Ops...)
	}
	if len(all.Ops) == 0 {
		return nil
	}
	return st.Apply(ctx, all.Conds, all.Ops)
}

// Lock serializes this process's writers to one object; multi-collection
// callers take it on the object that owns the others.
func (c *Collection[T]) Lock(vault, name string) func() { return c.lock(vault, name) }

// StageCreate stages a new current version with the given id (a new random
// id if empty). build gets the current version, nil for a new object. A
// non-nil meta replaces the object's metadata.
func (c *Collection[T]) StageCreate(ctx context.Context, vault, name, id string, meta json.RawMessage, build func(cur *Version[T]) (Version[T], error)) (Change, Version[T], Head, error) {
	if _, deleted, err := c.exists(ctx, c.deletedKey(vault, name)); err != nil {
		return Change{}, Version[T]{}, Head{}, err
	} else if deleted {
		return Change{}, Version[T]{}, Head{}, ErrDeleted
	}
	h, hrev, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
	var cur *Version[T]
	switch {
	case errors.Is(err, ErrNotFound):
		h = Head{Name: name}
	case err != nil:
		return Change{}, Version[T]{}, Head{}, err
	default:
		v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, name, h.Current))
		if err != nil {
			return Change{}, Version[T]{}, Head{}, fmt.Errorf("read current version of %s: %w", name, err)
		}
		cur = &v
	}
	v, err := build(cur)
	if err != nil {
		return Change{}, Version[T]{}, Head{}, err
	}
	if id == "" {
		id = NewVersionID()
	}
	now := c.now().Unix()
	v.Name, v.ID = h.Name, strings.ToLower(id)
	v.Attributes.Created, v.Attributes.Updated = now, now
	h.Previous, h.Current = h.Current, v.ID
	h.Seq++
	v.Order = h.Seq
	if meta != nil {
		h.Meta = meta
	}
	vop, err := put(c.versionKey(vault, name, v.ID), v)
	if err != nil {
		return Change{}, Version[T]{}, Head{}, err
	}
	hop, err := put(c.headKey(vault, name), h)
	if err != nil {
		return Change{}, Version[T]{}, Head{}, err
	}
	ch := Change{
		Conds: []barrier.Cond{{Key: c.headKey(vault, name), Rev: hrev}, {Key: c.deletedKey(vault, name)}, {Key: c.versionKey(vault, name, v.ID)}},
		Ops:   []barrier.Op{vop, hop},
	}
	return ch, v, h, nil
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
		ch, v, h, err := c.StageCreate(ctx, vault, name, "", nil, build)
		if err != nil {
			return err
		}
		out, head = v, h
		return Apply(ctx, c.st, ch)
	})
	return out, head, err
}

// StageUpdate stages a change to one version of a live object ("" means the
// current one). The head is rewritten too, which keeps the read cache exact.
func (c *Collection[T]) StageUpdate(ctx context.Context, vault, name, version string, fn func(*Version[T]) error) (Change, Version[T], error) {
	h, hrev, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
	if err != nil {
		return Change{}, Version[T]{}, err
	}
	if version == "" {
		version = h.Current
	}
	key := c.versionKey(vault, name, version)
	v, vrev, err := getJSON[Version[T]](ctx, c.st, key)
	if err != nil {
		return Change{}, Version[T]{}, err
	}
	if err := fn(&v); err != nil {
		return Change{}, Version[T]{}, err
	}
	v.Attributes.Updated = c.now().Unix()
	h.Seq++
	op, err := put(key, v)
	if err != nil {
		return Change{}, Version[T]{}, err
	}
	hop, err := put(c.headKey(vault, name), h)
	if err != nil {
		return Change{}, Version[T]{}, err
	}
	return Change{Conds: []barrier.Cond{{Key: c.headKey(vault, name), Rev: hrev}, {Key: key, Rev: vrev}}, Ops: []barrier.Op{op, hop}}, v, nil
}

// Update changes one version of a live object in place (an empty version
// means the current one). fn may change attributes, tags and content type.
func (c *Collection[T]) Update(ctx context.Context, vault, name, version string, fn func(*Version[T]) error) (Version[T], error) {
	defer c.lock(vault, name)()
	var out Version[T]
	err := retry(func() error {
		ch, v, err := c.StageUpdate(ctx, vault, name, version, fn)
		if err != nil {
			return err
		}
		out = v
		return Apply(ctx, c.st, ch)
	})
	return out, err
}

// StageHeadMeta stages a change to the object-level metadata kept in the head (a
// certificate's policy, for one), under compare-and-swap.
func (c *Collection[T]) StageHeadMeta(ctx context.Context, vault, name string, fn func(meta json.RawMessage) (json.RawMessage, error)) (Change, error) {
	h, hrev, err := getJSON[Head](ctx, c.st, c.headKey(vault, name))
	if err != nil {
		return Change{}, err
	}
	meta, err := fn(h.Meta)
	if err != nil {
		return Change{}, err
	}
	h.Meta = meta
	h.Seq++
	hop, err := put(c.headKey(vault, name), h)
	if err != nil {
		return Change{}, err
	}
	return Change{Conds: []barrier.Cond{{Key: c.headKey(vault, name), Rev: hrev}}, Ops: []barrier.Op{hop}}, nil
}

// stageMove moves an object's head between the live and deleted keys,
// changed by edit. The versions stay where they are.
func (c *Collection[T]) stageMove(ctx context.Context, vault, name string, toDeleted bool, edit func(*Head)) (Change, Head, Version[T], error) {
	from, to := c.headKey(vault, name), c.deletedKey(vault, name)
	if !toDeleted {
		from, to = to, from
	}
	h, rev, err := getJSON[Head](ctx, c.st, from)
	if err != nil {
		return Change{}, Head{}, Version[T]{}, err
	}
	if h.Purging != "" {
		return Change{}, Head{}, Version[T]{}, Errorf(ErrDeleted, "ObjectIsBeingPurged",
			"%s is being purged: some of its versions are already gone, so it cannot be recovered. Purge it again to finish.", name)
	}
	v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, name, h.Current))
	if err != nil {
		return Change{}, Head{}, Version[T]{}, err
	}
	edit(&h)
	op, err := put(to, h)
	if err != nil {
		return Change{}, Head{}, Version[T]{}, err
	}
	ch := Change{Conds: []barrier.Cond{{Key: from, Rev: rev}, {Key: to}}, Ops: []barrier.Op{{Key: from, Delete: true}, op}}
	return ch, h, v, nil
}

// StageDelete stages a soft delete, recoverable until purgeAfter has passed.
func (c *Collection[T]) StageDelete(ctx context.Context, vault, name string, purgeAfter time.Duration) (Change, Head, Version[T], error) {
	return c.stageMove(ctx, vault, name, true, func(h *Head) {
		now := c.now()
		h.DeletedDate, h.ScheduledPurge = now.Unix(), now.Add(purgeAfter).Unix()
	})
}

// StageRecover stages bringing a soft-deleted object back.
func (c *Collection[T]) StageRecover(ctx context.Context, vault, name string) (Change, Head, Version[T], error) {
	return c.stageMove(ctx, vault, name, false, func(h *Head) {
		h.DeletedDate, h.ScheduledPurge = 0, 0
		h.Seq++
	})
}

// Delete soft-deletes an object: it disappears from reads and lists and can
// be recovered until purgeAfter has passed.
func (c *Collection[T]) Delete(ctx context.Context, vault, name string, purgeAfter time.Duration) (Head, Version[T], error) {
	return c.applyMove(vault, name, func() (Change, Head, Version[T], error) { return c.StageDelete(ctx, vault, name, purgeAfter) }, ctx)
}

// Recover brings a soft-deleted object back, with all its versions.
func (c *Collection[T]) Recover(ctx context.Context, vault, name string) (Head, Version[T], error) {
	return c.applyMove(vault, name, func() (Change, Head, Version[T], error) { return c.StageRecover(ctx, vault, name) }, ctx)
}

func (c *Collection[T]) applyMove(vault, name string, stage func() (Change, Head, Version[T], error), ctx context.Context) (Head, Version[T], error) {
	defer c.lock(vault, name)()
	var head Head
	var cur Version[T]
	err := retry(func() error {
		ch, h, v, err := stage()
		if err != nil {
			return err
		}
		head, cur = h, v
		return Apply(ctx, c.st, ch)
	})
	return head, cur, err
}

// StagePurge stages the permanent removal of a soft-deleted object and all
// its versions.
func (c *Collection[T]) StagePurge(ctx context.Context, vault, name string) (Change, error) {
	ch, _, err := c.stagePurge(ctx, vault, name)
	return ch, err
}

func (c *Collection[T]) stagePurge(ctx context.Context, vault, name string) (Change, Head, error) {
	h, rev, err := getJSON[Head](ctx, c.st, c.deletedKey(vault, name))
	if err != nil {
		return Change{}, Head{}, err
	}
	vers, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", 0)
	if err != nil {
		return Change{}, Head{}, err
	}
	ch := Change{Conds: []barrier.Cond{{Key: c.deletedKey(vault, name), Rev: rev}}, Ops: []barrier.Op{{Key: c.deletedKey(vault, name), Delete: true}}}
	for _, v := range vers {
		ch.Ops = append(ch.Ops, barrier.Op{Key: v.Key, Delete: true})
	}
	return ch, h, nil
}

// batchLimits are the most writes and bytes the store takes in one Apply,
// if it has limits (a Barrier on etcd: 128 operations and 1.5 MiB a
// transaction by default, while an object may have many more versions;
// one a day for a year is 365, and a backup may hold 500).
func (c *Collection[T]) batchLimits() (ops, bytes int, ok bool) {
	l, ok := c.st.(interface{ BatchLimits() (int, int, bool) })
	if !ok {
		return 0, 0, false
	}
	return l.BatchLimits()
}

// fits reports whether ch fits in one batch of the store. Conditions
// count as operations too (etcd bounds its comparisons as it bounds its
// writes), with one more for the fence of a write made by a leader.
func (c *Collection[T]) fits(ch Change) bool {
	maxOps, maxBytes, ok := c.batchLimits()
	return !ok || max(len(ch.Ops), len(ch.Conds)+1) <= maxOps && opBytes(ch.Ops) <= maxBytes
}

// Fits reports whether changes fit together in one batch of the store.
func (c *Collection[T]) Fits(changes ...Change) bool {
	var all Change
	for _, ch := range changes {
		all.Conds = append(all.Conds, ch.Conds...)
		all.Ops = append(all.Ops, ch.Ops...)
	}
	return c.fits(all)
}

// StageMarkPurging stages marking a soft-deleted object as being purged,
// due at once, so that it can no longer be recovered: a caller that
// purges several objects together in batches (a certificate with its key
// and secret) marks them all in one batch first, then purges each with
// PurgeInBatches.
func (c *Collection[T]) StageMarkPurging(ctx context.Context, vault, name string) (Change, error) {
	ch, _, err := c.stageMark(ctx, vault, name)
	return ch, err
}

// stageMark is StageMarkPurging, and returns the new token the mark holds.
func (c *Collection[T]) stageMark(ctx context.Context, vault, name string) (Change, string, error) {
	key := c.deletedKey(vault, name)
	h, rev, err := getJSON[Head](ctx, c.st, key)
	if err != nil {
		return Change{}, "", err
	}
	token := NewVersionID()
	h.Purging, h.ScheduledPurge = token, min(h.ScheduledPurge, c.now().Unix())
	op, err := put(key, h)
	if err != nil {
		return Change{}, "", err
	}
	return Change{Conds: []barrier.Cond{{Key: key, Rev: rev}}, Ops: []barrier.Op{op}}, token, nil
}

// PurgeInBatches purges a soft-deleted object as Purge does one too large
// for one batch, whatever its size. The caller holds the lock of the
// object, or of the object that owns it (Lock).
func (c *Collection[T]) PurgeInBatches(ctx context.Context, vault, name string) error {
	return c.purgeInBatches(ctx, vault, name)
}

// claim marks the soft-deleted object as being purged by a new token and
// returns its record and revision. Rewriting the record fails the later
// batches of whichever purge or import owned it before, on this replica
// or another, so that only one writes the object's versions at a time.
func (c *Collection[T]) claim(ctx context.Context, vault, name string) (Head, barrier.Rev, error) {
	ch, token, err := c.stageMark(ctx, vault, name)
	if err != nil {
		return Head{}, nil, err
	}
	if err := Apply(ctx, c.st, ch); err != nil {
		return Head{}, nil, err
	}
	return c.owned(ctx, c.deletedKey(vault, name), token)
}

// owned re-reads the deleted record at key, which the operation of token
// has just written, for its revision. A record another operation wrote
// since is a conflict: the caller starts again.
func (c *Collection[T]) owned(ctx context.Context, key, token string) (Head, barrier.Rev, error) {
	h, rev, err := getJSON[Head](ctx, c.st, key)
	if errors.Is(err, ErrNotFound) {
		return Head{}, nil, barrier.ErrConflict
	}
	if err != nil {
		return Head{}, nil, err
	}
	if h.Purging != token {
		return Head{}, nil, barrier.ErrConflict
	}
	return h, rev, nil
}

// Purge permanently removes a soft-deleted object and all its versions.
// An object of more versions than one batch of the store may delete (see
// batchLimits) is removed in several batches:
// the first marks it Purging, so that nothing can recover it half removed;
// the others delete its older versions; the last its current version and
// the deleted record. A purge that stops midway (a crash, an outage) leaves
// a Purging object, due at once, which the next purge, asked for or
// scheduled, finishes. An object another operation is purging or importing
// in batches is purged in batches too, which takes it over.
func (c *Collection[T]) Purge(ctx context.Context, vault, name string) error {
	defer c.lock(vault, name)()
	return retry(func() error {
		ch, h, err := c.stagePurge(ctx, vault, name)
		if err != nil {
			return err
		}
		if !c.fits(ch) || h.Purging != "" {
			return c.purgeInBatches(ctx, vault, name)
		}
		return Apply(ctx, c.st, ch)
	})
}

// purgeInBatches is Purge for an object too large for one batch. Its
// first batch claims the deleted record, and every later one rests on the
// revision it wrote, so a batch fails with a conflict (and Purge starts
// again) if another operation claimed or changed the object meanwhile;
// the versions are listed only once the claim is made, so none written
// by an earlier owner can be missed.
func (c *Collection[T]) purgeInBatches(ctx context.Context, vault, name string) error {
	key := c.deletedKey(vault, name)
	h, rev, err := c.claim(ctx, vault, name)
	if err != nil {
		return err
	}
	cond := []barrier.Cond{{Key: key, Rev: rev}}
	current := c.versionKey(vault, name, h.Current)
	// One condition, and a leader's fence, beside the deletions.
	size, _, ok := c.batchLimits()
	if !ok {
		size = 100
	}
	if size < 2 {
		return fmt.Errorf("the storage engine takes %d operations in one batch: too few to purge %s in batches", size, name)
	}
	for {
		vers, err := c.st.Scan(ctx, c.versionPrefix(vault, name), "", size+1)
		if err != nil {
			return err
		}
		var ops []barrier.Op
		for _, v := range vers {
			if v.Key != current && len(ops) < size {
				ops = append(ops, barrier.Op{Key: v.Key, Delete: true})
			}
		}
		if len(ops) == 0 {
			break
		}
		if err := c.st.Apply(ctx, cond, ops); err != nil {
			return err
		}
	}
	return c.st.Apply(ctx, cond, []barrier.Op{{Key: current, Delete: true}, {Key: key, Delete: true}})
}

// DueForPurge returns the soft-deleted objects of vault whose scheduled
// purge date is not after now, with their current versions.
func (c *Collection[T]) DueForPurge(ctx context.Context, vault string, now time.Time) ([]Item[T], error) {
	var due []Item[T]
	after := ""
	for {
		recs, err := c.st.Scan(ctx, c.base(vault)+"d/", after, 100)
		if err != nil || len(recs) == 0 {
			return due, err
		}
		for _, rec := range recs {
			after = rec.Key
			var h Head
			if err := json.Unmarshal(rec.Value, &h); err != nil {
				return due, fmt.Errorf("decode %s: %w", rec.Key, err)
			}
			if h.ScheduledPurge > now.Unix() {
				continue
			}
			v, _, err := getJSON[Version[T]](ctx, c.st, c.versionKey(vault, h.Name, h.Current))
			if err != nil {
				return due, err
			}
			due = append(due, Item[T]{Head: h, Current: v})
		}
	}
}

// PurgeDue purges every soft-deleted object in vault whose scheduled purge
// date is not after now, except those skip returns true for (a
// certificate's managed key and secret, which go with the certificate).
// PurgeDueUnmanaged is PurgeDue for the objects no certificate manages:
// a certificate's key and secret are purged with the certificate.
func (c *Collection[T]) PurgeDueUnmanaged(ctx context.Context, vault string, now time.Time) (int, error) {
	return c.PurgeDue(ctx, vault, now, func(it Item[T]) bool { return it.Current.Managed })
}

func (c *Collection[T]) PurgeDue(ctx context.Context, vault string, now time.Time, skip func(Item[T]) bool) (int, error) {
	due, err := c.DueForPurge(ctx, vault, now)
	n := 0
	for _, it := range due {
		if skip != nil && skip(it) {
			continue
		}
		err := c.Purge(ctx, vault, it.Head.Name)
		if errors.Is(err, ErrNotFound) {
			continue // recovered or purged meanwhile
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, err
}

// StageImport stages writing an exported object into vault. The name must
// be unused, live or deleted, or it returns ErrExists.
func (c *Collection[T]) StageImport(ctx context.Context, vault string, e Export[T]) (Change, Head, Version[T], error) {
	name := e.Head.Name
	h := Head{Seq: e.Head.Seq + 1, Name: name, Current: e.Head.Current, Previous: e.Head.Previous, Meta: e.Head.Meta}
	hop, err := put(c.headKey(vault, name), h)
	if err != nil {
		return Change{}, Head{}, Version[T]{}, err
	}
	ch := Change{Conds: []barrier.Cond{{Key: c.headKey(vault, name)}, {Key: c.deletedKey(vault, name)}}, Ops: []barrier.Op{hop}}
	var cur *Version[T]
	for i := range e.Versions {
		v := e.Versions[i]
		if v.ID == h.Current {
			cur = &e.Versions[i]
		}
		op, err := put(c.versionKey(vault, name, v.ID), v)
		if err != nil {
			return Change{}, Head{}, Version[T]{}, err
		}
		ch.Conds = append(ch.Conds, barrier.Cond{Key: op.Key})
		ch.Ops = append(ch.Ops, op)
	}
	if cur == nil {
		return Change{}, Head{}, Version[T]{}, fmt.Errorf("export of %s lacks its current version", name)
	}
	if _, live, err := c.exists(ctx, c.headKey(vault, name)); err != nil {
		return Change{}, Head{}, Version[T]{}, err
	} else if live {
		return Change{}, Head{}, Version[T]{}, ErrExists
	}
	if _, deleted, err := c.exists(ctx, c.deletedKey(vault, name)); err != nil {
		return Change{}, Head{}, Version[T]{}, err
	} else if deleted {
		return Change{}, Head{}, Version[T]{}, ErrExists
	}
	return ch, h, *cur, nil
}

// Import writes an exported object into vault. The name must be unused,
// live or deleted; otherwise it returns ErrExists.
func (c *Collection[T]) Import(ctx context.Context, vault string, e Export[T]) (Head, Version[T], error) {
	defer c.lock(vault, e.Head.Name)()
	ch, h, v, err := c.StageImport(ctx, vault, e)
	if err != nil {
		return Head{}, Version[T]{}, err
	}
	if !c.fits(ch) {
		err = c.importInBatches(ctx, vault, h, ch)
	} else {
		err = Apply(ctx, c.st, ch)
	}
	if errors.Is(err, barrier.ErrConflict) {
		return Head{}, Version[T]{}, ErrExists
	} else if err != nil {
		return Head{}, Version[T]{}, err
	}
	return h, v, nil
}

func opBytes(ops []barrier.Op) int {
	n := 0
	for _, op := range ops {
		n += len(op.Key) + len(op.Value)
	}
	return n
}

// importInBatches is Import for an object too large for one batch (see
// batchLimits). The object is written as a deleted object being purged, so
// that nothing reads or recovers it half written: first its deleted
// record, then its versions, then, in the last batch, the record becomes
// its live head. An import that stops midway leaves a deleted object
// marked Purging, which a purge removes, or the scheduled purge an hour
// later; until then the name is in use and a new import of it is refused.
// An import that fails between batches removes what it wrote.
func (c *Collection[T]) importInBatches(ctx context.Context, vault string, h Head, ch Change) error {
	first, bi, err := c.stageImportStart(vault, h, ch)
	if err != nil {
		return err
	}
	if err := Apply(ctx, c.st, first); err != nil {
		return err
	}
	err = c.ImportVersions(ctx, bi)
	if err == nil {
		err = Apply(ctx, c.st, c.StageImportFinish(bi))
	}
	err = Interrupted(h.Name, err)
	if err != nil {
		if cerr := c.purgeInBatches(ctx, vault, h.Name); cerr != nil && !errors.Is(cerr, ErrNotFound) {
			return fmt.Errorf("%w (and removing what was written: %v; purge %s to finish)", err, cerr, h.Name)
		}
	}
	return err
}

// Interrupted is the error of an import in batches whose later batch found
// its record taken over (err a conflict): the name was free when the import
// began, so "already exists" would mislead; another request, a purge on
// this replica or another, removed what it had written.
func Interrupted(name string, err error) error {
	if errors.Is(err, barrier.ErrConflict) {
		return Errorf(ErrExists, "", "The restore of %s was interrupted: another request purged it while its versions were being written. Restore it again.", name)
	}
	return err
}

// BatchImport is an import written in several batches: see
// Collection.StageImportStart.
type BatchImport struct {
	vault, name, key, token string
	rev                     barrier.Rev
	head                    barrier.Op
	vers                    []barrier.Op
	conds                   []barrier.Cond
}

// StageImportStart stages the first batch of an import in batches, for a
// caller that imports several objects together (a certificate with its key
// and secret): it applies the first batches of all of them as one, then
// ImportVersions for each, then their StageImportFinish changes as one.
// If any step fails, the caller purges what was written (the objects are
// deleted and being purged until the last batch). The name must be
// unused, as for StageImport.
func (c *Collection[T]) StageImportStart(ctx context.Context, vault string, e Export[T]) (Change, *BatchImport, error) {
	ch, h, _, err := c.StageImport(ctx, vault, e)
	if err != nil {
		return Change{}, nil, err
	}
	return c.stageImportStart(vault, h, ch)
}

// stageImportStart turns ch, StageImport's change for head h, into the
// first batch of an import in batches: the deleted record, marked with a
// new token, and the current version, which lists and reads of deleted
// objects show with it.
func (c *Collection[T]) stageImportStart(vault string, h Head, ch Change) (Change, *BatchImport, error) {
	name := h.Name
	bi := &BatchImport{vault: vault, name: name, key: c.deletedKey(vault, name), token: NewVersionID(), head: ch.Ops[0]}
	d := h
	now := c.now()
	d.DeletedDate, d.ScheduledPurge, d.Purging = now.Unix(), now.Add(time.Hour).Unix(), bi.token
	dop, err := put(bi.key, d)
	if err != nil {
		return Change{}, nil, err
	}
	// ch.Ops[0] is the head; each version's op has its absence condition
	// at the same place in ch.Conds after the head's two.
	vers, conds := slices.Clone(ch.Ops[1:]), slices.Clone(ch.Conds[2:])
	i := slices.IndexFunc(vers, func(op barrier.Op) bool { return op.Key == c.versionKey(vault, name, h.Current) })
	first := Change{Conds: []barrier.Cond{{Key: c.headKey(vault, name)}, {Key: bi.key}, conds[i]}, Ops: []barrier.Op{dop, vers[i]}}
	bi.vers, bi.conds = slices.Delete(vers, i, i+1), slices.Delete(conds, i, i+1)
	return first, bi, nil
}

// ImportVersions writes the versions of an import in batches whose first
// batch was applied, each batch within the store's limits and resting on
// the deleted record that batch wrote.
func (c *Collection[T]) ImportVersions(ctx context.Context, bi *BatchImport) error {
	_, rev, err := c.owned(ctx, bi.key, bi.token)
	if err != nil {
		return err
	}
	bi.rev = rev
	// Each batch's conditions are the record's and one per version, plus
	// the fence of a write made by a leader, and count as operations too.
	maxOps, maxBytes, ok := c.batchLimits()
	if !ok {
		maxOps, maxBytes = len(bi.vers)+2, opBytes(bi.vers)+1
	}
	maxOps -= 2
	if maxOps < 1 {
		return fmt.Errorf("the storage engine takes %d operations in one batch: too few to import %s in batches", maxOps+2, bi.name)
	}
	vers, conds := bi.vers, bi.conds
	for len(vers) > 0 {
		n, size := 0, 0
		for n < len(vers) && n < maxOps && (n == 0 || size+len(vers[n].Key)+len(vers[n].Value) <= maxBytes) {
			size += len(vers[n].Key) + len(vers[n].Value)
			n++
		}
		if err := c.st.Apply(ctx, append([]barrier.Cond{{Key: bi.key, Rev: rev}}, conds[:n]...), vers[:n]); err != nil {
			return err
		}
		vers, conds = vers[n:], conds[n:]
	}
	return nil
}

// StageImportFinish stages the last batch of an import in batches, once
// ImportVersions has written its versions: the deleted record becomes the
// object's live head.
func (c *Collection[T]) StageImportFinish(bi *BatchImport) Change {
	return Change{Conds: []barrier.Cond{{Key: bi.key, Rev: bi.rev}, {Key: c.headKey(bi.vault, bi.name)}},
		Ops: []barrier.Op{{Key: bi.key, Delete: true}, bi.head}}
}
