// Package audit keeps Coffer's audit log: one JSON line per request, never
// holding a value, hash-chained so that an edited, removed or reordered line
// is detected by Verify.
//
// Writing is asynchronous. A request records its line into a bounded
// in-memory buffer and goes on; a writer goroutine appends lines in batches
// and syncs them. If the sink fails (a full or read-only disk), requests are
// never held up: lines wait in the buffer, the writer retries, the
// coffer_audit_sink_failing gauge turns 1, and once the buffer is full
// further lines are dropped and counted in coffer_audit_dropped_total. When
// the sink works again, a "gap" line records how many were lost, so the
// chain stays verifiable and the loss stays visible. Reads staying up
// matters more, for a secrets service, than a complete log; alert on both
// metrics.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Entry is one audit line.
type Entry struct {
	Time      string  `json:"time"`
	RequestID string  `json:"requestId,omitempty"`
	Source    string  `json:"source,omitempty"`
	Tenant    string  `json:"tenant,omitempty"`
	Principal string  `json:"principal,omitempty"`
	AppID     string  `json:"appId,omitempty"`
	Vault     string  `json:"vault,omitempty"`
	Object    string  `json:"object,omitempty"`
	Version   string  `json:"version,omitempty"`
	Method    string  `json:"method,omitempty"`
	Operation string  `json:"operation"`
	Decision  string  `json:"decision,omitempty"`
	Status    int     `json:"status"`
	LatencyMs float64 `json:"latencyMs"`
	// Event marks lines the log writes about itself ("gap", "recovered").
	Event   string `json:"event,omitempty"`
	Dropped int64  `json:"dropped,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Prev    string `json:"prev"`
	Hash    string `json:"hash,omitempty"`

	// at is when Record was called, for a Time left empty: the writer
	// formats it into the line, so no string is made per request.
	at time.Time
}

// Info is what a request's handlers learn for its audit line. The server
// creates it; handlers fill it in.
type Info struct {
	Tenant, Principal, AppID string
	Vault, Object, Version   string
	Operation, Decision      string
}

type infoKey struct{}

// WithInfo returns ctx carrying info.
func WithInfo(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

// From returns the request's Info, or a throwaway one when the request is
// not audited (as in handler unit tests).
func From(ctx context.Context) *Info {
	if i, ok := ctx.Value(infoKey{}).(*Info); ok {
		return i
	}
	return &Info{}
}

// Metrics are the log's health metrics.
type Metrics struct {
	Lines   prometheus.Counter
	Dropped prometheus.Counter
	Failing prometheus.Gauge
	Pending prometheus.GaugeFunc
	// FileBytes is the size of the file lines go to now, and Rotations
	// counts the files finished for a new one, by cause: "size" (the log
	// rotated itself) or "rename" (the file was moved away).
	FileBytes prometheus.Gauge
	Rotations *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, pending func() float64) *Metrics {
	m := &Metrics{
		Lines:   prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_audit_lines_total", Help: "Audit lines written."}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_audit_dropped_total", Help: "Audit lines lost because the buffer was full while the sink failed."}),
		Failing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_audit_sink_failing", Help: "1 while the audit sink cannot be written; alert on it."}),
		Pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_audit_pending_lines", Help: "Audit lines waiting to be written."}, pending),
		FileBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_audit_file_bytes",
			Help: "Size of the audit log file written now; without rotation it grows until the disk is full."}),
		Rotations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_audit_rotations_total",
			Help: "Audit log files finished for a new one: cause size (the server rotated it) or rename (it was moved away)."}, []string{"cause"}),
	}
	if reg != nil {
		reg.MustRegister(m.Lines, m.Dropped, m.Failing, m.Pending, m.FileBytes, m.Rotations)
	}
	return m
}

// Sink is where lines go; *os.File is one.
type Sink interface {
	io.Writer
	Sync() error
}

// rewinder is a sink that can drop a partly written batch before a retry,
// so a retry never leaves half a line in the log (*os.File is one).
type rewinder interface {
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
}

// maxPendingBytes bounds the lines held while the sink fails; past it, new
// lines stay in the queue, and past that they are dropped and counted.
const maxPendingBytes = 16 << 20

// flushBytes is how much may gather before a flush comes ahead of the
// tick. FlushEvery, not this, bounds what a crash can lose; this only keeps
// one write and the memory it holds reasonable. At 64 KiB a busy server
// (24k reads/s, 560-byte lines) synced 200 times a second, and those fsyncs
// were 4% of its CPU; at 1 MiB it syncs on the tick.
const flushBytes = 1 << 20

// Options tune a Log.
type Options struct {
	// Buffer is how many lines may wait in memory (default 65536).
	Buffer int
	// FlushEvery bounds how long a line waits before it is synced (default 50ms).
	FlushEvery time.Duration
	Registerer prometheus.Registerer
	Now        func() time.Time
	// MaxBytes, when positive, makes a log that Open made rotate itself:
	// once its file holds MaxBytes, the file is renamed to RotatedName's
	// name and a new one continues the chain. Zero leaves rotation to the
	// operator, who renames the file.
	MaxBytes int64
	// MaxFiles, when positive, is how many of the files the log rotated
	// itself are kept; older ones are removed. Zero keeps them all.
	MaxFiles int
}

// rotatedLayout is the time in a rotated file's name: fixed width, so
// that the names sort as the files were rotated.
const rotatedLayout = "20060102T150405.000000000Z"

// RotatedName is the name a log rotating itself at t gives the file at
// path: path, a dash and the UTC time.
func RotatedName(path string, t time.Time) string {
	return path + "-" + t.UTC().Format(rotatedLayout)
}

// Rotated lists the files a log at path rotated itself, oldest first.
func Rotated(path string) ([]string, error) {
	dir := filepath.Dir(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if _, ok := rotatedAt(path, e.Name()); ok && e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out) // the names differ only in their fixed-width times
	return out, nil
}

// rotatedAt is when the file name (with or without its directory) was
// rotated from the log at path, if it is one of that log's rotations.
func rotatedAt(path, name string) (time.Time, bool) {
	stamp, ok := strings.CutPrefix(filepath.Base(name), filepath.Base(path)+"-")
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(rotatedLayout, stamp)
	return t, err == nil
}

// Log is an open audit log.
type Log struct {
	sink    Sink
	closer  io.Closer
	opt     Options
	metrics *Metrics

	// A queue under a mutex, not a channel: the writer takes the whole
	// queue on its tick, or when wakeAt lines wait, instead of being woken
	// for every line. Lines are synced on the tick anyway, so taking them
	// sooner would only cost wake-ups. At tens of thousands of lines a
	// second the per-line hand-off was a few percent of the server's CPU.
	mu     sync.Mutex
	queue  []Entry // recorded, not yet taken by the writer; at most Buffer
	closed bool
	wake   chan struct{} // capacity 1: wakeAt lines wait, or the log closed
	wakeAt int

	held    atomic.Int64 // lines the writer has taken and not yet written
	dropped atomic.Int64
	done    chan struct{}
	once    sync.Once
	prev    string

	// path is the file's name, for a log that Open made: the writer
	// follows it when the file is rotated. closer is that file, which
	// the writer replaces on a rotation (under mu, since Close reads it).
	path string
}

// Open opens (creating, mode 0600) the log file at path and continues its
// chain. A torn last line, from a crash during a write, is cut off and the
// cut is recorded in the chain.
//
// The log can be rotated by renaming the file (logrotate's default create
// mode): within a flush interval the writer finishes the old file, opens
// the one at path, and goes on with the same chain, after a "rotated"
// line. A file cut short under the writer (copytruncate) is written on at
// its new end, after a "truncated" line, never after a hole.
func Open(path string, opt Options) (*Log, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	prev, torn, err := lastHash(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	// An empty file after a rotation (the server stopped between the
	// rename and its first line, or an operator's rename while it was
	// down) continues the chain of the file rotated last.
	var continued string
	if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
		continued, prev = previousFile(path)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	l := newLog(f, prev, opt)
	l.closer, l.path = f, path
	go l.run()
	if torn > 0 {
		l.Record(Entry{Event: "recovered", Operation: "audit.truncate", Detail: fmt.Sprintf("cut a torn last line of %d bytes left by a crash", torn)})
	}
	if continued != "" {
		l.Record(Entry{Event: "rotated", Operation: "audit.rotate", Detail: "this file continues the chain of " + filepath.Base(continued)})
	}
	return l, nil
}

// previousFile finds the file rotated last beside path (one the log
// rotated itself, else logrotate's path.1) and its last line's hash. It
// changes nothing: a file it cannot read continues nothing.
func previousFile(path string) (name, hash string) {
	names, _ := Rotated(path)
	if len(names) > 0 {
		name = names[len(names)-1]
	} else {
		name = path + ".1"
	}
	f, err := os.Open(name)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	hash, _, err = tail(f)
	if err != nil || hash == "" {
		return "", ""
	}
	return name, hash
}

// openFile opens the log file for appending: writes land at its end
// even if another process has cut it short.
func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
}

// New starts a log over sink whose chain continues from prev.
func New(sink Sink, prev string, opt Options) *Log {
	l := newLog(sink, prev, opt)
	go l.run()
	return l
}

// newLog is New without starting the writer.
func newLog(sink Sink, prev string, opt Options) *Log {
	if opt.Buffer <= 0 {
		opt.Buffer = 1 << 16
	}
	if opt.FlushEvery <= 0 {
		opt.FlushEvery = 50 * time.Millisecond
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	// About flushBytes of lines, and never more than half the buffer, so
	// that a burst between ticks is taken before it is dropped.
	wakeAt := max(1, min(opt.Buffer/2, flushBytes/256))
	l := &Log{sink: sink, opt: opt, wake: make(chan struct{}, 1), wakeAt: wakeAt, done: make(chan struct{}), prev: prev}
	l.metrics = newMetrics(opt.Registerer, l.pending)
	return l
}

// Record queues e. It never blocks: if the buffer is full, or the log is
// closed, e is dropped and counted.
func (l *Log) Record(e Entry) {
	if e.Time == "" {
		e.at = l.opt.Now()
	}
	l.mu.Lock()
	if l.closed || len(l.queue) >= l.opt.Buffer {
		l.mu.Unlock()
		l.dropped.Add(1)
		l.metrics.Dropped.Inc()
		return
	}
	l.queue = append(l.queue, e)
	full := len(l.queue) == l.wakeAt
	l.mu.Unlock()
	if full {
		l.signal()
	}
}

// signal wakes the writer. A wake already pending is enough: the writer
// takes the whole queue when it runs.
func (l *Log) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// take moves the queue into spare's storage and returns it, with whether
// the log is closed (then nothing more will be queued).
func (l *Log) take(spare []Entry) ([]Entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	batch := l.queue
	l.queue = spare[:0]
	return batch, l.closed
}

// pending is how many lines wait to be written, for the gauge.
func (l *Log) pending() float64 {
	l.mu.Lock()
	n := len(l.queue)
	l.mu.Unlock()
	return float64(int64(n) + l.held.Load())
}

// Close writes what is queued (giving up after a few seconds if the sink
// fails) and closes the file.
func (l *Log) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.signal()
	})
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
	}
	l.mu.Lock()
	c := l.closer
	l.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// Metrics returns the log's metrics.
func (l *Log) Metrics() *Metrics { return l.metrics }

// seal appends e's line to dst: e encoded with its prev, then its hash over those
// exact bytes appended as the last field.
func seal(dst []byte, e Entry, prev string) ([]byte, string) {
	e.Prev, e.Hash = prev, ""
	start := len(dst)
	dst = appendEntry(dst, &e)
	sum := sha256.Sum256(dst[start:])
	// The line is the hashed body with the hash added as its last field.
	dst = append(dst[:len(dst)-1], `,"hash":"`...)
	at := len(dst)
	dst = hex.AppendEncode(dst, sum[:])
	h := string(dst[at:])
	return append(dst, "\"}\n"...), h
}

