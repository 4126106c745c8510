package kvclient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
)

// OpenWatch tells a server without the vault watch (so the caller falls
// back to held reads) from one that refuses the caller or fails for now
// (so it retries), and reads a watch's records to the end.
func TestOpenWatch(t *testing.T) {
	tests := map[string]struct {
		answer  answer
		noWatch bool
		status  int // of the *Error
		records []vaultwatch.Record
		badLine bool
	}{
		"a watch": {answer: answer{header: map[string]string{"Content-Type": vaultwatch.ContentType},
			body: `{"type":"changed","object":1,"etag":"\"v2\""}` + "\n\n" + `{"type":"ready","reauthorize":30}` + "\n"},
			records: []vaultwatch.Record{{Type: vaultwatch.Changed, Object: 1, ETag: `"v2"`}, {Type: vaultwatch.Ready, Reauthorize: 30}}},
		"a line that is not a record": {answer: answer{header: map[string]string{"Content-Type": vaultwatch.ContentType + "; charset=utf-8"}, body: "nope\n"}, badLine: true},
		"an older server's 404":       {answer: answer{status: 404, body: errorBody("NotFound", "")}, noWatch: true},
		"a 405":                       {answer: answer{status: 405}, noWatch: true},
		"a refused form":              {answer: answer{status: 400, body: errorBody("BadParameter", "")}, noWatch: true},
		"a 200 that is not a watch":   {answer: answer{header: map[string]string{"Content-Type": "application/json"}, body: `{}`}, noWatch: true},
		"a refused token":             {answer: answer{status: 401, body: errorBody("Unauthorized", "")}, status: 401},
		"throttled":                   {answer: answer{status: 429, header: map[string]string{"Retry-After": "3"}, body: errorBody("Throttled", "")}, status: 429},
		"unavailable":                 {answer: answer{status: 503, body: errorBody("ServiceUnavailable", "")}, status: 503},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			c, base, first := vault(t, test.answer)
			ws, err := c.OpenWatch(context.Background(), base, "tok", []vaultwatch.Object{{Vault: "demo", Kind: "secrets", Name: "a", ETag: `"v1"`}})
			if r := first(); r.Method != http.MethodPost || r.URL.Path != vaultwatch.Path || r.Header.Get("Authorization") != "Bearer tok" {
				t.Fatalf("sent %s %s with %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
			}
			var ke *Error
			switch {
			case test.noWatch:
				if !errors.Is(err, ErrNoWatch) {
					t.Fatalf("%v, want ErrNoWatch", err)
				}
				return
			case test.status != 0:
				if !errors.As(err, &ke) || ke.Status != test.status || errors.Is(err, ErrNoWatch) {
					t.Fatalf("%v, want an *Error with status %d", err, test.status)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			defer ws.Close()
			var got []vaultwatch.Record
			for {
				rec, err := ws.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					if !test.badLine || !errors.As(err, &ke) || ke.Code != "BadResponse" {
						t.Fatalf("Next: %v", err)
					}
					return
				}
				got = append(got, rec)
			}
			if test.badLine || len(got) != len(test.records) {
				t.Fatalf("records %+v, want %+v", got, test.records)
			}
			for i := range got {
				if got[i] != test.records[i] {
					t.Fatalf("record %d: %+v, want %+v", i, got[i], test.records[i])
				}
			}
		})
	}
}
