package kvhttp

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/cert"
	"github.com/cofferhq/coffer/internal/server/keyvault/key"
	"github.com/cofferhq/coffer/internal/server/keyvault/object"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
)

const pageSize = 25

// base is what the routes of every object kind share: authorization, the
// operation adapter, paging, and the attribute shape.
type base struct {
	h    *Handler
	kind access.Kind
}

type attributesOut struct {
	Enabled         bool   `json:"enabled"`
	NotBefore       *int64 `json:"nbf,omitempty"`
	Expires         *int64 `json:"exp,omitempty"`
	Created         int64  `json:"created"`
	Updated         int64  `json:"updated"`
	RecoveryLevel   string `json:"recoveryLevel"`
	RecoverableDays int    `json:"recoverableDays"`
}

func (b base) attributes(c *call, a object.Attributes) attributesOut {
	return attributesOut{
		Enabled: a.Enabled, NotBefore: a.NotBefore, Expires: a.Expires, Created: a.Created, Updated: a.Updated,
		RecoveryLevel: c.vault.RecoveryLevel(), RecoverableDays: c.vault.RetentionDays,
	}
}

type attributesIn struct {
	Enabled   *bool  `json:"enabled"`
	NotBefore *int64 `json:"nbf"`
	Expires   *int64 `json:"exp"`
}

// id is an object's identifier: {vault}/{collection}/{name}[/{version}].
func (b base) id(c *call, collection, name, version string) string {
	// Built in one buffer, not one string per part: every object's
	// response has an id, and often a kid or a sid too.
	var buf [192]byte
	id := b.h.ep.AppendVaultBase(buf[:0], c.vault.Name)
	id = append(append(append(append(id, '/'), collection...), '/'), name...)
	if version != "" {
		id = append(append(id, '/'), version...)
	}
	return string(id)
}

// deletedInfo is what a deleted object adds to its shape.
type deletedInfo struct {
	RecoveryID         string `json:"recoveryId,omitempty"`
	DeletedDate        int64  `json:"deletedDate,omitempty"`
	ScheduledPurgeDate int64  `json:"scheduledPurgeDate,omitempty"`
}

func (b base) deleted(c *call, collection, name string, deletedDate, purge int64) deletedInfo {
	return deletedInfo{RecoveryID: b.h.ep.VaultBase(c.vault.Name) + "/deleted" + collection + "/" + name, DeletedDate: deletedDate, ScheduledPurgeDate: purge}
}

// authorize checks that the caller may perform op on object ("" for
// vault-wide operations) and, if so, returns the request's call.
func (b base) authorize(w http.ResponseWriter, r *http.Request, op access.Operation, object string) (*call, bool) {
	c := callOf(r)
	c.audit.Operation = op.DataAction
	if object != "" {
		c.audit.Object = string(op.Kind) + "/" + object
		c.audit.Version = r.PathValue("version")
	}
	if err := b.h.access.Data(c.vault, c.principal, op, object); err != nil {
		c.audit.Decision = "deny"
		b.h.fail(w, r, b.kind, err)
		return nil, false
	}
	c.audit.Decision = "allow"
	return c, true
}

// serve runs one operation on the object named in the path: it checks the
// caller may perform op, runs fn, and writes its result (or, for a nil
// result, 204 No Content).
func (b base) serve(w http.ResponseWriter, r *http.Request, op access.Operation, fn func(c *call) (any, error)) {
	b.serveOn(w, r, op, r.PathValue("name"), fn)
}

// reply is a result sent with a status other than 200.
type reply struct {
	status int
	body   any
}

// serveOn is serve with the object named explicitly ("" for the vault).
// A conditional read that asks to wait (see held) and would be answered
// 304 is held until its object changes or the wait ends. Each time, it is
// then authenticated, authorized and read again from the start, against
// the vault as it is now, and answered by that last pass: a caller whose
// access or token ended while it waited is refused, never served.
func (b base) serveOn(w http.ResponseWriter, r *http.Request, op access.Operation, object string, fn func(c *call) (any, error)) {
	wait := b.held(r, object)
	if wait > 0 && !b.h.holdSlot() {
		wait = 0 // at the cap: answered at once, and said to be held (see MaxHeld)
		w.Header().Set("Preference-Applied", "wait=0")
	} else if wait > 0 {
		defer b.h.releaseSlot()
	}
	var deadline time.Time // read the clock only for a held read: it costs on every request
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	for pass := 0; ; pass++ {
		if pass > 0 {
			if err := b.h.recheck(r); err != nil {
				delete(w.Header(), "Etag")
				b.h.fail(w, r, b.kind, err)
				return
			}
		}
		holding := wait > 0 && time.Now().Before(deadline) && !b.h.feed.Closed()
		changed, release := (<-chan struct{})(nil), func() {}
		if holding {
			// Watch before reading: a change between the read and the
			// wait must still wake it.
			changed, release = b.h.feed.Watch(changes.Subject(callOf(r).vault.Name, string(b.kind), object))
		}
		delete(w.Header(), "Etag") // each pass sets its own; Etag is ETag's canonical key
		c, ok := b.authorize(w, r, op, object)
		if !ok {
			release()
			return
		}
		out, err := fn(c)
		rep, isReply := out.(reply)
		notModified := err == nil && isReply && rep.status == http.StatusNotModified
		if notModified && holding {
			waitFor(r.Context(), changed, time.Until(deadline))
			release()
			if r.Context().Err() != nil {
				return // the caller is gone
			}
			continue // changed, or the wait is over: answer from a fresh pass
		}
		release()
		if notModified && wait > 0 {
			w.Header().Set("Preference-Applied", "wait="+strconv.Itoa(int(wait/time.Second)))
		}
		switch {
		case err != nil:
			b.h.fail(w, r, b.kind, err)
		case out == nil:
			w.WriteHeader(http.StatusNoContent)
		case notModified:
			w.WriteHeader(http.StatusNotModified)
		case isReply:
			httpjson.Write(w, rep.status, rep.body)
		default:
			httpjson.Write(w, http.StatusOK, out)
		}
		return
	}
}

