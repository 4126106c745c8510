// Package nodeagent is Coffer's node agent: an IMDS-compatible token
// endpoint (and the App Service one) that gives each pod the identities its
// AzureIdentityBindings grant, the node its own identities, and the CSI
// provider both, over a local socket. It finds the calling pod by proof (the
// pod's service-account token) or, in compatibility mode, by source address,
// and takes tokens from the authority with the node's own credential.
package nodeagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// Lookup is how the agent finds the calling pod.
type Lookup string

// The lookups. Token is the default: a pod proves who it is with its
// service-account token. SourceIP also accepts a pod that only shows its
// address, as AAD Pod Identity did, for clients that cannot send a token.
const (
	LookupToken    Lookup = "token"
	LookupSourceIP Lookup = "source-ip"
)

// Cluster is what the agent reads from Kubernetes. The kube implementation
// reads from watch caches; a decision never waits on the apiserver, except
// to review a token it has not seen.
type Cluster interface {
	// Synced reports whether the caches have their first full list.
	Synced() bool
	// Pod returns a pod on this node; ErrNoPod if there is none.
	Pod(namespace, name string) (*corev1.Pod, error)
	// PodsByIP returns the pods on this node with address ip.
	PodsByIP(ip string) ([]*corev1.Pod, error)
	// Snapshot returns the current pod-identity objects.
	Snapshot() (podidentity.Snapshot, error)
	// Secret reads a Secret (a service principal's credential).
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// Review checks a service-account token with the apiserver (the
	// TokenReview API) for one of audiences (none: the apiserver's own).
	Review(ctx context.Context, token string, audiences []string) (Review, error)
}

// Review is what the apiserver says of a service-account token.
type Review struct {
	Authenticated  bool
	Error          string
	Namespace      string
	ServiceAccount string
	// PodName and PodUID are set for tokens bound to a pod.
	PodName string
	PodUID  string
	// NodeName is the node the pod was scheduled to when the token was
	// issued, if the apiserver records it.
	NodeName string
	// Expires is when the token stops being valid (from its exp claim).
	Expires time.Time
}

// ErrNoPod means no pod matched on this node.
var ErrNoPod = errors.New("no such pod on this node")

// Config configures an agent.
type Config struct {
	// NodeName is this node's name: only its pods are served.
	NodeName string
	// Tenant is the tenant of the node's credential and of managed
	// identities.
	Tenant string
	// AgentClientID and AgentSecret are the node credential (a node pool's
	// agent principal), which holds Managed Identity Operator on the
	// identities the agent may hand out.
	AgentClientID string
	AgentSecret   string
	// SystemIdentity is the node's system-assigned identity (client id or
	// resource id), what a node-level caller gets without a selector.
	SystemIdentity string
	// VMIdentities are user-assigned identities attached to the node:
	// node-level callers, exception pods and the provider's
	// useVMManagedIdentity mode may select them.
	VMIdentities []string
	// NodeIdentityNamespaces, if set, are the only namespaces whose pods
	// (exception pods, and the provider's useVMManagedIdentity mode) may
	// use the node's identities. Empty: every namespace, as on a cloud VM.
	NodeIdentityNamespaces []string
	// Lookup is how pods are found; LookupToken by default.
	Lookup Lookup
	// TokenAudiences are the audiences a pod's token may have on the IMDS
	// endpoint (none: the apiserver's own, which every pod's default token
	// has).
	TokenAudiences []string
	// ProviderAudience is the audience of the tokens the CSI driver passes
	// to the provider (csi.storage.k8s.io/serviceAccount.tokens).
	ProviderAudience string
	// NodeCallers lets callers from the node's own addresses (host
	// processes and host-network pods) use the node's identities, as they
	// can reach the real IMDS on a cloud VM.
	NodeCallers bool
	// IdentityHeader is the App Service protocol's shared secret
	// (X-IDENTITY-HEADER); empty: only service-account tokens are accepted
	// there.
	IdentityHeader string
	// Policy is the cluster operator's part of the binding rules.
	Policy podidentity.Policy

	// PodRate, PodBurst and PodInFlight limit each pod's token requests
	// (by source address): requests a second, a burst, and requests in
	// progress at once; past them the pod gets 429 with Retry-After while
	// the others are served. Zero: the defaults (DefaultPodRate and so
	// on); a negative PodRate turns the limit off.
	PodRate     float64
	PodBurst    int
	PodInFlight int

	Cluster Cluster
	Auth    *authclient.Client
	// LocalAddr reports whether ip is one of this node's own addresses.
	LocalAddr func(ip string) bool
	Log       *slog.Logger
	Now       func() time.Time
}

