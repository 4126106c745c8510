// Package transfer moves a store's sealed blobs, unchanged, between stores
// and snapshot files: `coffer operator migrate` (bolt to etcd and back) and
// `coffer operator snapshot save|restore`.
//
// It works at the physical level, below the barrier: values are copied as
// the sealed bytes they are, bound to their keys, so no root key is needed
// to copy them and a snapshot file never holds plaintext. Every read of a
// store goes through physical.Walk, at one point in time.
//
// A copy into a store (a migration or a restore) is resumable:
//
//  1. The target must be empty, or hold the marker of an earlier run from
//     the same source (or already hold exactly the source's entries, when
//     an earlier run finished).
//  2. The marker (MarkerKey, under the barrier's reserved prefix) is
//     written first. A server refuses to open a store that holds it.
//  3. Source and target are merged in key order: an entry missing from the
//     target is put if still absent, one that differs is replaced if still
//     as read, one the source lacks is deleted if still as read. Batches
//     stay within etcd's limits for one transaction.
//  4. The keyring is written last, so that a half-copied store has none.
//  5. Both sides are read again in full and their entry counts and digests
//     compared; only then is the marker removed.
//
// A run stopped anywhere, and run again, ends with the same content.
package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// MarkerKey holds the marker of an unfinished copy into a store. It is
// under the barrier's reserved prefix, so no component reads or writes it.
const MarkerKey = barrier.ReservedPrefix + "transfer"

// ErrEmptySource means the source holds no entries at all.
var ErrEmptySource = errors.New("the source holds no entries: is it the right store (--data-dir, --etcd-prefix)?")

// ErrNoKeyring means the source has entries but no keyring, so nothing
// in it could ever be opened.
var ErrNoKeyring = errors.New("the source has no keyring (" + barrier.KeyringKey + "): it is not a whole Coffer store")

// Summary describes the entries of a store or a snapshot.
type Summary struct {
	// Entries is the number of entries and Bytes their keys' and values'
	// length.
	Entries int
	Bytes   int64
	// Digest is "sha256:" and the hex SHA-256 of the entries' canonical
	// encoding, in key order (see Encode).
	Digest string
	// RootKeyID names the root key that wraps the keyring ("" without a
	// keyring).
	RootKeyID string
}

// Same reports whether two summaries describe the same entries.
func (s Summary) Same(o Summary) bool {
	return s.Entries == o.Entries && s.Bytes == o.Bytes && s.Digest == o.Digest
}

func (s Summary) String() string {
	return fmt.Sprintf("%s, %s, %s", plural(s.Entries, "entry", "entries"), size(s.Bytes), s.Digest)
}

// plural prints n with the noun's right form.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// size prints a byte count for people.
func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// Encode appends e's canonical encoding to dst: the key's length as a
// uvarint, the key, the value's length as a uvarint, the value. A snapshot's
// body is its entries so encoded, and a digest is the SHA-256 of them.
func Encode(dst []byte, e physical.Entry) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(e.Key)))
	dst = append(dst, e.Key...)
	dst = binary.AppendUvarint(dst, uint64(len(e.Value)))
	return append(dst, e.Value...)
}

// digester sums entries as they pass, in key order.
type digester struct {
	h       hash.Hash
	n       int
	bytes   int64
	last    string
	rootKey string
	buf     []byte
}

func newDigester() *digester { return &digester{h: sha256.New()} }

// add sums e; entries must come in strictly increasing key order.
func (d *digester) add(e physical.Entry) error {
	if d.n > 0 && e.Key <= d.last {
		return fmt.Errorf("entry %q is out of order (after %q)", e.Key, d.last)
	}
	if e.Key == barrier.KeyringKey {
		id, err := barrier.KeyringRootKeyID(e.Value)
		if err != nil {
			return fmt.Errorf("the keyring: %w", err)
		}
		d.rootKey = id
	}
	d.buf = Encode(d.buf[:0], e)
	d.h.Write(d.buf)
	d.n++
	d.bytes += int64(len(e.Key) + len(e.Value))
	d.last = e.Key
	return nil
}

func (d *digester) summary() Summary {
	return Summary{Entries: d.n, Bytes: d.bytes, Digest: "sha256:" + hex.EncodeToString(d.h.Sum(nil)), RootKeyID: d.rootKey}
}

