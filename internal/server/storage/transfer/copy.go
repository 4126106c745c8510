package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// Default batch limits: etcd's default --max-txn-ops, and two thirds of its
// default --max-request-bytes (1.5 MiB), which leaves room for the key
// prefix and the request's own framing.
const (
	DefaultMaxBatchOps   = 128
	DefaultMaxBatchBytes = 1 << 20
)

// CopyOptions tune a copy into a store.
type CopyOptions struct {
	// Op names the operator command ("migrate" or "restore") in the
	// marker and in errors.
	Op string
	// MaxBatchOps and MaxBatchBytes bound one batch written to the target
	// (default DefaultMaxBatchOps and DefaultMaxBatchBytes).
	MaxBatchOps, MaxBatchBytes int
	// Now is the clock of the marker (default time.Now).
	Now func() time.Time
	// Progress, if set, is called after every batch written.
	Progress func(Progress)
}

// Progress is how far a copy has got.
type Progress struct {
	// Done is the number of source entries merged so far, of Total.
	Done, Total int
}

// CopyReport is what a copy did.
type CopyReport struct {
	// Source and Target sum up both sides, read again in full at the end;
	// a copy only succeeds when they are the same.
	Source, Target Summary
	// Resumed means an earlier, unfinished run's marker was found.
	Resumed bool
	// AlreadyDone means the target already held exactly the source's
	// entries (an earlier run finished): nothing was written.
	AlreadyDone bool
	// Copied entries were absent from the target, Replaced ones differed
	// from the source's, Removed ones are not in the source, and
	// Unchanged ones were already there.
	Copied, Replaced, Removed, Unchanged int
	// Batches is the number of atomic batches written.
	Batches int
}

// NotEmptyError means the target holds entries but no marker of an
// earlier run from the same source: a copy would overwrite another store.
type NotEmptyError struct {
	Op       string
	Target   Summary
	FirstKey string
}

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("the target is not empty: it holds %s (the first is %q) and is not the result of an earlier %s from this source, so it would be overwritten; choose an empty target (another data directory, another --etcd-prefix) or clear this one", plural(e.Target.Entries, "entry", "entries"), e.FirstKey, e.Op)
}

// OtherSourceError means the target holds an unfinished copy from another
// source.
type OtherSourceError struct {
	// Op and Source are the unfinished copy's; ThisOp and ThisSource are
	// the refused one's.
	Op, Source         string
	Started            time.Time
	ThisOp, ThisSource string
}

func (e *OtherSourceError) Error() string {
	return fmt.Sprintf("the target holds an unfinished %s from %s (started %s), not a %s from %s: run that %s again to finish it, or clear the target",
		e.Op, e.Source, e.Started.UTC().Format(time.RFC3339), e.ThisOp, e.ThisSource, e.Op)
}

// ChangedError means the target changed under the copy: a condition on
// Key failed. Another process writes to it.
type ChangedError struct{ Key string }

func (e *ChangedError) Error() string {
	return fmt.Sprintf("the target changed while it was being written (at %q): is a server or another copy using it? Stop it and run again; the copy resumes", e.Key)
}

// MismatchError means the final comparison found the two sides differ.
type MismatchError struct{ Source, Target Summary }

func (e *MismatchError) Error() string {
	return fmt.Sprintf("after the copy, the source holds %s but the target %s: did a server write to either meanwhile? Stop it and run again; the copy resumes and the target stays marked unfinished until they match", e.Source, e.Target)
}

// EntryTooLargeError means one entry alone is over the target's limit
// for one request.
type EntryTooLargeError struct {
	Key   string
	Bytes int
	Err   error
}

func (e *EntryTooLargeError) Error() string {
	return fmt.Sprintf("entry %q (%d bytes) does not fit in one request to the target: %v; raise the target's limit (etcd's --max-request-bytes) and run again", e.Key, e.Bytes, e.Err)
}

func (e *EntryTooLargeError) Unwrap() error { return e.Err }

