package kvhttp

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
	"github.com/cofferhq/coffer/internal/server/api/httpjson"
	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/cofferhq/coffer/internal/server/identity/token"
	"github.com/cofferhq/coffer/internal/server/keyvault/access"
	"github.com/cofferhq/coffer/internal/server/keyvault/secret"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/changes"
)

// The vault watch (docs/vault-watch.md): one streaming request per node
// and identity reports the changes to many objects, where a held read
// watches one. Its cost on the server is one goroutine and one stream per
// watch, a map entry per object in the change feed, and work per change:
// a change wakes only the streams that watch its object, and each
// authorizes the caller again before it says anything.
//
// What a stream may say, and when, is the security of it. A caller who
// may no longer read an object learns nothing more about it, not even
// that it changed: a change that the caller is not authorized for, when
// it is processed, is not reported, and the object is reported Dropped
// only by a re-authorization pass, which runs on a timer and after access
// changes, never because the object changed.
const (
	// defaultReauthorize is the period of each stream's re-authorization
	// pass, and so the bound on how long a client may trust a stream that
	// went silent (see vaultwatch.Authorized).
	defaultReauthorize = 30 * time.Second
	// defaultWatchWriteTimeout bounds the write of a batch of records: a
	// client that stops reading loses its stream.
	defaultWatchWriteTimeout = 30 * time.Second
	// maxWatchStreams and maxWatchObjects bound the server's watch state.
	maxWatchStreams = 50000
	maxWatchObjects = 1000000
)

// WatchStreams returns the number of open watch streams and the objects
// they watch, for metrics.
func (h *Handler) WatchStreams() (streams, objects int64) {
	return h.watchStreams.Load(), h.watchObjects.Load()
}

// ServesWatch reports whether the handler serves the vault watch.
func (h *Handler) ServesWatch() bool { return h.feed != nil && !h.noWatch }

// ServeWatch serves a vault watch: vaultwatch.Path on the authority's
// host. The caller's token is the one it reads the vaults with.
func (h *Handler) ServeWatch(w http.ResponseWriter, r *http.Request) {
	info := audit.From(r.Context())
	info.Operation = "VaultWatch"
	if !h.ServesWatch() {
		notFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeErr(w, http.StatusMethodNotAllowed, "BadParameter", "", "The vault watch is a POST of the objects to watch.")
		return
	}
	raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	resource := h.ep.Resource()
	c, err := h.verifier.Verify(strings.TrimSpace(raw), token.Expect{IssuerFor: h.issuer, Audiences: []string{resource, resource + "/"}})
	if err != nil {
		info.Decision = "unauthenticated"
		drain(r)
		h.fail(w, r, access.Secrets, err)
		return
	}
	p := access.Principal{TenantID: c.TenantID, ObjectID: c.ObjectID, AppID: c.AppID}
	info.Tenant, info.Principal, info.AppID = p.TenantID, p.ObjectID, p.AppID
	switch ver := r.URL.Query().Get("api-version"); {
	case ver == "":
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The 'api-version' query parameter is missing.")
		return
	case !supportedVersion(ver):
		writeErr(w, http.StatusBadRequest, "BadParameter", "", "The specified version ("+ver+") is not recognized. Consider using the latest supported version ("+Latest+").")
		return
	}
	var req vaultwatch.Request
	if err := readJSON(w, r, vaultwatch.MaxBody, &req); err != nil {
		h.fail(w, r, access.Secrets, err)
		return
	}
	s, err := h.newWatchStream(r, raw, c, p, req.Objects)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "BadParameter", "", err.Error())
		return
	}
	if !h.watchSlot(len(s.subs)) {
		w.Header().Set("Retry-After", strconv.Itoa(5+rand.N(10)))
		writeErr(w, http.StatusTooManyRequests, "Throttled", "", "This server watches as many objects as it may; retry later, or read the objects.")
		return
	}
	defer h.releaseWatch(len(s.subs))
	info.Decision = "allow"
	s.serve(w)
}

func (h *Handler) watchSlot(objects int) bool {
	if h.watchStreams.Add(1) > maxWatchStreams || h.watchObjects.Add(int64(objects)) > maxWatchObjects {
		h.releaseWatch(objects)
		return false
	}
	return true
}

func (h *Handler) releaseWatch(objects int) {
	h.watchStreams.Add(-1)
	h.watchObjects.Add(-int64(objects))
}

