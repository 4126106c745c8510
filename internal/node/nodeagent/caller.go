package nodeagent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cofferhq/coffer/internal/node/authclient"
)

// callerFromRequest finds who sent an IMDS or App Service request.
//
//  1. A service-account token (Authorization: Bearer) proves the pod; it
//     wins over the address, and a bad one is refused, never ignored.
//  2. A pod address on this node is that pod in source-ip mode, and is
//     refused in token mode: an address can be borrowed, a token cannot.
//  3. One of the node's own addresses is the node (host processes and
//     host-network pods), if node callers are allowed.
//  4. Anything else is refused.
func (a *Agent) callerFromRequest(ctx context.Context, r *http.Request, token string) (Caller, error) {
	if err := a.synced(); err != nil {
		return Caller{}, err
	}
	if token != "" {
		return a.callerFromToken(ctx, token, a.cfg.TokenAudiences, "service-account token")
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	pods, err := a.cfg.Cluster.PodsByIP(host)
	if err != nil {
		return Caller{}, notReady(http.StatusServiceUnavailable, msgCaches).because(err)
	}
	if len(pods) > 1 {
		return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "%d pods on this node have address %s, so the caller is ambiguous: present the pod's service-account token (Authorization: Bearer)", len(pods), host)
	}
	if len(pods) == 1 {
		p := pods[0]
		if a.cfg.Lookup != LookupSourceIP {
			return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "a request from %s (the address of pod %s/%s) carries no service-account token: this node agent identifies pods by proof, so send the pod's token as Authorization: Bearer (or its operator may enable --pod-lookup=source-ip for legacy clients)", host, p.Namespace, p.Name)
		}
		return a.podCaller(p, "source address "+host)
	}
	if a.cfg.LocalAddr(host) {
		if !a.cfg.NodeCallers {
			return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "a request from the node's own address %s carries no service-account token, and node callers are disabled (--node-callers=false)", host)
		}
		return Caller{Node: true, How: "node address " + host}, nil
	}
	if a.cfg.Lookup == LookupSourceIP {
		// A pod that just started may not be in the cache yet.
		return Caller{}, notReady(http.StatusNotFound, "no pod on node %s has address %s (yet): if it is a new pod, retry", a.cfg.NodeName, host)
	}
	return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "a request from %s carries no service-account token, and %s is not an address of node %s: send the pod's token as Authorization: Bearer", host, host, a.cfg.NodeName)
}

// callerFromToken reviews a pod's token and finds its pod on this node.
func (a *Agent) callerFromToken(ctx context.Context, token string, audiences []string, how string) (Caller, error) {
	rv, err := a.review(ctx, token, audiences)
	if err != nil {
		return Caller{}, err
	}
	// A pod of another node never becomes this node's: refuse for good,
	// rather than 404, which the SDKs retry.
	if rv.NodeName != "" && rv.NodeName != a.cfg.NodeName {
		return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "the token's pod %s/%s runs on node %s, not %s: ask that node's agent", rv.Namespace, rv.PodName, rv.NodeName, a.cfg.NodeName)
	}
	p, err := a.podOnNode(rv.Namespace, rv.PodName, rv.PodUID)
	if err != nil {
		return Caller{}, err
	}
	return a.podCaller(p, how)
}

// synced fails until the caches have their first full list.
func (a *Agent) synced() error {
	if !a.cfg.Cluster.Synced() {
		return notReady(http.StatusServiceUnavailable, "the node agent is starting: its pod and binding caches are not synced yet")
	}
	return nil
}

// podOnNode returns the pod ns/name of this node if it has uid.
func (a *Agent) podOnNode(ns, name, uid string) (*corev1.Pod, error) {
	p, err := a.cfg.Cluster.Pod(ns, name)
	if errors.Is(err, ErrNoPod) {
		return nil, notReady(http.StatusNotFound, "pod %s/%s is not on node %s (or not in its cache yet)", ns, name, a.cfg.NodeName)
	}
	if err != nil {
		return nil, notReady(http.StatusServiceUnavailable, msgCaches).because(err)
	}
	if string(p.UID) != uid {
		return nil, fail(http.StatusForbidden, "unauthorized_client", "pod %s/%s is uid %s, not %s: the caller names an earlier pod of that name", ns, name, p.UID, uid)
	}
	return p, nil
}

// podCaller is a pod, or the node if an exception matches the pod.
func (a *Agent) podCaller(p *corev1.Pod, how string) (Caller, error) {
	snap, err := a.cfg.Cluster.Snapshot()
	if err != nil {
		return Caller{}, notReady(http.StatusServiceUnavailable, msgCaches).because(err)
	}
	return Caller{Pod: p, How: how, Node: snap.Excepted(p)}, nil
}