func (l *Log) run() {
	defer close(l.done)
	var pending []byte
	var lines int
	var offset int64 = -1 // where the last good batch ended, if the sink can rewind
	if rw, ok := l.sink.(rewinder); ok {
		if off, err := rw.Seek(0, io.SeekCurrent); err == nil {
			offset = off
			l.metrics.FileBytes.Set(float64(off))
		}
	}
	tick := time.NewTicker(l.opt.FlushEvery)
	defer tick.Stop()
	var retryAt time.Time
	flush := func() bool {
		if len(pending) == 0 {
			return true
		}
		_, err := l.sink.Write(pending)
		if err == nil {
			err = l.sink.Sync()
		}
		if err != nil {
			if rw, ok := l.sink.(rewinder); ok && offset >= 0 {
				// Best effort: drop the torn batch before the retry. Only
				// ever shorten: a file cut short meanwhile is not extended.
				if end, err := rw.Seek(0, io.SeekEnd); err == nil && end > offset {
					rw.Truncate(offset)
				}
				rw.Seek(offset, io.SeekStart)
			}
			retryAt = l.opt.Now().Add(time.Second)
			l.metrics.Failing.Set(1) // after retryAt: whoever sees it sees the retry scheduled
			return false
		}
		if offset >= 0 {
			offset += int64(len(pending))
			l.metrics.FileBytes.Set(float64(offset))
		}
		l.metrics.Lines.Add(float64(lines))
		l.metrics.Failing.Set(0)
		l.held.Add(-int64(lines))
		pending, lines = pending[:0], 0
		return true
	}
	add := func(e Entry) {
		pending, l.prev = seal(pending, e, l.prev) // in place: no line to allocate and copy
		lines++
		l.held.Add(1)
	}
	// reopen finishes the file f, which is no longer at path, and goes on
	// with the chain in the file at path, after a line saying why.
	reopen := func(f *os.File, cause, why string) bool {
		if !flush() {
			return false // the old file first; the next tick tries again
		}
		nf, err := openFile(l.path)
		if err != nil {
			return false // lines still reach the old file; the next tick tries again
		}
		if offset >= 0 {
			if offset, err = nf.Seek(0, io.SeekEnd); err != nil {
				offset = -1
			}
		}
		l.mu.Lock()
		l.sink, l.closer = nf, nf
		l.mu.Unlock()
		f.Close()
		l.metrics.Rotations.WithLabelValues(cause).Inc()
		l.metrics.FileBytes.Set(float64(max(offset, 0)))
		add(Entry{at: l.opt.Now(), Event: "rotated", Operation: "audit.rotate", Detail: why})
		return true
	}
	file := func() *os.File {
		l.mu.Lock()
		defer l.mu.Unlock()
		f, _ := l.closer.(*os.File)
		return f
	}
	// follow keeps the chain going when the file is rotated under the
	// writer: moved away (then the rest goes to the old file, and the
	// chain continues in the one now at path) or cut short (then lines go
	// on at its new end). It runs on the tick: two stat calls per tick.
	follow := func() {
		f := file()
		if f == nil {
			return
		}
		cur, err := f.Stat()
		if err != nil {
			return
		}
		named, err := os.Stat(l.path)
		switch {
		case err == nil && os.SameFile(cur, named):
			if offset >= 0 && cur.Size() < offset {
				add(Entry{at: l.opt.Now(), Event: "truncated", Operation: "audit.cut",
					Detail: fmt.Sprintf("another process cut this file from %d to %d bytes; the lines it held before the cut are gone", offset, cur.Size())})
				offset = cur.Size()
				l.metrics.FileBytes.Set(float64(offset))
			}
			return
		case err != nil && !errors.Is(err, os.ErrNotExist):
			return // cannot tell: go on where the lines go now
		}
		reopen(f, "rename", "the file before this one was moved away; this one continues its chain")
	}
	// rotate renames a file that reached MaxBytes, goes on in a new one,
	// and removes the rotated files past MaxFiles.
	rotate := func() {
		f := file()
		// The names must sort as the files were rotated, and none may
		// replace another, also when the clock stood still (as tests
		// inject) or stepped back: then go on a nanosecond after the
		// newest. Pruning removes the first names.
		at := l.opt.Now()
		if names, _ := Rotated(l.path); len(names) > 0 {
			if last, ok := rotatedAt(l.path, names[len(names)-1]); ok && !at.After(last) {
				at = last.Add(time.Nanosecond)
			}
		}
		name := RotatedName(l.path, at)
		size := offset
		if f == nil || os.Rename(l.path, name) != nil {
			return // the next flush tries again
		}
		// Should the new file fail to open, follow finishes on a later tick.
		reopen(f, "size", fmt.Sprintf("the file before this one reached %d bytes and is now %s; this one continues its chain", size, filepath.Base(name)))
		if l.opt.MaxFiles > 0 {
			names, _ := Rotated(l.path)
			for _, n := range names[:max(0, len(names)-l.opt.MaxFiles)] {
				os.Remove(n)
			}
		}
	}
	var spare []Entry
	for {
		ticked := false
		select {
		case <-l.wake:
		case <-tick.C:
			ticked = true
		}
		// While the sink fails and the held lines reach the bound, stop
		// taking lines: the queue fills and Record starts dropping. A
		// closed log takes what is left and flushes once, whatever the bound.
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if len(pending) < maxPendingBytes || closed {
			batch, closed := l.take(spare)
			if n := l.dropped.Swap(0); n > 0 {
				add(Entry{Time: l.opt.Now().UTC().Format(time.RFC3339Nano), Event: "gap", Operation: "audit.gap", Dropped: n,
					Detail: "lines were dropped while the audit sink failed"})
			}
			for i := range batch {
				add(batch[i])
			}
			clear(batch) // the entries' strings are garbage now
			spare = batch
			if closed {
				if l.path != "" {
					follow()
				}
				flush()
				return
			}
		}
		if ticked && l.path != "" && l.opt.Now().After(retryAt) {
			follow()
		}
		if (ticked || len(pending) >= flushBytes) && l.opt.Now().After(retryAt) {
			if flush() && l.opt.MaxBytes > 0 && l.path != "" && offset >= l.opt.MaxBytes {
				rotate()
			}
		}
	}
}