// subState is where a watched object stands for its stream.
type subState int

const (
	subWatching subState = iota
	// subRevoked: a change found the caller may not read it. Nothing was
	// said; the next pass reports it Dropped (or, allowed again, goes on).
	subRevoked
	subDropped // reported Dropped: no longer watched
)

// watchSub is one watched object.
type watchSub struct {
	vault, name string // lower-cased
	kind        access.Kind
	op          access.Operation
	subject     string
	etag        string // the state the client holds, as last reported
	state       subState
}

// watchStream is one watch: its objects, and the changes waiting to be
// told. The feed calls Changed and Recheck; everything else runs on the
// request's goroutine.
type watchStream struct {
	h         *Handler
	ctx       context.Context
	raw       string
	p         access.Principal
	expires   time.Time
	requestID string
	source    string
	subs      []watchSub
	bySubject map[string]int

	w  http.ResponseWriter
	rc *http.ResponseController

	mu      sync.Mutex
	pending []int  // subs changed since they were last looked at
	queued  []bool // by sub: in pending
	recheck bool   // access changed: a pass is due
	wake    chan struct{}
}

// errWatchEnd ends a stream after its End record.
var errWatchEnd = errors.New("watch ended")

func (h *Handler) newWatchStream(r *http.Request, raw string, c *token.Claims, p access.Principal, objs []vaultwatch.Object) (*watchStream, error) {
	if len(objs) == 0 || len(objs) > vaultwatch.MaxObjects {
		return nil, errors.New("A watch lists 1 to " + strconv.Itoa(vaultwatch.MaxObjects) + " objects; got " + strconv.Itoa(len(objs)) + ".")
	}
	src, _, _ := net.SplitHostPort(r.RemoteAddr)
	s := &watchStream{h: h, ctx: r.Context(), raw: raw, p: p, expires: time.Unix(c.Expiry, 0), source: src,
		subs: make([]watchSub, len(objs)), bySubject: make(map[string]int, len(objs)),
		queued: make([]bool, len(objs)), wake: make(chan struct{}, 1)}
	for i, o := range objs {
		var op access.Operation
		switch o.Kind {
		case vaultwatch.Secrets:
			op = access.SecretGet
		case vaultwatch.Keys:
			op = access.KeyGet
		case vaultwatch.Certificates:
			op = access.CertGet
		default:
			return nil, errors.New("Object " + strconv.Itoa(i) + ": kind must be secrets, keys or certificates.")
		}
		if vault.ValidateName(o.Vault) != nil || secret.ValidateName(o.Name) != nil || len(o.ETag) > 256 {
			return nil, errors.New("Object " + strconv.Itoa(i) + ": the vault or object name is not a valid one, or the ETag is over 256 bytes.")
		}
		subject := changes.Subject(o.Vault, o.Kind, o.Name)
		if _, dup := s.bySubject[subject]; dup {
			return nil, errors.New("Object " + strconv.Itoa(i) + " is listed twice (names compare case-insensitively).")
		}
		s.bySubject[subject] = i
		s.subs[i] = watchSub{vault: strings.ToLower(o.Vault), name: strings.ToLower(o.Name), kind: access.Kind(o.Kind), op: op, subject: subject, etag: o.ETag}
	}
	return s, nil
}

// Changed is the feed telling of a write to one of the stream's objects.
func (s *watchStream) Changed(subject string) {
	if i, ok := s.bySubject[subject]; ok {
		s.mu.Lock()
		s.queueLocked(i)
		s.mu.Unlock()
		s.signal()
	}
}

// Recheck is the feed telling that anything may have changed.
func (s *watchStream) Recheck(all bool) {
	s.mu.Lock()
	if all {
		for i := range s.subs {
			s.queueLocked(i)
		}
	}
	s.recheck = true
	s.mu.Unlock()
	s.signal()
}

func (s *watchStream) queueLocked(i int) {
	if !s.queued[i] {
		s.queued[i] = true
		s.pending = append(s.pending, i)
	}
}

func (s *watchStream) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take returns the objects changed since the last call, and whether a
// pass is due.
func (s *watchStream) take() ([]int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.pending
	for _, i := range out {
		s.queued[i] = false
	}
	s.pending = nil
	recheck := s.recheck
	s.recheck = false
	return out, recheck
}

