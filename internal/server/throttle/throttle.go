// Package throttle decides which vault requests to answer 429 Throttled,
// as Key Vault does, with Retry-After.
//
// Two mechanisms:
//
//   - Static limits, opt-in per vault: token buckets per vault, per key
//     creation and per principal, refilled over Key Vault's 10-second
//     window. The preset "keyvault" copies Key Vault's published limits,
//     for teams that want Azure's behaviour in staging.
//   - Overload protection, always on: while more requests are in flight
//     (counted from their first byte, so queueing for the CPU counts) than
//     the server has room for, or while the Go scheduler shows the CPU
//     saturated, a principal whose recent request rate is over twice its
//     fair share (the total rate over the principals sending) and over
//     1,000 a second is refused, so that one flooding principal cannot starve the others.
//     Refusals are answered after a short pause (a tarpit) that holds no
//     place, so that a client that retries at once costs little.
//
// Accounting: a request costs one unit. A conditional read (If-None-Match)
// and a held read (Prefer: wait) cost a quarter: they are answered 304
// without a value most of the time. A held read takes no in-flight place
// while it waits. Key operations on larger RSA keys cost what Key Vault
// weighs them: 4 for RSA-3072, 8 for RSA-4096. The buckets are per server
// replica: with N replicas behind one Service, a vault's limit is N times
// the configured one.
package throttle

import (
	"context"
	"fmt"
	"math"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Window is Key Vault's throttling window: limits are per 10 seconds.
const Window = 10 * time.Second

// Limits are a vault's static limits, per Window; zero is unlimited.
type Limits struct {
	// Preset names a set of limits: "keyvault" (Key Vault's published
	// ones). It fills the fields left zero.
	Preset string `json:"preset,omitempty"`
	// Requests bounds the vault's transactions (weighted, see the package
	// doc).
	Requests int `json:"requestsPer10s,omitempty"`
	// KeyCreates bounds key creations, imports and rotations.
	KeyCreates int `json:"keyCreatesPer10s,omitempty"`
	// PerPrincipal bounds one principal's transactions on the vault.
	PerPrincipal int `json:"requestsPer10sPerPrincipal,omitempty"`
}

// Key Vault's published limits for a vault, per 10 seconds: 4,000
// transactions of secrets, vault operations and software-key operations
// on RSA-2048 and EC keys (RSA-3072: 1,000; RSA-4096: 500, weighted into
// the same sum), and 20 software-key creations.
const (
	keyVaultRequests   = 4000
	keyVaultKeyCreates = 20
)

// Effective returns l with its preset applied.
func (l Limits) Effective() Limits {
	if l.Preset == PresetKeyVault {
		if l.Requests == 0 {
			l.Requests = keyVaultRequests
		}
		if l.KeyCreates == 0 {
			l.KeyCreates = keyVaultKeyCreates
		}
	}
	return l
}

// Off reports whether l limits nothing.
func (l Limits) Off() bool {
	e := l.Effective()
	return e.Requests == 0 && e.KeyCreates == 0 && e.PerPrincipal == 0
}

// PresetKeyVault is the preset with Key Vault's limits.
const PresetKeyVault = "keyvault"

// Parse reads limits as the CLI takes them: "keyvault", "off", or
// comma-separated requests=N, key-creates=N, per-principal=N (each per 10
// seconds), optionally after the preset ("keyvault,per-principal=500").
func Parse(s string) (Limits, error) {
	var l Limits
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, val, hasVal := strings.Cut(part, "=")
		switch {
		case part == "off" || part == "":
			continue
		case part == PresetKeyVault:
			l.Preset = PresetKeyVault
			continue
		case !hasVal:
			return Limits{}, fmt.Errorf("throttle %q: use keyvault, off, or requests=N, key-creates=N, per-principal=N (per 10 seconds)", part)
		}
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 1_000_000 {
			return Limits{}, fmt.Errorf("throttle %s: %q is not a count from 0 to 1000000", name, val)
		}
		switch name {
		case "requests":
			l.Requests = n
		case "key-creates":
			l.KeyCreates = n
		case "per-principal":
			l.PerPrincipal = n
		default:
			return Limits{}, fmt.Errorf("throttle %q: the limits are requests, key-creates and per-principal", name)
		}
	}
	return l, nil
}

// Class is what a request costs.
type Class int

// The classes.
const (
	Full      Class = iota // one unit
	Light                  // a conditional or held read: a quarter
	KeyCreate              // a key creation: one unit, and one key creation
)

func (c Class) units() float64 {
	if c == Light {
		return 0.25
	}
	return 1
}

// bucket is a token bucket refilled at rate tokens per second up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take removes n tokens if it can, or says how long until it could.
func (b *bucket) take(now time.Time, rate, burst, n float64) (bool, time.Duration) {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = math.Min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens >= n {
		b.tokens -= n
		return true, 0
	}
	return false, time.Duration((n - b.tokens) / rate * float64(time.Second))
}

