package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// A snapshot file is a header block and a body:
//
//	[4096 bytes: "COFFER SNAPSHOT\n", the header as JSON, "\n", spaces]
//	[every entry in key order, each as Encode writes it]
//
// The header says how many entries and bytes follow and their SHA-256, so
// a truncated or altered file is refused before anything is written. Taken
// with the root key, the header also carries a MAC under a key derived from
// it, so that nobody without the root key can make a file that passes: the
// values are sealed blobs already, but a digest alone would let someone
// drop entries or put back older blobs and fix up the digest.
const (
	snapshotMagic  = "COFFER SNAPSHOT\n"
	headerBlock    = 4096
	SnapshotFormat = 1
	// maxKeyLen and maxValueLen bound what a damaged length can make a
	// reader allocate.
	maxKeyLen   = 64 << 10
	maxValueLen = 64 << 20
)

// ErrCorruptSnapshot is matched by every error about a damaged file.
var ErrCorruptSnapshot = errors.New("snapshot is damaged")

// CorruptSnapshotError says what is wrong with a snapshot file.
type CorruptSnapshotError struct {
	Path, Reason string
}

func (e *CorruptSnapshotError) Error() string {
	return fmt.Sprintf("snapshot %s is damaged, truncated or not a Coffer snapshot: %s; nothing was restored from it", e.Path, e.Reason)
}

// Is makes errors.Is(err, ErrCorruptSnapshot) true.
func (e *CorruptSnapshotError) Is(target error) bool { return target == ErrCorruptSnapshot }

// Header describes a snapshot.
type Header struct {
	Format int `json:"format"`
	// Engine and Source say what it was taken from ("etcd",
	// "etcd:https://etcd-0:2379 prefix /coffer/").
	Engine string `json:"engine"`
	Source string `json:"source"`
	// RootKeyID is the root key that wraps the keyring in it.
	RootKeyID string    `json:"rootKeyId"`
	Entries   int       `json:"entries"`
	Bytes     int64     `json:"bytes"`  // of the entries' keys and values
	Body      int64     `json:"body"`   // of the encoded body
	Digest    string    `json:"digest"` // sha256 of the body
	Created   time.Time `json:"created"`
	// MAC is an HMAC of the header under a key derived from the root key,
	// if it was taken with it.
	MAC string `json:"mac,omitempty"`
}

// Summary is what the header says of the entries.
func (h Header) Summary() Summary {
	return Summary{Entries: h.Entries, Bytes: h.Bytes, Digest: h.Digest, RootKeyID: h.RootKeyID}
}