// serve runs the stream until the client goes, the token expires, or the
// replica stops.
func (s *watchStream) serve(w http.ResponseWriter) {
	s.w, s.rc = w, http.NewResponseController(w)
	s.requestID = w.Header().Get("x-ms-request-id")
	// The request's own deadlines are for requests that end.
	_ = s.rc.SetReadDeadline(time.Time{})
	_ = s.rc.SetWriteDeadline(time.Time{})
	hd := w.Header()
	hd.Set("Content-Type", vaultwatch.ContentType)
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no") // a buffering proxy would hold the records
	w.WriteHeader(http.StatusOK)
	if s.flush() != nil {
		return
	}
	// Follow before the first read, so a change during the pass is not
	// missed.
	subjects := make([]string, len(s.subs))
	for i := range s.subs {
		subjects[i] = s.subs[i].subject
	}
	stop := s.h.feed.Follow(s, subjects...)
	defer stop()
	if err := s.first(); err != nil {
		return
	}
	period := s.h.reauthorize
	// The first pass comes at a random point of the period, so that
	// streams opened together (a replica's restart) spread their passes.
	pass := time.NewTimer(period/2 + rand.N(period/2))
	defer pass.Stop()
	expiry := time.NewTimer(time.Until(s.expires))
	defer expiry.Stop()
	for {
		var err error
		select {
		case <-s.ctx.Done():
			return
		case <-s.h.feed.Done():
			s.end(vaultwatch.ReasonShutdown)
			return
		case <-expiry.C:
			s.end(vaultwatch.ReasonExpired)
			return
		case <-pass.C:
			err = s.pass()
			pass.Reset(period)
		case <-s.wake:
			changed, recheck := s.take()
			err = s.changed(changed)
			if err == nil && recheck {
				err = s.pass()
			}
		}
		if err != nil {
			return
		}
	}
}

// first authorizes every object and reports those that are not at the
// client's state, then Ready.
func (s *watchStream) first() error {
	for i := range s.subs {
		sub := &s.subs[i]
		if !s.allowed(sub) {
			sub.state = subDropped
			s.audit(sub, "VaultWatch/subscribe", "deny", http.StatusForbidden)
			if err := s.send(vaultwatch.Record{Type: vaultwatch.Dropped, Object: i}); err != nil {
				return err
			}
			continue
		}
		s.audit(sub, "VaultWatch/subscribe", "allow", http.StatusOK)
		if err := s.report(i); err != nil {
			return err
		}
	}
	if err := s.send(vaultwatch.Record{Type: vaultwatch.Ready, Reauthorize: max(1, int(s.h.reauthorize/time.Second))}); err != nil {
		return err
	}
	return s.flush()
}

// changed looks at the objects a write touched: each one the caller may
// still read and whose state moved is reported. One the caller may not
// read is not reported, now or later; the next pass drops it.
func (s *watchStream) changed(idx []int) error {
	if len(idx) == 0 {
		return nil
	}
	if !time.Now().Before(s.expires) {
		return nil // the expiry timer ends the stream
	}
	sent := false
	for _, i := range idx {
		sub := &s.subs[i]
		if sub.state != subWatching {
			continue
		}
		if !s.allowed(sub) {
			sub.state = subRevoked
			continue
		}
		before := sub.etag
		if err := s.report(i); err != nil {
			return err
		}
		sent = sent || sub.etag != before
	}
	if !sent {
		return nil
	}
	return s.flush()
}

// pass re-authorizes the stream: its token, and every object. It first
// catches up with the store, so that Authorized can say every change
// committed before the pass was reported.
func (s *watchStream) pass() error {
	if s.h.sync != nil {
		if _, err := s.h.sync(s.ctx); err != nil {
			s.end(vaultwatch.ReasonUnavailable)
			return errWatchEnd
		}
	}
	changed, _ := s.take()
	if err := s.changed(changed); err != nil {
		return err
	}
	resource := s.h.ep.Resource()
	if _, err := s.h.verifier.Verify(s.raw, token.Expect{IssuerFor: s.h.issuer, Audiences: []string{resource, resource + "/"}}); err != nil {
		s.end(vaultwatch.ReasonExpired)
		return errWatchEnd
	}
	for i := range s.subs {
		sub := &s.subs[i]
		if sub.state == subDropped {
			continue
		}
		if !s.allowed(sub) {
			sub.state = subDropped
			s.audit(sub, "VaultWatch/drop", "deny", http.StatusForbidden)
			if err := s.send(vaultwatch.Record{Type: vaultwatch.Dropped, Object: i}); err != nil {
				return err
			}
			continue
		}
		if sub.state == subRevoked {
			// Readable again: it went unwatched meanwhile, so look.
			sub.state = subWatching
			if err := s.report(i); err != nil {
				return err
			}
		}
	}
	if err := s.send(vaultwatch.Record{Type: vaultwatch.Authorized}); err != nil {
		return err
	}
	return s.flush()
}

