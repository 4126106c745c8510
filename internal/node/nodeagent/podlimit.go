package nodeagent

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// The default per-pod limits on token requests. A pod's SDK caches its
// tokens for most of their hour, so a well-behaved pod sends a handful a
// minute; these leave room for a pod that starts many clients at once,
// and bound what one pod can take of the agent, the apiserver (a review
// per new service-account token) and the authority (a request per new
// resource) when it floods. Real IMDS limits a whole VM to fewer: 20 a
// second, 5 at once.
const (
	DefaultPodRate     = 50  // requests a second, sustained
	DefaultPodBurst    = 200 // requests at once after a quiet spell
	DefaultPodInFlight = 16  // requests in progress at once
	// maxLimitedSources bounds the limiter's table (past it, the rest
	// share one more entry); a node has a few hundred pods at most.
	maxLimitedSources = 8192
)

// podLimiter limits token requests per source address: the pod's IP,
// known before anything costly (a token review) is done, and the one
// thing a flooding pod cannot share with its neighbours. Host processes
// and host-network pods share the node's addresses, and so one budget.
type podLimiter struct {
	rate     float64
	burst    float64
	inFlight int
	now      func() time.Time

	mu      sync.Mutex
	sources map[string]*podBudget
}

type podBudget struct {
	tokens   float64
	at       time.Time
	inFlight int
}

// newPodLimiter returns a limiter; a negative rate turns it off (nil).
func newPodLimiter(rate float64, burst, inFlight int, now func() time.Time) *podLimiter {
	if rate < 0 {
		return nil
	}
	if rate == 0 {
		rate = DefaultPodRate
	}
	if burst <= 0 {
		burst = DefaultPodBurst
	}
	if inFlight <= 0 {
		inFlight = DefaultPodInFlight
	}
	return &podLimiter{rate: rate, burst: float64(burst), inFlight: inFlight, now: now, sources: map[string]*podBudget{}}
}

// admit takes a place for a request from r's source, and returns the
// function that gives it back, or the 429 to answer.
func (l *podLimiter) admit(r *http.Request) (func(), *Failure) {
	if l == nil {
		return func() {}, nil
	}
	src, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		src = r.RemoteAddr
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.sources[src]
	if b == nil {
		if len(l.sources) >= maxLimitedSources {
			l.sweep(now)
		}
		if len(l.sources) >= maxLimitedSources {
			// Still full: the rest share one budget, which keeps the
			// table bounded.
			src = "(one of more than 8192 sources)"
			b = l.sources[src]
		}
	}
	if b == nil {
		b = &podBudget{tokens: l.burst, at: now}
		l.sources[src] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.inFlight >= l.inFlight {
		f := fail(http.StatusTooManyRequests, "too_many_requests", "this pod (source address %s) has %d token requests in progress, the node agent's limit per pod, so that one pod cannot starve the others: cache tokens (they last an hour; the Azure SDKs do) and retry after Retry-After", src, l.inFlight)
		f.RetryAfter = time.Second
		return nil, f
	}
	if b.tokens < 1 {
		f := fail(http.StatusTooManyRequests, "too_many_requests", "this pod (source address %s) sent more than %g token requests a second (bursts of %g), the node agent's limit per pod, so that one pod cannot starve the others: cache tokens (they last an hour; the Azure SDKs do) and retry after Retry-After", src, l.rate, l.burst)
		f.RetryAfter = time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
		return nil, f
	}
	b.tokens--
	b.inFlight++
	return func() {
		l.mu.Lock()
		b.inFlight--
		l.mu.Unlock()
	}, nil
}

// sweep forgets the sources that are idle and whose budget has refilled:
// they are as if new. Called with l.mu held.
func (l *podLimiter) sweep(now time.Time) {
	for src, b := range l.sources {
		if b.inFlight == 0 && b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.sources, src)
		}
	}
}