// maxWait bounds how long a read is held: well inside the server's write
// timeout, and short enough that a revoked caller's held read ends soon
// (it is re-authorized on every wake and at the end).
const maxWait = 30 * time.Second

// MaxHeld bounds the reads held at once, server-wide: each holds a
// goroutine and a stream. Past it, reads are answered at once with
// "Preference-Applied: wait=0", so clients keep asking at their own pace
// rather than taking the vault for one that never holds.
const MaxHeld = 20000

// held returns how long a read may be held: see WaitPreference; only a
// read of one object, on a server with a change feed, is held.
func (b base) held(r *http.Request, object string) time.Duration {
	if b.h.feed == nil || object == "" {
		return 0
	}
	return WaitPreference(r)
}

// header is r's first value of key, which must be in canonical form: unlike
// Header.Get it does not canonicalize key again on every request. net/http
// canonicalizes the keys it reads.
func header(r *http.Request, key string) string {
	if v := r.Header[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// WaitPreference returns how long a request asks to be held: the wait=N
// (seconds) of an RFC 7240 Prefer header, at most maxWait, on a
// conditional GET. Anything else, including a malformed preference, which
// RFC 7240 says to ignore, is not held. Azure's clients never send it; it
// is how Coffer's provider learns of a change as it happens.
func WaitPreference(r *http.Request) time.Duration {
	if r.Method != http.MethodGet || header(r, "If-None-Match") == "" {
		return 0
	}
	for _, pref := range strings.Split(strings.Join(r.Header.Values("Prefer"), ","), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(pref), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "wait") {
			continue
		}
		v, _, _ = strings.Cut(v, ";") // preference parameters are ignored
		n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(v), `"`))
		if err != nil || n <= 0 {
			return 0
		}
		return min(time.Duration(n)*time.Second, maxWait)
	}
	return 0
}

