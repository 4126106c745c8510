package kvclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
)

// ErrNoWatch means the server does not offer the vault watch (an older
// Coffer, Azure, a proxy that refuses the route): the caller watches with
// held reads instead.
var ErrNoWatch = errors.New("the server does not offer the vault watch")

// WatchStream is an open vault watch (docs/vault-watch.md): its records,
// one at a time.
type WatchStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// maxRecord bounds one line of a watch's answer; a record is far smaller.
const maxRecord = 64 << 10

// OpenWatch opens a vault watch of objects on the server whose authority
// host is apex (https://{suffix}, the vault tokens' audience), with a
// vault token. It returns once the server accepted the watch; the
// records follow on the stream. A server without the watch is
// ErrNoWatch; a refused token or a throttled request is an *Error, as
// for a read.
func (c *Client) OpenWatch(ctx context.Context, apex, token string, objects []vaultwatch.Object) (*WatchStream, error) {
	body, err := json.Marshal(vaultwatch.Request{Objects: objects})
	if err != nil {
		return nil, err
	}
	u := strings.TrimSuffix(apex, "/") + vaultwatch.Path + "?api-version=" + APIVersion
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", vaultwatch.ContentType)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &Error{Message: err.Error(), Err: err}
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case resp.StatusCode == http.StatusOK && mt == vaultwatch.ContentType:
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 512), maxRecord)
		return &WatchStream{body: resp.Body, sc: sc}, nil
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusBadRequest, resp.StatusCode == http.StatusNotFound,
		resp.StatusCode == http.StatusMethodNotAllowed, resp.StatusCode == http.StatusNotImplemented:
		// Not a watch: a server that routes the path elsewhere, or not at
		// all, or refuses the request's form (one that speaks another
		// version of it).
		resp.Body.Close()
		return nil, fmt.Errorf("%w (HTTP %d)", ErrNoWatch, resp.StatusCode)
	}
	defer resp.Body.Close()
	return nil, decode(resp, nil)
}

// Next returns the next record; io.EOF once the server ended the stream
// cleanly. A line that is not a record is an error: the stream is not
// to be trusted any further.
func (s *WatchStream) Next() (vaultwatch.Record, error) {
	for s.sc.Scan() {
		line := bytes.TrimSpace(s.sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec vaultwatch.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return vaultwatch.Record{}, &Error{Status: http.StatusOK, Code: "BadResponse", Message: "a watch record is not the expected JSON: " + err.Error()}
		}
		return rec, nil
	}
	if err := s.sc.Err(); err != nil {
		return vaultwatch.Record{}, &Error{Message: "reading the watch: " + err.Error(), Err: err}
	}
	return vaultwatch.Record{}, io.EOF
}

// Close ends the stream.
func (s *WatchStream) Close() error { return s.body.Close() }
