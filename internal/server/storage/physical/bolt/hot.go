package bolt

import (
	"sync"
	"sync/atomic"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// maxHotBytes bounds the values hotReads holds (keys and values).
const maxHotBytes = 16 << 20

// hotReads holds the values of keys read recently, so that a hot read
// costs a map lookup rather than a read transaction: the object cache
// checks a hot object's head in the store on every request, and a bbolt
// read transaction was a tenth of those requests' allocations.
//
// It can hold an entry safely because this process is the store file's only
// writer (bbolt's file lock) and every write goes through Apply, which
// takes the keys it writes out before it commits. A value read from the
// file is held only if no write was in flight at any moment of the read:
// writes raise gen as they start and as they end, and none may be held
// while writing > 0. So no read that starts after a write returned can
// find the value that write replaced, and no read can find a value older
// than one another read already returned.
type hotReads struct {
	m     sync.Map // key -> []byte, never written once stored
	bytes atomic.Int64

	mu      sync.Mutex // orders a store against a write's start
	gen     atomic.Uint64
	writing int
}

// load returns the held value of key; the slice must not be written.
func (h *hotReads) load(key string) ([]byte, bool) {
	v, ok := h.m.Load(key)
	if !ok {
		return nil, false
	}
	return v.([]byte), true
}

// begin is called before a read of the file; remember takes what it
// returns.
func (h *hotReads) begin() uint64 { return h.gen.Load() }

// remember holds value, read from the file for key since begin returned
// gen, unless a write started or ran meanwhile. value must not be written
// afterwards.
func (h *hotReads) remember(gen uint64, key string, value []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.writing > 0 || h.gen.Load() != gen {
		return
	}
	if h.bytes.Add(int64(len(key)+len(value))) > maxHotBytes {
		// Rare: start over rather than track recency on every read.
		h.m.Clear()
		h.bytes.Store(int64(len(key) + len(value)))
	}
	h.m.Store(key, value)
}

// writeStarts takes the keys ops write out before the write commits.
func (h *hotReads) writeStarts(ops []physical.Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writing++
	h.gen.Add(1)
	for _, o := range ops {
		h.m.Delete(o.Key)
	}
}

// writeEnds is called once the write committed or failed.
func (h *hotReads) writeEnds() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writing--
	h.gen.Add(1)
}

// clear drops everything held.
func (h *hotReads) clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m.Clear()
	h.bytes.Store(0)
	h.gen.Add(1)
}
