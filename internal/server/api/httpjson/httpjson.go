// Package httpjson writes JSON responses with an exact Content-Length, the
// way every Coffer HTTP API answers.
package httpjson

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/protocol/jsonenc"
)

// contentType is every JSON response's; shared, as a header value slice is
// only ever replaced, or copied by Clone.
var contentType = []string{"application/json; charset=utf-8"}

// bodies holds the buffers Appender responses are encoded into: one
// allocation fewer on every read. A ResponseWriter never keeps what it is
// given to Write, so a buffer is free again once Write returns.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooled is the largest buffer put back: a rare large list should not
// be held for the process's life.
const maxPooled = 64 << 10

// Write sends v as a JSON response with the given status.
func Write(w http.ResponseWriter, status int, v any) {
	if a, ok := v.(jsonenc.Appender); ok {
		bp := bodies.Get().(*[]byte)
		body := a.AppendJSON((*bp)[:0])
		send(w, status, body)
		if cap(body) <= maxPooled {
			// Cleared: the body may hold a secret value, which should not
			// outlive its response in a pooled buffer.
			clear(body)
			*bp = body[:0]
			bodies.Put(bp)
		}
		return
	}
	body, err := json.Marshal(v)
	if err != nil {
		azerror.Write(w, http.StatusInternalServerError, "InternalServerError", "", "response encoding failed")
		return
	}
	send(w, status, body)
}

// autoLength is the largest body net/http gives an exact Content-Length
// of its own: one still buffered when the handler returns, which is up to
// 2 KiB on HTTP/1.1 (4 KiB on HTTP/2). Below it, setting the header
// ourselves cost every read an allocation, a header entry that
// WriteHeader clones, and a parse of it back.
const autoLength = 2048

func send(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = contentType
	if len(body) > autoLength {
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	w.WriteHeader(status)
	w.Write(body)
}