// Agent serves tokens to pods and to the node.
type Agent struct {
	cfg     Config
	reviews *reviewCache
	metrics *metrics
	pods    *podLimiter
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	for option, v := range map[string]string{"NodeName": cfg.NodeName, "Tenant": cfg.Tenant, "AgentClientID": cfg.AgentClientID, "AgentSecret": cfg.AgentSecret} {
		if v == "" {
			return nil, daemon.Invalid(option, "is required: the node agent signs in to the authority as the node")
		}
	}
	switch cfg.Lookup {
	case "":
		cfg.Lookup = LookupToken
	case LookupToken, LookupSourceIP:
	default:
		return nil, daemon.Invalid("Lookup", "%q: use token (the default: pods prove who they are) or source-ip (compatibility for clients that cannot send a token)", cfg.Lookup)
	}
	if cfg.Cluster == nil || cfg.Auth == nil {
		return nil, errors.New("nodeagent: a cluster and an authority client are required")
	}
	if cfg.ProviderAudience == "" {
		cfg.ProviderAudience = "api://AzureADTokenExchange"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LocalAddr == nil {
		cfg.LocalAddr = newLocalAddrs(cfg.Now).contains
	}
	// The limiter runs on the wall clock, not cfg.Now (which tests move
	// to expire tokens): a rate is requests per real second.
	pods := newPodLimiter(cfg.PodRate, cfg.PodBurst, cfg.PodInFlight, time.Now)
	return &Agent{cfg: cfg, reviews: newReviewCache(cfg.Now, 10000), metrics: newMetrics(), pods: pods}, nil
}

// Failure is a refused token request, as the wire shows it. Message is
// sent to the caller, so it is written for the caller: it says what was
// wrong with the request, or, for a failure inside the agent or of a
// system behind it, one of the fixed messages below, never an internal
// error's text.
type Failure struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration

	// cause is the internal error behind the failure, for the agent's
	// log only: its text can name internal addresses, files and
	// configuration.
	cause error
}

func (f *Failure) Error() string { return f.Message }

// Unwrap returns the internal cause, if any.
func (f *Failure) Unwrap() error { return f.cause }

// because records the internal error behind f.
func (f *Failure) because(err error) *Failure {
	f.cause = err
	return f
}