// Source is what a copy reads from: a store or a snapshot.
type Source interface {
	// Name says where the entries come from, in reports and in a copy's
	// marker ("bolt:/var/lib/coffer/coffer.db").
	Name() string
	// Walk calls fn for every entry in key order, as of one point in
	// time, leaving out lease keys and MarkerKey.
	Walk(ctx context.Context, fn func(physical.Entry) error) error
	// Summarize reads every entry and sums them up, checking that the
	// source is whole (a snapshot's digest, a store's marker).
	Summarize(ctx context.Context) (Summary, error)
}

// Store is a store as a Source.
type Store struct {
	B physical.Backend
	// Label is the store's Name.
	Label string
}

// Name implements Source.
func (s Store) Name() string { return s.Label }

// Walk implements Source.
func (s Store) Walk(ctx context.Context, fn func(physical.Entry) error) error {
	return physical.Walk(ctx, s.B, "", func(e physical.Entry) error {
		if e.Key == MarkerKey {
			return nil
		}
		return fn(e)
	})
}

// Summarize implements Source. A store that is itself the target of an
// unfinished copy is refused: its content is not whole.
func (s Store) Summarize(ctx context.Context) (Summary, error) {
	if err := RefuseUnfinished(ctx, s.B); err != nil {
		return Summary{}, err
	}
	return summarize(ctx, s)
}

// summarize reads src through and sums its entries.
func summarize(ctx context.Context, src Source) (Summary, error) {
	d := newDigester()
	if err := src.Walk(ctx, d.add); err != nil {
		return Summary{}, err
	}
	return d.summary(), nil
}

// marker is what MarkerKey holds while a copy is unfinished.
type marker struct {
	// Op is "migrate" or "restore", the operator command that writes it.
	Op      string    `json:"op"`
	Source  string    `json:"source"`
	Started time.Time `json:"started"`
	// Entries and Digest describe the source when the copy began.
	Entries int    `json:"entries"`
	Digest  string `json:"digest"`
}

// UnfinishedError means a store holds the marker of an unfinished copy:
// its content is partial until the copy is run again to its end.
type UnfinishedError struct {
	Op, Source string
	Started    time.Time
}

func (e *UnfinishedError) Error() string {
	return fmt.Sprintf("this store is the target of an unfinished %s from %s, started %s: its content is partial; run `coffer operator %s` from that source again to finish it, or clear the store",
		e.Op, e.Source, e.Started.UTC().Format(time.RFC3339), e.Op)
}

// readMarker returns the marker in b, if any.
func readMarker(ctx context.Context, b physical.Backend) (marker, []byte, bool, error) {
	raw, err := b.Get(ctx, MarkerKey)
	if errors.Is(err, physical.ErrNotFound) {
		return marker{}, nil, false, nil
	}
	if err != nil {
		return marker{}, nil, false, err
	}
	var m marker
	if err := json.Unmarshal(raw, &m); err != nil {
		return marker{}, nil, false, fmt.Errorf("the store's transfer marker (%s) does not parse: %w", MarkerKey, err)
	}
	return m, raw, true, nil
}

// RefuseUnfinished returns an *UnfinishedError if b is the target of an
// unfinished copy. A server calls it before it opens a store, so that it
// never serves half a migration.
func RefuseUnfinished(ctx context.Context, b physical.Backend) error {
	m, _, ok, err := readMarker(ctx, b)
	if err != nil || !ok {
		return err
	}
	return &UnfinishedError{Op: m.Op, Source: m.Source, Started: m.Started}
}

// InUseError means processes hold election keys in a store: servers run
// on it, or were killed so recently that their leases have not expired.
type InUseError struct{ Key string }

func (e *InUseError) Error() string {
	return fmt.Sprintf("a server is using this store (it holds the election key %q): stop every replica and run again; a killed replica's keys expire within its lease (10 s)", e.Key)
}

// CheckIdle returns an *InUseError if a process holds an election in b.
// Offline work (a migration, a restore) must not race a server.
func CheckIdle(ctx context.Context, b physical.Backend) error {
	held, err := b.Scan(ctx, physical.LeasePrefix, "", 1)
	if err != nil {
		return err
	}
	if len(held) > 0 {
		return &InUseError{Key: held[0].Key}
	}
	return nil
}