// review checks a token, remembering the answer until the token expires
// (at most five minutes; a refusal for 30 seconds), so a pod's requests
// cost one TokenReview.
func (a *Agent) review(ctx context.Context, token string, audiences []string) (Review, error) {
	key := sha256.Sum256([]byte(strings.Join(audiences, " ") + "\x00" + token))
	if rv, ok := a.reviews.get(key); ok {
		if rv.refused != "" {
			return Review{}, fail(http.StatusForbidden, "unauthorized_client", "%s", rv.refused).because(rv.cause)
		}
		return rv.Review, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rv, err := a.cfg.Cluster.Review(rctx, token, audiences)
	if err != nil {
		return Review{}, notReady(http.StatusServiceUnavailable, msgReview).because(err)
	}
	var refused string
	var cause error
	switch {
	case !rv.Authenticated:
		// The apiserver's reason is for the agent, not the caller: an
		// authenticator webhook's error names its internal address.
		refused = "the service-account token was refused by the apiserver (audiences " + audienceList(audiences) + ")"
		if rv.Error != "" {
			cause = errors.New(rv.Error)
		}
	case rv.PodName == "" || rv.PodUID == "":
		refused = fmt.Sprintf("the token of service account %s/%s is not bound to a pod: use the pod's projected token (/var/run/secrets/kubernetes.io/serviceaccount/token)", rv.Namespace, rv.ServiceAccount)
	}
	if refused != "" {
		// Remembered briefly, so a caller repeating a bad token does not
		// turn each request into an apiserver call.
		a.reviews.put(key, reviewed{refused: refused, cause: cause}, a.cfg.Now().Add(30*time.Second))
		return Review{}, fail(http.StatusForbidden, "unauthorized_client", "%s", refused).because(cause)
	}
	if rv.Expires.IsZero() {
		rv.Expires = expiry(token)
	}
	until := a.cfg.Now().Add(5 * time.Minute)
	if !rv.Expires.IsZero() && rv.Expires.Before(until) {
		until = rv.Expires
	}
	a.reviews.put(key, reviewed{Review: rv}, until)
	return rv, nil
}

func audienceList(a []string) string {
	if len(a) == 0 {
		return "the apiserver's"
	}
	return strings.Join(a, ", ")
}

// expiry reads a JWT's exp without verifying it: only to bound how long a
// review the apiserver made is remembered.
func expiry(token string) time.Time {
	if exp := authclient.ReadClaims(token).Expiry; exp > 0 {
		return time.Unix(exp, 0)
	}
	return time.Time{}
}

// reviewCache remembers token reviews by the token's hash, never the
// token itself.
type reviewCache struct {
	now  func() time.Time
	max  int
	mu   sync.Mutex
	seen map[[32]byte]cachedReview
}

type cachedReview struct {
	rv    reviewed
	until time.Time
}

// reviewed is a review, or the reason a token was refused (and the
// apiserver's own, for the log).
type reviewed struct {
	Review
	refused string
	cause   error
}

func newReviewCache(now func() time.Time, max int) *reviewCache {
	return &reviewCache{now: now, max: max, seen: map[[32]byte]cachedReview{}}
}

func (c *reviewCache) get(k [32]byte) (reviewed, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.seen[k]
	if !ok || !c.now().Before(e.until) {
		return reviewed{}, false
	}
	return e.rv, true
}

func (c *reviewCache) put(k [32]byte, rv reviewed, until time.Time) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.seen) >= c.max {
		for key, e := range c.seen {
			if !now.Before(e.until) {
				delete(c.seen, key)
			}
		}
		if len(c.seen) >= c.max {
			clear(c.seen)
		}
	}
	c.seen[k] = cachedReview{rv: rv, until: until}
}

// localAddrs answers whether an address is the node's own, from the
// interface list, refreshed at most every ten seconds.
type localAddrs struct {
	now     func() time.Time
	mu      sync.Mutex
	addrs   map[string]bool
	fetched time.Time
}

func newLocalAddrs(now func() time.Time) *localAddrs { return &localAddrs{now: now} }

func (l *localAddrs) contains(ip string) bool {
	parsed := net.ParseIP(ip)
	if parsed == nil {
		return false
	}
	// An unspecified source can only be this host's own: a packet with
	// it never crosses a network, and this test machine's kernel reports
	// it for locally originated connections that an OUTPUT DNAT
	// redirected.
	if parsed.IsLoopback() || parsed.IsUnspecified() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil || l.now().Sub(l.fetched) > 10*time.Second {
		l.addrs = map[string]bool{}
		if as, err := net.InterfaceAddrs(); err == nil {
			for _, a := range as {
				if n, ok := a.(*net.IPNet); ok {
					l.addrs[n.IP.String()] = true
				}
			}
		}
		l.fetched = l.now()
	}
	return l.addrs[parsed.String()]
}