func fail(status int, code, format string, args ...any) *Failure {
	return &Failure{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// The messages of failures whose cause is internal, one per class (also
// listed in docs/node-agent.md). The cause is logged with the request.
const (
	// msgCaches (503): the watch caches could not be read.
	msgCaches = "the node agent could not read its pod and binding caches; retry later"
	// msgReview (503): the TokenReview call failed.
	msgReview = "the node agent could not review the service-account token with the apiserver; retry later"
	// msgSecret (503): a service principal's Secret could not be read;
	// formatted with the Secret's namespace and name and the identity.
	msgSecret = "the node agent could not read Secret %s/%s of AzureIdentity %s; retry later"
	// msgUnreachable (503): the authority did not answer.
	msgUnreachable = "the authority is unreachable; retry later"
	// msgAuthorityFailed (503): the authority answered with a server
	// error; formatted with its status.
	msgAuthorityFailed = "the authority failed (HTTP %d); retry later"
	// msgBadAnswer (503): the authority answered 2xx without a usable
	// token.
	msgBadAnswer = "the authority's answer holds no usable token; retry later"
	// msgTimeout (503): the request ran out of time or was cancelled.
	msgTimeout = "the request timed out; retry"
	// msgInternal (500): anything else.
	msgInternal = "the node agent could not complete the request; its log has the details"
)

// notReady is a transient failure: the SDKs retry 404, 503 and 429 after
// Retry-After.
func notReady(status int, format string, args ...any) *Failure {
	f := fail(status, "temporarily_unavailable", format, args...)
	f.RetryAfter = 2 * time.Second
	return f
}

// Caller is who asks for a token.
type Caller struct {
	// Node is set for the node itself: a host process, a host-network pod
	// or an exception pod.
	Node bool
	Pod  *corev1.Pod
	// How says how the caller was found, for errors and the log.
	How string
}

func (c Caller) String() string {
	if c.Pod != nil {
		s := "pod " + c.Pod.Namespace + "/" + c.Pod.Name + " (" + c.How + ")"
		if c.Node {
			s += " as the node"
		}
		return s
	}
	return "the node (" + c.How + ")"
}

// Request is one token request.
type Request struct {
	// Resource is the token's audience, without /.default.
	Resource string
	Select   authclient.Selector
}

// Grant is an issued token and the identity it is for.
type Grant struct {
	Token    authclient.Token
	ClientID string
	Resource string
}

// Token returns a token for caller.
func (a *Agent) Token(ctx context.Context, c Caller, r Request) (Grant, error) {
	switch {
	case c.Pod != nil && !c.Node:
		return a.podToken(ctx, c, r)
	case c.Node:
		return a.nodeToken(ctx, c, r)
	}
	return Grant{}, fail(http.StatusForbidden, "unauthorized_client", "the caller is neither a pod nor the node")
}

// candidate is an identity a caller may get: how to get its token, and the
// ids known without asking the authority.
type candidate struct {
	cred       func() (authclient.Credential, error)
	clientID   string
	resourceID string
}

func (a *Agent) nodeToken(ctx context.Context, c Caller, r Request) (Grant, error) {
	if c.Pod != nil && len(a.cfg.NodeIdentityNamespaces) > 0 && !slices.Contains(a.cfg.NodeIdentityNamespaces, c.Pod.Namespace) {
		return Grant{}, fail(http.StatusForbidden, "unauthorized_client", "%s may not use this node's identities: its namespace is not in --vm-identity-namespaces", c)
	}
	if r.Select == (authclient.Selector{}) {
		if a.cfg.SystemIdentity == "" {
			return Grant{}, fail(http.StatusBadRequest, "invalid_request", "Identity not found: this node has no system-assigned identity (start the node agent with --system-identity), so %s must select a user-assigned one with client_id, object_id or msi_res_id", c)
		}
		return a.issue(ctx, r, a.managed(selectorFor(a.cfg.SystemIdentity)))
	}
	var cands []candidate
	for _, id := range append(compact(a.cfg.SystemIdentity), a.cfg.VMIdentities...) {
		sel := selectorFor(id)
		cands = append(cands, candidate{cred: func() (authclient.Credential, error) { return a.managed(sel), nil }, clientID: sel.ClientID, resourceID: sel.ResourceID})
	}
	g, err := a.choose(ctx, r, cands)
	if errors.Is(err, errNoMatch) {
		return Grant{}, fail(http.StatusBadRequest, "invalid_request", "Identity not found: %s is not one of this node's %d identities (the system-assigned one and --vm-identity)", describe(r.Select), len(cands))
	}
	return g, err
}

func compact(s ...string) []string {
	return slices.DeleteFunc(s, func(v string) bool { return v == "" })
}

func (a *Agent) podToken(ctx context.Context, c Caller, r Request) (Grant, error) {
	snap, err := a.cfg.Cluster.Snapshot()
	if err != nil {
		return Grant{}, notReady(http.StatusServiceUnavailable, msgCaches).because(err)
	}
	as := snap.Assignments(c.Pod, a.cfg.Policy)
	if len(as) == 0 {
		label := c.Pod.Labels[podidentity.BindingLabel]
		if label == "" {
			return Grant{}, fail(http.StatusBadRequest, "invalid_request", "Identity not assigned: %s has no %s label, so no AzureIdentityBinding applies to it", c, podidentity.BindingLabel)
		}
		return Grant{}, fail(http.StatusBadRequest, "invalid_request", "Identity not assigned: no AzureIdentityBinding in namespace %s has selector %q (the pod's %s label), or its AzureIdentity is missing", c.Pod.Namespace, label, podidentity.BindingLabel)
	}
	cands := make([]candidate, len(as))
	for i, as := range as {
		cands[i] = candidate{cred: func() (authclient.Credential, error) { return a.credential(ctx, as.Identity) },
			clientID: as.Identity.Spec.ClientID, resourceID: as.Identity.Spec.ResourceID}
	}
	if r.Select == (authclient.Selector{}) {
		cred, err := cands[0].cred()
		if err != nil {
			return Grant{}, err
		}
		return a.issue(ctx, r, cred)
	}
	g, err := a.choose(ctx, r, cands)
	if errors.Is(err, errNoMatch) {
		return Grant{}, fail(http.StatusBadRequest, "invalid_request", "Identity not found: %s is not among the %d identities bound to %s", describe(r.Select), len(as), c)
	}
	return g, err
}

var errNoMatch = errors.New("no identity matches")

// choose issues a token for the candidate r selects. It first compares the
// ids known up front, then the claims of a token issued to each candidate
// (object ids are only known that way), skipping candidates that fail; if
// none matches, it returns the first failure, or errNoMatch.
func (a *Agent) choose(ctx context.Context, r Request, cands []candidate) (Grant, error) {
	s := r.Select
	for _, c := range cands {
		if (s.ClientID != "" && strings.EqualFold(s.ClientID, c.clientID)) || (s.ResourceID != "" && strings.EqualFold(s.ResourceID, c.resourceID)) {
			cred, err := c.cred()
			if err != nil {
				return Grant{}, err
			}
			return a.issue(ctx, r, cred)
		}
	}
	var first error
	for _, c := range cands {
		cred, err := c.cred()
		var g Grant
		if err == nil {
			g, err = a.issue(ctx, r, cred)
		}
		if err != nil {
			first = cmp.Or(first, err)
			continue
		}
		cl := g.Token.Claims
		if (s.ClientID != "" && strings.EqualFold(s.ClientID, cl.AppID)) ||
			(s.ObjectID != "" && strings.EqualFold(s.ObjectID, cl.ObjectID)) ||
			(s.ResourceID != "" && strings.EqualFold(s.ResourceID, cl.ResourceID)) {
			return g, nil
		}
	}
	return Grant{}, cmp.Or(first, errNoMatch)
}

// selectorFor names an identity given as a client id or a resource id.
func selectorFor(id string) authclient.Selector {
	if strings.HasPrefix(id, "/") {
		return authclient.Selector{ResourceID: id}
	}
	return authclient.Selector{ClientID: id}
}

// managed is the node credential acting as a managed identity.
func (a *Agent) managed(s authclient.Selector) authclient.Credential {
	return authclient.Credential{TenantID: a.cfg.Tenant, ClientID: a.cfg.AgentClientID, Secret: a.cfg.AgentSecret, ActFor: s}
}

func describe(s authclient.Selector) string {
	switch {
	case s.ClientID != "":
		return "client_id " + s.ClientID
	case s.ObjectID != "":
		return "object_id " + s.ObjectID
	}
	return "msi_res_id " + s.ResourceID
}

// issue gets the token, mapping the authority's answer to what IMDS
// clients expect: a refusal is 403, a missing identity 400, throttling 429
// and an unreachable authority 503, both with Retry-After.
func (a *Agent) issue(ctx context.Context, r Request, cred authclient.Credential) (Grant, error) {
	tok, err := a.cfg.Auth.Token(ctx, cred, r.Resource+"/.default")
	if err == nil {
		client := cmp.Or(tok.Claims.AppID, cred.ActFor.ClientID)
		if client == "" && cred.ActFor == (authclient.Selector{}) {
			client = cred.ClientID // a service principal's own token
		}
		return Grant{Token: tok, ClientID: client, Resource: r.Resource}, nil
	}
	// The authority's own refusals (4xx) are relayed as IMDS relays
	// Entra ID's: their descriptions are written for the client. A
	// transport error or a server error is not, and is only logged.
	var ae *authclient.Error
	if !errors.As(err, &ae) {
		return Grant{}, asFailure(err)
	}
	switch {
	case ae.Status == http.StatusTooManyRequests:
		f := fail(http.StatusTooManyRequests, "throttled", "the authority throttled the node agent: %s", ae.Description)
		f.RetryAfter = max(ae.RetryAfter, time.Second)
		return Grant{}, f
	case ae.Status == 0:
		return Grant{}, notReady(http.StatusServiceUnavailable, msgUnreachable).because(err)
	case ae.Status >= 500:
		return Grant{}, notReady(http.StatusServiceUnavailable, msgAuthorityFailed, ae.Status).because(err)
	case ae.Status < 300:
		// A success without a usable token is the authority's fault, not
		// a refusal of the caller.
		return Grant{}, notReady(http.StatusServiceUnavailable, msgBadAnswer).because(err)
	case ae.Code == "invalid_request" || ae.Code == "invalid_resource" || ae.Code == "invalid_scope":
		return Grant{}, fail(http.StatusBadRequest, ae.Code, "%s", ae.Description)
	}
	// A refusal without an OAuth code (a proxy's page) still needs one:
	// clients branch on it.
	return Grant{}, fail(http.StatusForbidden, cmp.Or(ae.Code, "unauthorized_client"), "%s", ae.Description)
}
