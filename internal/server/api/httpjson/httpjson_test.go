package httpjson

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cofferhq/coffer/internal/protocol/jsonenc"
)

type appender string

func (a appender) AppendJSON(b []byte) []byte { return jsonenc.AppendString(b, string(a)) }

// Bodies encoded into pooled buffers come out whole and exact, with their
// own Content-Length, however the writes interleave: a buffer is reused
// only after the response that used it has been written.
func TestWriteReusesNoLiveBuffer(t *testing.T) {
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				v := strings.Repeat(string(rune('a'+w)), (i*37+w)%3000)
				rec := httptest.NewRecorder()
				Write(rec, http.StatusOK, appender(v))
				want := `"` + v + `"`
				if got := rec.Body.String(); got != want {
					t.Errorf("body %.40q..., want %.40q...", got, want)
					return
				}
				if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(want)) {
					t.Errorf("Content-Length %s for %d bytes", cl, len(want))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Values without their own encoder go through encoding/json.
func TestWriteMarshals(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, http.StatusCreated, map[string]int{"n": 1})
	if rec.Code != http.StatusCreated || rec.Body.String() != `{"n":1}` || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("%d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}