// mac computes the header's MAC under root.
func (h Header) mac(root rootkey.Key) string {
	h.MAC = ""
	body, _ := json.Marshal(h)
	k := hmac.New(sha256.New, root.Bytes())
	k.Write([]byte("coffer snapshot mac v1"))
	m := hmac.New(sha256.New, k.Sum(nil))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// SaveOptions describe what a snapshot is taken from.
type SaveOptions struct {
	Engine, Source string
	// Root, if set, must be the store's root key: the header then carries
	// a MAC under it.
	Root *rootkey.Key
	Now  func() time.Time
}

// ExistsError means the snapshot file already exists.
type ExistsError struct{ Path string }

func (e *ExistsError) Error() string {
	return fmt.Sprintf("%s exists: a snapshot never replaces a file; choose another name or remove it", e.Path)
}

// Save writes a snapshot of b, as it is at one point in time, to path. The
// file appears under its name only once it is whole and synced; an
// existing file is never replaced.
func Save(ctx context.Context, b physical.Backend, path string, o SaveOptions) (Header, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if _, err := os.Lstat(path); err == nil {
		return Header{}, &ExistsError{Path: path}
	}
	if err := RefuseUnfinished(ctx, b); err != nil {
		return Header{}, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return Header{}, fmt.Errorf("create the snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return Header{}, err
	}
	if _, err := tmp.Write(make([]byte, headerBlock)); err != nil {
		return Header{}, fmt.Errorf("write the snapshot: %w", err)
	}
	bw := bufio.NewWriterSize(tmp, 1<<20)
	d := newDigester()
	var n int64
	var buf []byte
	err = (Store{B: b}).Walk(ctx, func(e physical.Entry) error {
		if err := d.add(e); err != nil {
			return err
		}
		buf = Encode(buf[:0], e)
		n += int64(len(buf))
		_, err := bw.Write(buf)
		return err
	})
	if err != nil {
		return Header{}, fmt.Errorf("read the store: %w", err)
	}
	sum := d.summary()
	switch {
	case sum.Entries == 0:
		return Header{}, ErrEmptySource
	case sum.RootKeyID == "":
		return Header{}, ErrNoKeyring
	case o.Root != nil && o.Root.ID() != sum.RootKeyID:
		return Header{}, &barrier.RootKeyMismatchError{Given: o.Root.ID(), Sealed: sum.RootKeyID}
	}
	h := Header{Format: SnapshotFormat, Engine: o.Engine, Source: o.Source, RootKeyID: sum.RootKeyID, Entries: sum.Entries, Bytes: sum.Bytes,
		Body: n, Digest: sum.Digest, Created: o.Now().UTC().Truncate(time.Second)}
	if o.Root != nil {
		h.MAC = h.mac(*o.Root)
	}
	block, err := encodeHeader(h)
	if err != nil {
		return Header{}, err
	}
	if err := bw.Flush(); err != nil {
		return Header{}, fmt.Errorf("write the snapshot: %w", err)
	}
	if _, err := tmp.WriteAt(block, 0); err != nil {
		return Header{}, fmt.Errorf("write the snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return Header{}, fmt.Errorf("sync the snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Header{}, fmt.Errorf("write the snapshot: %w", err)
	}
	// A link, unlike a rename, fails if the name was taken meanwhile.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Header{}, &ExistsError{Path: path}
		}
		return Header{}, fmt.Errorf("write the snapshot: %w", err)
	}
	return h, syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func encodeHeader(h Header) ([]byte, error) {
	js, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	block := append([]byte(snapshotMagic), js...)
	block = append(block, '\n')
	if len(block) > headerBlock {
		return nil, fmt.Errorf("snapshot header is %d bytes, over its %d-byte block", len(block), headerBlock)
	}
	return append(block, bytes.Repeat([]byte(" "), headerBlock-len(block))...), nil
}

// Snapshot is an opened snapshot file: a Source for Copy.
type Snapshot struct {
	Header Header
	path   string
}

// OpenSnapshot reads a snapshot's header. The body is checked by
// Summarize, and again by Walk as it reads.
func OpenSnapshot(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the snapshot: %w", err)
	}
	defer f.Close()
	block := make([]byte, headerBlock)
	if _, err := io.ReadFull(f, block); err != nil {
		return nil, &CorruptSnapshotError{Path: path, Reason: "it is shorter than its header block"}
	}
	if !bytes.HasPrefix(block, []byte(snapshotMagic)) {
		return nil, &CorruptSnapshotError{Path: path, Reason: "it does not start with " + fmt.Sprintf("%q", snapshotMagic)}
	}
	js, _, _ := bytes.Cut(block[len(snapshotMagic):], []byte("\n"))
	var h Header
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, &CorruptSnapshotError{Path: path, Reason: "its header does not parse: " + err.Error()}
	}
	if h.Format != SnapshotFormat {
		return nil, fmt.Errorf("snapshot %s has format %d; this coffer reads format %d: restore it with the release that wrote it, or a newer one", path, h.Format, SnapshotFormat)
	}
	if h.Entries <= 0 || h.Body <= 0 || h.RootKeyID == "" || len(h.Digest) != len("sha256:")+64 {
		return nil, &CorruptSnapshotError{Path: path, Reason: "its header is incomplete"}
	}
	return &Snapshot{Header: h, path: path}, nil
}