// Limiter keeps the buckets and the in-flight counts.
type Limiter struct {
	now func() time.Time
	// capacity is how many requests may be in flight before overload
	// protection refuses heavy principals; 0 turns it off.
	capacity int
	tarpit   time.Duration

	total atomic.Int64 // requests in flight, from Enter to Leave
	// busyUntil is when the CPU was last seen saturated, plus a hold
	// (unix nanoseconds), from Watch.
	busyUntil atomic.Int64

	mu      sync.Mutex
	buckets map[string]*bucket
	rates   map[string]*rate // principals' recent request rates
	share   float64          // the fair share, as last computed
	shareAt time.Time
	shed    uint64
}

// rate is an exponentially decaying request rate.
type rate struct {
	perSec float64
	last   time.Time
}

// minShedRate is the request rate below which overload protection never
// refuses a principal: one client sending its requests one after another
// stays under it, so only concurrent floods are shed.
const minShedRate = 1000

// rateHalfLife is how fast a principal's rate forgets: a flood that stops
// is forgiven within seconds.
const rateHalfLife = time.Second

func (r *rate) at(now time.Time) float64 {
	if dt := now.Sub(r.last); dt > 0 {
		r.perSec *= math.Exp2(-dt.Seconds() / rateHalfLife.Seconds())
		r.last = now
	}
	return r.perSec
}

// Flight is one request counted in flight.
type Flight struct {
	l    *Limiter
	done atomic.Bool
}

// Enter counts a request in flight from its first byte. The server calls
// it for every vault request it may refuse, and Done when it ends.
func (l *Limiter) Enter() *Flight {
	return l.Start(new(Flight))
}

// Start is Enter for a zero Flight the caller provides, such as one in
// its per-request state: an allocation fewer on every request.
func (l *Limiter) Start(f *Flight) *Flight {
	l.total.Add(1)
	f.l = l
	return f
}

// Done ends the flight; later calls do nothing (a refused request leaves
// before its tarpit, the server's own call then does nothing).
func (f *Flight) Done() {
	if f != nil && f.done.CompareAndSwap(false, true) {
		f.l.total.Add(-1)
	}
}

// Options configure a Limiter.
type Options struct {
	// Capacity is the number of requests in flight at which overload
	// protection starts (0: off here; the server sets 4 per CPU);
	// negative turns it off.
	Capacity int
	// Tarpit is how long a refused request waits before its answer
	// (default 1 s, the Retry-After).
	Tarpit time.Duration
	Now    func() time.Time
}

// New returns a limiter.
func New(o Options) *Limiter {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tarpit == 0 {
		o.Tarpit = time.Second
	}
	return &Limiter{now: o.Now, capacity: o.Capacity, tarpit: o.Tarpit, buckets: map[string]*bucket{}, rates: map[string]*rate{}}
}

// Decision is the answer to Admit.
type Decision struct {
	// OK admits the request; Release must then be called when it ends.
	OK bool
	// RetryAfter is how long a refused caller should wait.
	RetryAfter time.Duration
	// Reason says which limit refused it, for the error message.
	Reason string
	// Tarpit is how long to wait before answering a refusal.
	Tarpit  time.Duration
	Release func()
}

// maxBuckets bounds the buckets kept; past it, full ones are dropped.
const maxBuckets = 100_000

// Admit decides one request of principal to vault. held requests (reads
// that will wait for a change) take no in-flight place.
func (l *Limiter) Admit(vault string, limits Limits, principal string, class Class, held bool) Decision {
	now := l.now()
	lim := limits.Effective()
	l.mu.Lock()
	defer l.mu.Unlock()
	type check struct {
		key    string
		limit  int
		units  float64
		reason string
	}
	var checks []check
	if lim.Requests > 0 {
		checks = append(checks, check{"v/" + vault, lim.Requests, class.units(), fmt.Sprintf("the vault's limit of %d requests per 10 seconds", lim.Requests)})
	}
	if lim.PerPrincipal > 0 {
		checks = append(checks, check{"p/" + vault + "/" + principal, lim.PerPrincipal, class.units(), fmt.Sprintf("the limit of %d requests per 10 seconds for one caller of this vault", lim.PerPrincipal)})
	}
	if class == KeyCreate && lim.KeyCreates > 0 {
		checks = append(checks, check{"k/" + vault, lim.KeyCreates, 1, fmt.Sprintf("the vault's limit of %d key creations per 10 seconds", lim.KeyCreates)})
	}
	// Every bucket must have room before any is charged, so a refusal
	// costs the caller nothing (as in Key Vault, where a 429 does not
	// count).
	for _, c := range checks {
		b := l.bucketLocked(c.key)
		rate, burst := float64(c.limit)/Window.Seconds(), float64(c.limit)
		probe := *b
		if ok, wait := probe.take(now, rate, burst, c.units); !ok {
			return Decision{RetryAfter: wait, Reason: c.reason}
		}
	}
	for _, c := range checks {
		l.buckets[c.key].take(now, float64(c.limit)/Window.Seconds(), float64(c.limit), c.units)
	}
	if held || l.capacity <= 0 {
		return Decision{OK: true, Release: func() {}}
	}
	r := l.rates[principal]
	if r == nil {
		if len(l.rates) >= maxBuckets {
			l.rates = map[string]*rate{}
		}
		r = &rate{last: now}
		l.rates[principal] = r
	}
	mine := r.at(now)
	r.perSec += 1 / rateHalfLife.Seconds() * math.Ln2 // one request's weight in the decaying rate
	if mine > minShedRate && l.saturated(now) && mine > 2*l.fairShareLocked(now) {
		l.shed++
		return Decision{RetryAfter: time.Second, Tarpit: l.tarpit, Reason: "the server is busy, and this caller sends more than its share of the requests"}
	}
	return Decision{OK: true, Release: func() {}}
}

