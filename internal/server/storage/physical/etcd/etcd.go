// Package etcd is the storage engine that several server replicas share:
// etcd v3, the consensus store Kubernetes already trusts.
//
// Every key lives under a prefix, so installations can share a cluster. A
// batch is one etcd transaction: each condition a Compare, each write a Put
// or a Delete.
//
// Each process keeps a local view of its prefix, kept current by one watch:
// what it read or saw written last, within a bound (ViewBytes), the value of
// a key or the fact that it is absent, each at its revision. The view lists
// nothing at start, so a replica starts in the same time however large the
// store, and its memory does not grow with it. Reads in a context marked
// Synced are served from the view; what it does not hold is read from the
// cluster as it was at the view's revision. Sync makes those
// reads linearizable in the way Kubernetes' consistent reads from cache do
// (KEP-2340): it fetches the cluster's current revision with a quorum read,
// shared by every request that arrived before the fetch began, then waits
// until the view (and every subscriber) has reached it. Other reads go to
// the cluster.
package etcd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// DefaultPrefix is where an installation's keys live unless configured.
const DefaultPrefix = "/coffer/"

// etcd's own defaults for one request: --max-request-bytes and
// --max-txn-ops. A batch over them is refused here, with a clear error,
// before etcd refuses it with a terse one.
const (
	DefaultMaxRequestBytes = 1536 * 1024
	DefaultMaxTxnOps       = 128
)

// BatchLimits are the cluster's limits for one transaction (Options'
// MaxTxnOps and MaxRequestBytes).
func (b *Backend) BatchLimits() (ops, bytes int) { return b.o.MaxTxnOps, b.o.MaxRequestBytes }

// Options configure the engine.
type Options struct {
	// Endpoints are the cluster's client URLs (https://host:2379, or
	// unix:///path for a local member).
	Endpoints []string
	// CAFile, CertFile and KeyFile are the client TLS: the CA that signs
	// the members' certificates, and this client's certificate and key.
	CAFile, CertFile, KeyFile string
	// Prefix holds the installation's keys (default DefaultPrefix).
	Prefix string
	// DialTimeout bounds connecting (default 5 s); RequestTimeout bounds
	// every call to the cluster (default 5 s). SyncTimeout bounds a
	// request's wait to catch up with the cluster (default 2 s): a replica
	// cut off from etcd answers 503 within it.
	DialTimeout, RequestTimeout, SyncTimeout time.Duration
	// MaxRequestBytes and MaxTxnOps are the cluster's limits for one
	// request (default etcd's defaults).
	MaxRequestBytes, MaxTxnOps int
	// ViewBytes bounds what the local view holds: values, and absences,
	// with their keys (default DefaultViewBytes).
	ViewBytes int
	// Name identifies this process in elections (default its hostname and
	// pid).
	Name string
	Log  *slog.Logger
	// Registerer receives the engine's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Identity is the name this process campaigns with.
func (o Options) Identity() string {
	if o.Name != "" {
		return o.Name
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// batch is a committed revision on its way to the subscribers.
type batch struct {
	rev    int64
	change physical.Change
}

// Backend is the etcd engine.
type Backend struct {
	cli    *clientv3.Client
	o      Options
	prefix string
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // the watch and dispatch loops have ended

	mu      sync.Mutex
	vals    *values       // the local view: what is held of the prefix
	viewRev int64         // every event up to it is in view
	viewCh  chan struct{} // closed when viewRev moves
	queue   []batch       // waiting for the dispatcher
	queueCh chan struct{} // signalled when queue grows
	seen    int64         // every batch up to it has reached every subscriber
	seenCh  chan struct{} // closed when seen moves
	subs    []func(physical.Change)
	watchOK bool  // the watch is established and has its leader
	lastErr error // why the watch last failed
	closed  bool

	revs     fetcher // shared quorum reads of the current revision
	progress sync.Mutex
	asked    int64     // a progress notification was requested for this revision
	askedAt  time.Time // when it was last requested

	metrics *metrics

	// leads are the held elections (lead.go), guarded by mu.
	leads map[*leadership]struct{}
}

// New connects, reads the cluster's current revision, and starts watching
// from it with an empty view.
func New(ctx context.Context, o Options) (*Backend, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 2 * time.Second
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = DefaultMaxTxnOps
	}
	if o.ViewBytes <= 0 {
		o.ViewBytes = DefaultViewBytes
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	tlsc, err := clientTLS(o)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: o.Endpoints, DialTimeout: o.DialTimeout, TLS: tlsc,
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 3 * time.Second,
		// The client's own retries are not worth a line each: the engine
		// reports what fails, once, in its errors and its watch's log.
		Logger: zap.NewNop(),
		// No AutoSyncInterval: syncing replaces the endpoints given with
		// the ones the members advertise, which Coffer may not reach (a
		// Service name or a proxy in front of the cluster, a unix socket).
		// With it, a minute after start every new request waited on an
		// unreachable address until its deadline, while the watch went on
		// over the old connection; FuzzKeys found it as a stalled worker.
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: connect to %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	b := &Backend{cli: cli, o: o, prefix: o.Prefix, log: o.Log.With("component", "etcd"), ctx: bctx, cancel: cancel,
		done: make(chan struct{}), vals: newValues(o.ViewBytes), viewCh: make(chan struct{}), queueCh: make(chan struct{}, 1),
		seenCh: make(chan struct{}), metrics: newMetrics(o.Registerer)}
	b.revs.get = b.currentRevision
	rev, err := b.currentRevision(ctx)
	if err != nil {
		cancel()
		cli.Close()
		return nil, err
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "coffer_etcd_view_bytes",
			Help: "Bytes the local view holds of the store's values, of at most --etcd-view-bytes."}, func() float64 {
			b.mu.Lock()
			defer b.mu.Unlock()
			return float64(b.vals.bytes)
		}))
	}
	b.mu.Lock()
	b.advanceLocked(rev)
	b.seen = rev
	b.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.watchLoop(rev) }()
	go func() { defer wg.Done(); b.dispatchLoop() }()
	go func() { wg.Wait(); close(b.done) }()
	return b, nil
}

