// Package httpjson writes JSON responses with an exact Content-Length, the
// way every Coffer HTTP API answers.
package httpjson

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/protocol/jsonenc"
)

// contentType is every JSON response's; shared, as a header value slice is
// only ever replaced, or copied by Clone.
var contentType = []string{"application/json; charset=utf-8"}

// Write sends v as a JSON response with the given status.
func Write(w http.ResponseWriter, status int, v any) {
	var body []byte
	var err error
	if a, ok := v.(jsonenc.Appender); ok {
		body = a.AppendJSON(make([]byte, 0, 512))
	} else {
		body, err = json.Marshal(v)
	}
	if err != nil {
		azerror.Write(w, http.StatusInternalServerError, "InternalServerError", "", "response encoding failed")
		return
	}
	h := w.Header()
	h["Content-Type"] = contentType
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	w.Write(body)
}