// Charge takes n more units from the vault's buckets after a request was
// answered, for operations whose weight is known only once they ran (a
// large RSA key's). The buckets may go into debt: the caller's next
// requests wait for it.
func (l *Limiter) Charge(vault string, limits Limits, principal string, n float64) {
	lim := limits.Effective()
	if n <= 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range []struct {
		key   string
		limit int
	}{{"v/" + vault, lim.Requests}, {"p/" + vault + "/" + principal, lim.PerPrincipal}} {
		if c.limit == 0 {
			continue
		}
		b := l.bucketLocked(c.key)
		rate, burst := float64(c.limit)/Window.Seconds(), float64(c.limit)
		b.take(now, rate, burst, 0) // refill up to now
		b.tokens = math.Max(b.tokens-n, -burst)
	}
}

// saturated reports whether the server is full: more requests in flight
// than its capacity, or (from Watch) runnable goroutines that waited long
// for a CPU in the last moments.
func (l *Limiter) saturated(now time.Time) bool {
	return int(l.total.Load()) > l.capacity || now.UnixNano() < l.busyUntil.Load()
}

// Scheduling delays that mean the CPU is saturated, and how long a
// saturated reading holds: past it, refused clients come back, and a
// flood that resumes is refused again.
const (
	busyLatency = time.Millisecond
	busyHold    = 3 * time.Second
	sampleEvery = 20 * time.Millisecond
)

// Watch samples the Go scheduler's latency until ctx ends: when the 90th
// percentile of the time runnable goroutines waited for a CPU over the
// last sample passes busyLatency, the server counts as saturated for
// busyHold. With HTTP/2 and keep-alive clients, requests queue before they
// reach a handler, where no in-flight count sees them; the scheduler's
// delay does.
func (l *Limiter) Watch(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	var prev []uint64
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindFloat64Histogram {
			return
		}
		h := sample[0].Value.Float64Histogram()
		if prev != nil && p90(h.Counts, prev, h.Buckets) > busyLatency.Seconds() {
			l.busyUntil.Store(l.now().Add(busyHold).UnixNano())
		}
		prev = append(prev[:0], h.Counts...)
	}
}

// p90 is the 90th percentile of the histogram's growth since prev, by its
// bucket boundaries.
func p90(counts, prev []uint64, bounds []float64) float64 {
	var total uint64
	for i := range counts {
		total += counts[i] - prev[i]
	}
	if total == 0 {
		return 0
	}
	want, seen := total*9/10, uint64(0)
	for i := range counts {
		seen += counts[i] - prev[i]
		if seen > want {
			return bounds[i] // the bucket's lower bound
		}
	}
	return bounds[len(bounds)-1]
}

// fairShareLocked is the request rate each principal may send while the
// server is full: the total recent rate over the principals sending.
// It is computed at most every 50 ms: under a flood it is asked for every
// request.
func (l *Limiter) fairShareLocked(now time.Time) float64 {
	if now.Sub(l.shareAt) < 50*time.Millisecond {
		return l.share
	}
	total, n := 0.0, 0
	for p, r := range l.rates {
		v := r.at(now)
		if v < 0.01 {
			delete(l.rates, p) // idle: forgotten
			continue
		}
		total += v
		n++
	}
	l.share, l.shareAt = total/float64(max(1, n)), now
	return l.share
}

func (l *Limiter) bucketLocked(key string) *bucket {
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.buckets = map[string]*bucket{} // bounded: idle buckets are full anyway
		}
		b = &bucket{}
		l.buckets[key] = b
	}
	return b
}

// Shed is how many requests overload protection has refused.
func (l *Limiter) Shed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.shed
}

// RetryAfterSeconds rounds a wait up to whole seconds, at least one, as
// the Retry-After header carries it.
func RetryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