func clientTLS(o Options) (*tls.Config, error) {
	if o.CAFile == "" && o.CertFile == "" && o.KeyFile == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s holds no PEM certificate", o.CAFile)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("etcd client TLS needs both a certificate file and a key file")
	}
	if o.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// Client is the engine's etcd client, for leader election and operations
// tools that work on the same cluster.
func (b *Backend) Client() *clientv3.Client { return b.cli }

// Prefix is where the engine's keys live.
func (b *Backend) Prefix() string { return b.prefix }

// call bounds one request to the cluster and tells unavailability apart.
func (b *Backend) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.o.RequestTimeout)
}

// unavailable wraps an error of the cluster's as physical.ErrUnavailable
// when it means the cluster could not answer, rather than that it refused.
func (b *Backend) unavailable(what string, err error) error {
	if err == nil {
		return nil
	}
	if b.isClosed() {
		return physical.ErrClosed
	}
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrLeaderChanged), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail), errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost):
		return fmt.Errorf("%w: %s: %v", physical.ErrUnavailable, what, err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s: %v", physical.ErrUnavailable, what, err)
	}
	return fmt.Errorf("etcd: %s: %w", what, err)
}

func (b *Backend) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Get implements physical.Backend.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := physical.ValidateKey(key); err != nil {
		return nil, err
	}
	if b.isClosed() {
		return nil, physical.ErrClosed
	}
	if physical.IsSynced(ctx) {
		b.mu.Lock()
		r, ok := b.vals.get(key)
		var v []byte
		if ok && r.exists {
			v = clone(r.value)
		}
		least := b.viewRev
		b.mu.Unlock()
		if !ok {
			b.metrics.fetched.Inc()
			return b.fetch(ctx, key, least)
		}
		b.metrics.held.Inc()
		if !r.exists {
			return nil, physical.ErrNotFound
		}
		return v, nil
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.cli.Get(cctx, b.prefix+key)
	b.metrics.observe("get", start)
	if err != nil {
		return nil, b.unavailable("get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, physical.ErrNotFound
	}
	return resp.Kvs[0].Value, nil
}

// Holds implements physical.Matcher: a synced read of a key this process
// holds compares it in place; any other is read as Get reads it.
func (b *Backend) Holds(ctx context.Context, key string, value []byte) (bool, error) {
	if physical.IsSynced(ctx) && physical.ValidateKey(key) == nil {
		b.mu.Lock()
		r, ok := b.vals.get(key)
		closed := b.closed
		same := ok && r.exists && bytes.Equal(r.value, value)
		b.mu.Unlock()
		if closed {
			return false, physical.ErrClosed
		}
		if ok {
			b.metrics.held.Inc()
			return same, nil
		}
	}
	return physical.HoldsByGet(ctx, b, key, value)
}

// Scan implements physical.Backend.
func (b *Backend) Scan(ctx context.Context, prefix, after string, limit int) ([]physical.Entry, error) {
	if b.isClosed() {
		return nil, physical.ErrClosed
	}
	start := prefix
	if after >= prefix {
		start = after + "\x00"
	}
	// The view holds no listing: a synced scan reads the cluster as it was
	// at the view's revision. What it reads is not held: one scan of a
	// large prefix would push out every value requests read.
	var least int64
	if physical.IsSynced(ctx) {
		b.mu.Lock()
		least = b.viewRev
		b.mu.Unlock()
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(b.prefix + prefix))}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	t0 := time.Now()
	resp, err := b.read(cctx, least, b.prefix+start, opts...)
	b.metrics.observe("scan", t0)
	if err != nil {
		return nil, b.unavailable("scan", err)
	}
	out := make([]physical.Entry, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = physical.Entry{Key: strings.TrimPrefix(string(kv.Key), b.prefix), Value: kv.Value}
	}
	return out, nil
}