// lastHash returns the hash of the last complete line of f, and the length
// of a torn (unterminated) tail, which it truncates.
func lastHash(f *os.File) (string, int64, error) {
	hash, torn, err := tail(f)
	if err == nil && torn > 0 {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			err = f.Truncate(fi.Size() - torn)
		}
	}
	return hash, torn, err
}

// tail returns the hash of the last complete line of f, and the length of
// a torn (unterminated) tail after it.
func tail(f *os.File) (string, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := fi.Size()
	if size == 0 {
		return "", 0, nil
	}
	const window = 1 << 20
	start := max(0, size-window)
	buf := make([]byte, size-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return "", 0, err
	}
	var torn int64
	if buf[len(buf)-1] != '\n' {
		cut := bytes.LastIndexByte(buf, '\n') + 1
		torn = int64(len(buf) - cut)
		buf = buf[:cut]
	}
	buf = bytes.TrimRight(buf, "\n")
	if len(buf) == 0 {
		return "", torn, nil
	}
	last := buf[bytes.LastIndexByte(buf, '\n')+1:]
	var e Entry
	if err := json.Unmarshal(last, &e); err != nil || e.Hash == "" {
		return "", torn, fmt.Errorf("the last line is not an audit entry; refusing to continue a chain it cannot verify")
	}
	return e.Hash, torn, nil
}