// allowed reports whether the caller may read sub's object now: its vault
// exists, and the vault's access policies or role assignments let the
// caller get it (which also requires the caller's tenant to be the
// vault's).
func (s *watchStream) allowed(sub *watchSub) bool {
	v, err := s.h.vaults.Get(sub.vault)
	if err != nil {
		return false
	}
	return s.h.access.Data(v, s.p, sub.op, sub.name) == nil
}

// report reads sub's object and sends Changed if its state is not the one
// the client holds; the caller has just been authorized for it.
func (s *watchStream) report(i int) error {
	sub := &s.subs[i]
	etag, err := s.h.currentETag(s.ctx, sub)
	if err != nil {
		s.end(vaultwatch.ReasonUnavailable)
		return errWatchEnd
	}
	if etag == sub.etag {
		return nil
	}
	sub.etag = etag
	s.audit(sub, "VaultWatch/changed", "allow", http.StatusOK)
	return s.send(vaultwatch.Record{Type: vaultwatch.Changed, Object: i, ETag: etag})
}

// currentETag is the ETag a read of the object's latest version would
// answer, or "" when that read would fail (a missing, deleted or disabled
// object); an error only when the store fails.
func (h *Handler) currentETag(ctx context.Context, sub *watchSub) (string, error) {
	v, err := h.vaults.Get(sub.vault)
	if err != nil {
		return "", nil
	}
	var etag string
	switch sub.kind {
	case access.Keys:
		if h.keys == nil {
			return "", nil
		}
		k, kerr := h.keys.Get(ctx, v, sub.name, "")
		etag, err = keyETag(k), kerr
	case access.Certificates:
		if h.certs == nil {
			return "", nil
		}
		ct, cerr := h.certs.Get(ctx, v, sub.name, "")
		etag, err = certETag(ct), cerr
	default:
		sec, serr := h.secrets.Get(ctx, v, sub.name, "", "")
		etag, err = secretETag(sec, ""), serr
	}
	if _, failed := httpjson.Storage(err); failed || (err != nil && ctx.Err() != nil) {
		return "", err
	}
	if err != nil {
		return "", nil
	}
	return etag, nil
}

// send writes one record; the deadline it sets lasts until the flush
// that ends the batch.
func (s *watchStream) send(rec vaultwatch.Record) error {
	b, _ := json.Marshal(rec)
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.h.writeTimeout))
	_, err := s.w.Write(append(b, '\n'))
	return err
}

// flush sends what send wrote, within the write timeout, and then clears
// the deadline: over HTTP/2 a write deadline is a timer on the stream
// that resets it when it fires, written to or not, so a deadline left
// armed would cut every stream that stays quiet for longer than the
// timeout (as a stream does between two passes).
func (s *watchStream) flush() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.h.writeTimeout))
	err := s.rc.Flush()
	_ = s.rc.SetWriteDeadline(time.Time{})
	return err
}

// end sends End with reason.
func (s *watchStream) end(reason string) {
	if s.send(vaultwatch.Record{Type: vaultwatch.End, Reason: reason}) == nil {
		_ = s.flush()
	}
}

// audit records one decision of the stream about one object: its
// subscription, a change told, a drop. Passes that find the caller still
// allowed write nothing: they would cost a line per object per period.
func (s *watchStream) audit(sub *watchSub, op, decision string, status int) {
	if s.h.record == nil {
		return
	}
	s.h.record(audit.Entry{RequestID: s.requestID, Source: s.source, Tenant: s.p.TenantID, Principal: s.p.ObjectID, AppID: s.p.AppID,
		Vault: sub.vault, Object: string(sub.kind) + "/" + sub.name, Method: http.MethodPost, Operation: op, Decision: decision, Status: status})
}

var _ changes.Follower = (*watchStream)(nil)

// watchCounters count the handler's watch state.
type watchCounters struct {
	watchStreams atomic.Int64
	watchObjects atomic.Int64
}