// Apply implements physical.Backend: one transaction. The conditions of a
// fencing context (see Lead) are added to the batch's.
func (b *Backend) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	if err := physical.ValidateBatch(conds, ops); err != nil {
		return err
	}
	if b.isClosed() {
		return physical.ErrClosed
	}
	size := 0
	for _, c := range conds {
		size += len(b.prefix) + len(c.Key) + len(c.Value) + 16
	}
	for _, o := range ops {
		size += len(b.prefix) + len(o.Key) + len(o.Value) + 16
	}
	f, fenced := ctx.Value(fenceKey{}).(fence)
	// etcd bounds a transaction's comparisons (and the reads of its else
	// branch, one per comparison here) as it bounds its writes.
	n := len(ops)
	if fenced {
		n = max(n, len(conds)+1)
	} else {
		n = max(n, len(conds))
	}
	if size > b.o.MaxRequestBytes || n > b.o.MaxTxnOps {
		return &physical.TooLargeError{Bytes: size, Ops: n, MaxBytes: b.o.MaxRequestBytes, MaxOps: b.o.MaxTxnOps}
	}
	var cmps []clientv3.Cmp
	var elses []clientv3.Op
	for _, c := range conds {
		k := b.prefix + c.Key
		if c.Value == nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		} else {
			cmps = append(cmps, clientv3.Compare(clientv3.Value(k), "=", string(c.Value)))
		}
		elses = append(elses, clientv3.OpGet(k))
	}
	if fenced {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev))
		elses = append(elses, clientv3.OpGet(f.key, clientv3.WithCountOnly()))
	}
	// A batch's writes apply in order, so a key written twice keeps its
	// last write (as on the other engines); etcd refuses a transaction
	// that names a key twice, so only that last write is sent.
	last := make(map[string]int, len(ops))
	for i, o := range ops {
		last[o.Key] = i
	}
	var thens []clientv3.Op
	for i, o := range ops {
		if last[o.Key] != i {
			continue
		}
		if o.Delete {
			thens = append(thens, clientv3.OpDelete(b.prefix+o.Key))
		} else {
			thens = append(thens, clientv3.OpPut(b.prefix+o.Key, string(o.Value)))
		}
	}
	cctx, cancel := b.call(ctx)
	defer cancel()
	start := time.Now()
	resp, err := b.cli.Txn(cctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	b.metrics.observe("txn", start)
	if err != nil {
		if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrTooManyOps) {
			return &physical.TooLargeError{Bytes: size, Ops: n, MaxBytes: size - 1, MaxOps: b.o.MaxTxnOps}
		}
		return b.unavailable("commit", err)
	}
	if !resp.Succeeded {
		return conflict(conds, resp.Responses, fenced)
	}
	// The local view has this batch before Apply returns, so that what
	// this process reads next includes its own write.
	return b.waitView(ctx, resp.Header.Revision)
}

// conflict names the first condition that failed, from the values the
// transaction's else branch read.
func conflict(conds []physical.Cond, got []*etcdserverpb.ResponseOp, fenced bool) error {
	for i, c := range conds {
		if i >= len(got) {
			break
		}
		kvs := got[i].GetResponseRange().GetKvs()
		switch {
		case c.Value == nil && len(kvs) > 0,
			c.Value != nil && (len(kvs) == 0 || string(kvs[0].Value) != string(c.Value)):
			return &physical.ConflictError{Key: c.Key}
		}
	}
	if fenced {
		return &physical.ConflictError{Key: "(leadership lost)"}
	}
	return physical.ErrConflict // every condition held when read again: it changed in between
}

// Close implements physical.Backend.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.awaitResignations()
	b.cancel()
	<-b.done
	return b.cli.Close()
}

func clone(v []byte) []byte { return append([]byte(nil), v...) }

// keyOf strips the prefix.
func (b *Backend) keyOf(kv *mvccpb.KeyValue) string {
	return strings.TrimPrefix(string(kv.Key), b.prefix)
}
