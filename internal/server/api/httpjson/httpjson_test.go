package httpjson

import (
	"crypto/tls"
	"crypto/x509"
	"io"
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

// Bodies encoded into pooled buffers come out whole and exact, however
// the writes interleave: a buffer is reused only after the response that
// used it has been written.
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
			}
		}()
	}
	wg.Wait()
}

// Every response reaches the client with an exact Content-Length, never
// chunked, over HTTP/1.1 and HTTP/2, on both sides of the size up to which
// net/http sets the header itself: a recorder would not show what the
// server sends.
func TestWriteSendsContentLength(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		Write(w, http.StatusOK, appender(strings.Repeat("x", n)))
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	for _, proto := range []string{"HTTP/1.1", "HTTP/2.0"} {
		roots := x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, Protocols: new(http.Protocols)}
		tr.Protocols.SetHTTP1(proto == "HTTP/1.1")
		tr.Protocols.SetHTTP2(proto == "HTTP/2.0")
		c := &http.Client{Transport: tr}
		for _, n := range []int{0, 1, autoLength - 3, autoLength - 2, autoLength - 1, autoLength, 4094, 4095, 4096, 25_000} {
			resp, err := c.Get(srv.URL + "/?n=" + strconv.Itoa(n))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			want := n + 2 // the quotes
			if resp.Proto != proto || len(body) != want || resp.ContentLength != int64(want) || len(resp.TransferEncoding) > 0 {
				t.Errorf("%s, %d-byte body: got %s, %d bytes, Content-Length %d, Transfer-Encoding %v", proto, want, resp.Proto, len(body), resp.ContentLength, resp.TransferEncoding)
			}
		}
		tr.CloseIdleConnections()
	}
}

// Values without their own encoder go through encoding/json.
func TestWriteMarshals(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, http.StatusCreated, map[string]int{"n": 1})
	if rec.Code != http.StatusCreated || rec.Body.String() != `{"n":1}` || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("%d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}