// Name implements Source: a snapshot is named by its content, so a
// restore resumes from the same snapshot wherever the file now lies.
func (s *Snapshot) Name() string { return "snapshot " + s.Header.Digest }

// Path is the snapshot's file.
func (s *Snapshot) Path() string { return s.path }

// Authentication says what Authenticate could establish.
type Authentication int

// Authentication results.
const (
	// Authenticated: the header's MAC matches under the root key.
	Authenticated Authentication = iota
	// Unauthenticated: the snapshot was taken without the root key, so
	// only its digest vouches for it.
	Unauthenticated
)

// Authenticate checks that root is the snapshot's root key and that its
// MAC, if it has one, matches.
func (s *Snapshot) Authenticate(root rootkey.Key) (Authentication, error) {
	if root.ID() != s.Header.RootKeyID {
		return 0, &barrier.RootKeyMismatchError{Given: root.ID(), Sealed: s.Header.RootKeyID}
	}
	if s.Header.MAC == "" {
		return Unauthenticated, nil
	}
	if !hmac.Equal([]byte(s.Header.mac(root)), []byte(s.Header.MAC)) {
		return 0, &CorruptSnapshotError{Path: s.path, Reason: "its header's MAC does not match under the root key: the file was altered"}
	}
	return Authenticated, nil
}

// Summarize implements Source: it reads the whole body and checks it
// against the header.
func (s *Snapshot) Summarize(ctx context.Context) (Summary, error) {
	if err := s.Walk(ctx, func(physical.Entry) error { return nil }); err != nil {
		return Summary{}, err
	}
	return s.Header.Summary(), nil
}

// Walk implements Source. It checks the body as it reads: an error comes
// after fn has seen entries when the damage is further on, so callers
// read the body through (Summarize) before they act on it.
func (s *Snapshot) Walk(ctx context.Context, fn func(physical.Entry) error) error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("open the snapshot: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(headerBlock, io.SeekStart); err != nil {
		return err
	}
	corrupt := func(format string, args ...any) error {
		return &CorruptSnapshotError{Path: s.path, Reason: fmt.Sprintf(format, args...)}
	}
	r := bufio.NewReaderSize(io.LimitReader(f, s.Header.Body), 1<<20)
	d := newDigester()
	for i := 0; i < s.Header.Entries; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		key, err := readField(r, maxKeyLen)
		if err != nil {
			return corrupt("entry %d of %d: its key: %v", i+1, s.Header.Entries, err)
		}
		value, err := readField(r, maxValueLen)
		if err != nil {
			return corrupt("entry %d of %d (%q): its value: %v", i+1, s.Header.Entries, key, err)
		}
		e := physical.Entry{Key: string(key), Value: value}
		if e.Key == "" || physical.IsLease(e.Key) || e.Key == MarkerKey {
			return corrupt("entry %d has the key %q, which no snapshot holds", i+1, e.Key)
		}
		if err := d.add(e); err != nil {
			return corrupt("%v", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return corrupt("its body is longer than its header says")
	}
	if rest, _ := io.Copy(io.Discard, f); rest > 0 {
		return corrupt("%d bytes follow its body", rest)
	}
	sum := d.summary()
	if sum.Digest != s.Header.Digest {
		return corrupt("its body's digest is %s, but its header says %s", sum.Digest, s.Header.Digest)
	}
	if sum.Bytes != s.Header.Bytes || sum.RootKeyID != s.Header.RootKeyID {
		return corrupt("its entries do not match its header (%d bytes under root key %q; the header says %d under %q)", sum.Bytes, sum.RootKeyID, s.Header.Bytes, s.Header.RootKeyID)
	}
	return nil
}

// readField reads a uvarint length and that many bytes.
func readField(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err == io.EOF {
		return nil, errors.New("the body ends early")
	}
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("its length %d is over the %d-byte bound", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, errors.New("the body ends early")
	}
	return b, nil
}