// Copy makes dst hold exactly src's entries, resumably; see the package
// documentation for the steps.
func Copy(ctx context.Context, src Source, dst physical.Backend, o CopyOptions) (CopyReport, error) {
	if o.Op == "" {
		o.Op = "migrate"
	}
	if o.MaxBatchOps <= 0 {
		o.MaxBatchOps = DefaultMaxBatchOps
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var rep CopyReport
	srcSum, err := src.Summarize(ctx)
	if errors.Is(err, ErrCorruptSnapshot) {
		return rep, err // it names the file
	}
	if err != nil {
		return rep, fmt.Errorf("read the source %s: %w", src.Name(), err)
	}
	rep.Source = srcSum
	switch {
	case srcSum.Entries == 0:
		return rep, ErrEmptySource
	case srcSum.RootKeyID == "":
		return rep, ErrNoKeyring
	}

	// 1-2. The target is idle, and empty or an earlier run's; mark it.
	if err := CheckIdle(ctx, dst); err != nil {
		return rep, err
	}
	m, rawMarker, found, err := readMarker(ctx, dst)
	if err != nil {
		return rep, err
	}
	switch {
	case found && (m.Source != src.Name() || m.Op != o.Op):
		return rep, &OtherSourceError{Op: m.Op, Source: m.Source, Started: m.Started, ThisOp: o.Op, ThisSource: src.Name()}
	case found:
		rep.Resumed = true
	default:
		first, err := firstKey(ctx, dst)
		if err != nil {
			return rep, fmt.Errorf("read the target: %w", err)
		}
		if first != "" {
			dstSum, err := summarize(ctx, Store{B: dst})
			if err != nil {
				return rep, fmt.Errorf("read the target: %w", err)
			}
			if dstSum.Same(srcSum) {
				rep.Target, rep.AlreadyDone = dstSum, true
				rep.Unchanged = dstSum.Entries
				return rep, nil
			}
			return rep, &NotEmptyError{Op: o.Op, Target: dstSum, FirstKey: first}
		}
		rawMarker, _ = json.Marshal(marker{Op: o.Op, Source: src.Name(), Started: o.Now().UTC(), Entries: srcSum.Entries, Digest: srcSum.Digest})
		if err := dst.Apply(ctx, []physical.Cond{{Key: MarkerKey}}, []physical.Op{{Key: MarkerKey, Value: rawMarker}}); err != nil {
			if errors.Is(err, physical.ErrConflict) {
				return rep, &ChangedError{Key: MarkerKey}
			}
			return rep, fmt.Errorf("mark the target: %w", err)
		}
	}

	// 3. Merge the source into the target, in key order.
	w := &writer{dst: dst, o: o, rep: &rep, total: srcSum.Entries}
	tgt := &scanner{b: dst}
	var ring *physical.Entry
	err = src.Walk(ctx, func(e physical.Entry) error {
		if e.Key == barrier.KeyringKey {
			ring = &e
			w.done++
			return nil
		}
		for {
			t, ok, err := tgt.peek(ctx)
			if err != nil {
				return err
			}
			if !ok || t.Key >= e.Key {
				break
			}
			tgt.next()
			if t.Key != barrier.KeyringKey {
				if err := w.remove(ctx, t); err != nil {
					return err
				}
			}
		}
		t, ok, err := tgt.peek(ctx)
		if err != nil {
			return err
		}
		var old []byte
		if ok && t.Key == e.Key {
			tgt.next()
			old = t.Value
		}
		w.done++
		return w.put(ctx, e, old)
	})
	if err != nil {
		return rep, err
	}
	for {
		t, ok, err := tgt.peek(ctx)
		if err != nil {
			return rep, err
		}
		if !ok {
			break
		}
		tgt.next()
		if t.Key != barrier.KeyringKey {
			if err := w.remove(ctx, t); err != nil {
				return rep, err
			}
		}
	}
	if err := w.flush(ctx); err != nil {
		return rep, err
	}

	// 4. The keyring, last.
	if ring == nil {
		return rep, ErrNoKeyring // the source changed since it was summed up
	}
	old, err := dst.Get(ctx, barrier.KeyringKey)
	if err != nil && !errors.Is(err, physical.ErrNotFound) {
		return rep, err
	}
	if err := w.put(ctx, *ring, old); err != nil {
		return rep, err
	}
	if err := w.flush(ctx); err != nil {
		return rep, err
	}

	// 5. Compare both sides in full, then unmark.
	if rep.Source, err = src.Summarize(ctx); err != nil {
		return rep, fmt.Errorf("read the source again: %w", err)
	}
	if rep.Target, err = summarize(ctx, Store{B: dst}); err != nil {
		return rep, fmt.Errorf("read the target again: %w", err)
	}
	if !rep.Source.Same(rep.Target) {
		return rep, &MismatchError{Source: rep.Source, Target: rep.Target}
	}
	if err := dst.Apply(ctx, []physical.Cond{{Key: MarkerKey, Value: rawMarker}}, []physical.Op{{Key: MarkerKey, Delete: true}}); err != nil {
		if errors.Is(err, physical.ErrConflict) {
			return rep, &ChangedError{Key: MarkerKey}
		}
		return rep, fmt.Errorf("unmark the target: %w", err)
	}
	return rep, nil
}

// firstKey returns the target's first key that is neither a lease nor the
// marker, or "" if it has none.
func firstKey(ctx context.Context, b physical.Backend) (string, error) {
	s := &scanner{b: b}
	e, ok, err := s.peek(ctx)
	if err != nil || !ok {
		return "", err
	}
	return e.Key, nil
}

// scanner pages through a store in key order, leaving out leases and the
// marker. Each page is a short read: a long one could hold up the writes
// the copy makes to the same store (bolt).
type scanner struct {
	b     physical.Backend
	page  []physical.Entry
	after string
	done  bool
}

const scanPage = 256

func (s *scanner) peek(ctx context.Context) (physical.Entry, bool, error) {
	for len(s.page) == 0 && !s.done {
		page, err := s.b.Scan(ctx, "", s.after, scanPage)
		if err != nil {
			return physical.Entry{}, false, err
		}
		s.done = len(page) < scanPage
		for _, e := range page {
			s.after = e.Key
			if !physical.IsLease(e.Key) && e.Key != MarkerKey {
				s.page = append(s.page, e)
			}
		}
	}
	if len(s.page) == 0 {
		return physical.Entry{}, false, nil
	}
	return s.page[0], true, nil
}

func (s *scanner) next() { s.page = s.page[1:] }

// writer gathers the copy's writes into batches within the limits.
type writer struct {
	dst         physical.Backend
	o           CopyOptions
	rep         *CopyReport
	done, total int

	conds []physical.Cond
	ops   []physical.Op
	bytes int
	// counts of the batch in hand, added to the report once it commits
	copied, replaced, removed int
}

// put writes e over old (nil: absent), unless they are equal.
func (w *writer) put(ctx context.Context, e physical.Entry, old []byte) error {
	if old != nil && bytes.Equal(old, e.Value) {
		w.rep.Unchanged++
		return nil
	}
	if err := w.add(ctx, physical.Cond{Key: e.Key, Value: old}, physical.Op{Key: e.Key, Value: e.Value}); err != nil {
		return err
	}
	if old == nil {
		w.copied++
	} else {
		w.replaced++
	}
	return nil
}

// remove deletes t, which the source does not hold.
func (w *writer) remove(ctx context.Context, t physical.Entry) error {
	if err := w.add(ctx, physical.Cond(t), physical.Op{Key: t.Key, Delete: true}); err != nil {
		return err
	}
	w.removed++
	return nil
}

// add appends one conditional write, first committing the batch in hand
// if the write would take it over a limit.
func (w *writer) add(ctx context.Context, c physical.Cond, op physical.Op) error {
	n := 2*len(op.Key) + len(c.Value) + len(op.Value) + 64
	if len(w.ops) > 0 && (len(w.ops)+1 > w.o.MaxBatchOps || w.bytes+n > w.o.MaxBatchBytes) {
		if err := w.flush(ctx); err != nil {
			return err
		}
	}
	w.conds = append(w.conds, c)
	w.ops = append(w.ops, op)
	w.bytes += n
	return nil
}

// flush commits the batch in hand.
func (w *writer) flush(ctx context.Context) error {
	if len(w.ops) == 0 {
		return nil
	}
	err := w.dst.Apply(ctx, w.conds, w.ops)
	var ce *physical.ConflictError
	var tl *physical.TooLargeError
	switch {
	case errors.As(err, &ce):
		return &ChangedError{Key: ce.Key}
	case errors.Is(err, physical.ErrConflict):
		return &ChangedError{Key: w.ops[0].Key}
	case errors.As(err, &tl) && len(w.ops) == 1:
		return &EntryTooLargeError{Key: w.ops[0].Key, Bytes: len(w.ops[0].Value), Err: err}
	case err != nil:
		return fmt.Errorf("write %d entries from %q to the target: %w", len(w.ops), w.ops[0].Key, err)
	}
	w.rep.Batches++
	w.rep.Copied += w.copied
	w.rep.Replaced += w.replaced
	w.rep.Removed += w.removed
	w.copied, w.replaced, w.removed = 0, 0, 0
	w.conds, w.ops, w.bytes = w.conds[:0], w.ops[:0], 0
	if w.o.Progress != nil {
		w.o.Progress(Progress{Done: w.done, Total: w.total})
	}
	return nil
}
