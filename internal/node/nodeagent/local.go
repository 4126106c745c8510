package nodeagent

import (
	"net/http"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
)

// LocalHandler serves the CSI provider over the agent's unix socket, which
// only root on the node can open: the provider names the pod it mounts
// for, and the agent checks the pod is on this node with that uid (and,
// when the provider passes the pod's token, that the token is the pod's).
//
//	GET /v1/token?mode=pod|vm&namespace=&name=&uid=&resource=[&client_id=]
//
// mode=pod gives the pod's bound identity (usePodIdentity); mode=vm gives
// one of the node's identities (useVMManagedIdentity, client_id =
// userAssignedIdentityID, none for the system-assigned one).
func (a *Agent) LocalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+authclient.NodeAgentTokenPath, a.serveLocal)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { a.serveHealth(w) })
	return mux
}

func (a *Agent) serveLocal(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.Query()
	req := Request{Resource: q.Get("resource"), Select: authclient.Selector{ClientID: q.Get("client_id")}}
	c, err := a.localCaller(r)
	if err == nil && req.Resource == "" {
		err = fail(http.StatusBadRequest, "invalid_request", "resource is required")
	}
	var g Grant
	if err == nil {
		switch q.Get("mode") {
		case "pod":
			g, err = a.Token(r.Context(), c, req)
		case "vm":
			c.Node = true
			g, err = a.nodeToken(r.Context(), c, req)
		default:
			err = fail(http.StatusBadRequest, "invalid_request", "mode must be pod or vm")
		}
	}
	a.finish(w, "provider", c, req, start, err)
	if err == nil {
		writeJSON(w, http.StatusOK, imdsBody(g))
	}
}

func (a *Agent) localCaller(r *http.Request) (Caller, error) {
	q := r.URL.Query()
	ns, name, uid := q.Get("namespace"), q.Get("name"), q.Get("uid")
	if ns == "" || name == "" || uid == "" {
		return Caller{}, fail(http.StatusBadRequest, "invalid_request", "namespace, name and uid of the pod are required")
	}
	if err := a.synced(); err != nil {
		return Caller{}, err
	}
	if tok := r.Header.Get(authclient.PodTokenHeader); tok != "" {
		c, err := a.callerFromToken(r.Context(), tok, []string{a.cfg.ProviderAudience}, "provider, with the pod's token")
		if err != nil {
			return Caller{}, err
		}
		if c.Pod.Namespace != ns || c.Pod.Name != name || string(c.Pod.UID) != uid {
			return Caller{}, fail(http.StatusForbidden, "unauthorized_client", "the token passed for pod %s/%s belongs to pod %s/%s", ns, name, c.Pod.Namespace, c.Pod.Name)
		}
		return c, nil
	}
	p, err := a.podOnNode(ns, name, uid)
	if err != nil {
		return Caller{}, err
	}
	return a.podCaller(p, "provider")
}