// waitFor waits up to d for changed to close or ctx to end, and reports
// whether changed closed.
func waitFor(ctx context.Context, changed <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-changed:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// conditional sets the ETag of a version read and, when the caller already
// holds that exact state (If-None-Match), answers 304 instead of the body.
// It runs after authorization and after the read's own checks (enabled,
// validity), so a 304 grants nothing a 200 would not. The tag comes from
// etagOf. This is Coffer's extension for nodes that cache values: Azure
// clients never send If-None-Match.
func conditional(w http.ResponseWriter, r *http.Request, etag string, body any) any {
	w.Header()["Etag"] = []string{etag} // Set would canonicalize "ETag" on every read
	if inm := header(r, "If-None-Match"); inm != "" {
		for t := range strings.SplitSeq(inm, ",") {
			if t = strings.TrimSpace(t); t == etag || t == "W/"+etag {
				return reply{status: http.StatusNotModified}
			}
		}
	}
	return body
}

// etagOf is the ETag of a version read: the version plus a digest of the
// version's mutable, non-secret state (attributes, content type, tags, the
// representation asked for), so any update changes it, however soon; the
// value never enters the digest, so the tag reveals nothing about it. The
// reads and the vault watch compute it through the functions below, one
// per kind, so both always agree.
func etagOf(version string, state ...any) string {
	// One buffer, hashed once: a hash.Hash and its many small writes cost
	// more than the digest itself on this path, which every read takes.
	var buf [512]byte
	b := buf[:0]
	for _, part := range state {
		b = appendState(b, part)
	}
	sum := sha256.Sum256(b)
	// Built in the state's buffer, which is free again: one allocation,
	// the string, where a concatenation of the hex made two.
	b = append(append(append(b[:0], '"'), version...), '.')
	b = hex.AppendEncode(b, sum[:8])
	return string(append(b, '"'))
}

func secretETag(sec secret.Secret, outContentType string) string {
	return etagOf(sec.Version, sec.Attributes, sec.ContentType, sec.Tags, outContentType)
}

func keyETag(k key.Key) string { return etagOf(k.Version, k.Attributes, k.KeyOps, k.Tags) }

func certETag(ct cert.Certificate) string {
	return etagOf(ct.Version, ct.Attributes, ct.Tags, ct.Policy)
}

// appendState appends a version's mutable state to b, by value and in a
// fixed order, with every variable-length part prefixed by its length so
// that two different states never encode alike. The common types avoid
// reflection (this runs on every read); others are encoded as their JSON.
func appendState(b []byte, v any) []byte {
	num := func(b []byte, n int64) []byte { return binary.BigEndian.AppendUint64(b, uint64(n)) }
	str := func(b []byte, s string) []byte { return append(num(b, int64(len(s))), s...) }
	opt := func(b []byte, p *int64) []byte {
		if p == nil {
			return append(b, 0)
		}
		return num(append(b, 1), *p)
	}
	switch v := v.(type) {
	case object.Attributes:
		b = append(b, 'a')
		if v.Enabled {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = opt(b, v.NotBefore)
		b = opt(b, v.Expires)
		b = num(b, v.Created)
		b = num(b, v.Updated)
	case string:
		b = str(append(b, 's'), v)
	case []string:
		b = num(append(b, 'l'), int64(len(v)))
		for _, x := range v {
			b = str(b, x)
		}
	case map[string]string:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = num(append(b, 'm'), int64(len(keys)))
		for _, k := range keys {
			b = str(str(b, k), v[k])
		}
	default:
		j, _ := json.Marshal(v) // JSON, not %v: pointers must hash by value
		b = str(append(b, 'j'), string(j))
	}
	return b
}

type listOut[T any] struct {
	Value    []T     `json:"value"`
	NextLink *string `json:"nextLink"`
}

// listPage serves one page of a list operation; fetch returns the page in
// wire form and the cursor of the next page. Listing one object's versions
// is authorized on that object (the path's name), other lists on the vault.
func listPage[T any](b base, w http.ResponseWriter, r *http.Request, op access.Operation, fetch func(c *call, after string, limit int) ([]T, string, error)) {
	b.serveOn(w, r, op, r.PathValue("name"), func(c *call) (any, error) {
		after, limit, err := page(r)
		if err != nil {
			return nil, err
		}
		items, next, err := fetch(c, after, limit)
		if err != nil {
			return nil, err
		}
		if items == nil {
			items = []T{}
		}
		return listOut[T]{Value: items, NextLink: b.nextLink(c, r, next)}, nil
	})
}

// bodyError is a request body that is not JSON of the operation's shape.
// It marks the one place a JSON error is the client's: the same errors
// from decoding a stored record are the server's.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// readJSON reads a body of at most limit bytes into v.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return object.Invalidf("The request body is empty; this operation needs a JSON body.")
	}
	err = json.Unmarshal(body, v)
	var se *json.SyntaxError
	var ute *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &se) && !errors.As(err, &ute) {
		// A field's own decoder refused its value, such as bad base64.
		return object.Invalidf("The request body does not parse: %v.", err)
	}
	if err != nil {
		return &bodyError{err}
	}
	return nil
}

// page reads $skiptoken and maxresults.
func page(r *http.Request) (after string, limit int, err error) {
	q := r.URL.Query()
	limit = pageSize
	if m := q.Get("maxresults"); m != "" {
		n, perr := strconv.Atoi(m)
		if perr != nil || n < 1 || n > pageSize {
			return "", 0, object.Invalidf("maxresults must be an integer from 1 to %d, got %q.", pageSize, m)
		}
		limit = n
	}
	if t := q.Get("$skiptoken"); t != "" {
		b, derr := base64.RawURLEncoding.DecodeString(t)
		if derr != nil {
			return "", 0, object.Invalidf("The $skiptoken is not one this server issued.")
		}
		after = string(b)
	}
	return after, limit, nil
}

// nextLink is the absolute URL of the next page, or nil at the end.
func (b base) nextLink(c *call, r *http.Request, next string) *string {
	if next == "" {
		return nil
	}
	q := url.Values{}
	q.Set("api-version", c.apiVersion)
	q.Set("$skiptoken", base64.RawURLEncoding.EncodeToString([]byte(next)))
	if m := r.URL.Query().Get("maxresults"); m != "" {
		q.Set("maxresults", m)
	}
	link := b.h.ep.VaultBase(c.vault.Name) + r.URL.Path + "?" + q.Encode()
	return &link
}

type blobIO struct {
	Value string `json:"value"`
}

// decodeBlob accepts base64url with or without padding, as Azure does.
func decodeBlob(v string) ([]byte, error) {
	if v == "" {
		return nil, object.Invalidf("The request body must contain the backup blob in 'value'.")
	}
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			return b, nil
		}
	}
	return nil, object.Invalidf("The backup blob in 'value' is not valid base64url.")
}

// restoreBlob reads a restore body and decodes its blob.
func restoreBlob(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	var in blobIO
	if err := readJSON(w, r, maxRestoreBody, &in); err != nil {
		return nil, err
	}
	return decodeBlob(in.Value)
}

func backupOut(blob []byte, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return blobIO{Value: base64.RawURLEncoding.EncodeToString(blob)}, nil
}