// TamperError locates the first line that breaks the chain.
type TamperError struct {
	Line   int
	Reason string
}

func (e *TamperError) Error() string { return fmt.Sprintf("audit log line %d: %s", e.Line, e.Reason) }

// Chain is what Verify found in one file: how many lines, the link its
// first line makes to a file before it (empty for a log's first file),
// and the hash its last line gives to a file after it.
type Chain struct {
	Lines int
	First string
	Last  string
}

// Continues reports whether c's file follows directly after the file
// before, as the next file of a rotated log does.
func (c Chain) Continues(before Chain) bool {
	return c.Lines == 0 || before.Lines == 0 || c.First == before.Last
}

// Verify reads a whole log and checks every line's hash and link to the line
// before it.
func Verify(r io.Reader) (Chain, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var c Chain
	for sc.Scan() {
		c.Lines++
		n := c.Lines
		line := sc.Bytes()
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return c, &TamperError{Line: n, Reason: "not valid JSON: " + err.Error()}
		}
		suffix := []byte(`,"hash":"` + e.Hash + `"}`)
		if e.Hash == "" || !bytes.HasSuffix(line, suffix) {
			return c, &TamperError{Line: n, Reason: "the hash is missing or not the last field"}
		}
		body := append(bytes.Clone(line[:len(line)-len(suffix)]), '}')
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != e.Hash {
			return c, &TamperError{Line: n, Reason: "its content does not match its hash: the line was edited"}
		}
		if n == 1 {
			c.First = e.Prev
		} else if e.Prev != c.Last {
			return c, &TamperError{Line: n, Reason: "it does not link to the line before it: a line was removed, inserted or reordered"}
		}
		c.Last = e.Hash
	}
	return c, sc.Err()
}
