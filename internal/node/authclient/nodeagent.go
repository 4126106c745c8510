package authclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The node agent's local protocol, spoken by the CSI provider over the
// agent's root-only unix socket.
const (
	// NodeAgentTokenPath answers GET ?mode=pod|vm&namespace=&name=&uid=
	// &resource=[&client_id=] with an IMDS-style token body.
	NodeAgentTokenPath = "/v1/token"
	// PodTokenHeader carries the pod's service-account token, when the CSI
	// driver passed one, so the agent checks the pod itself.
	PodTokenHeader = "X-Pod-Token"
)

// NodeAgent asks Coffer's node agent for pod and node identity tokens.
type NodeAgent struct {
	// Socket is the agent's unix socket path.
	Socket string
	http   *http.Client
}

// NewNodeAgent returns a client of the agent listening on socket.
func NewNodeAgent(socket string) *NodeAgent {
	socket = strings.TrimPrefix(socket, "unix://")
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", socket)
	}, MaxIdleConns: 4, IdleConnTimeout: time.Minute}
	return &NodeAgent{Socket: socket, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// PodRequest is a token request on a pod's behalf.
type PodRequest struct {
	// VM asks for one of the node's identities (useVMManagedIdentity)
	// rather than the pod's bound one (usePodIdentity).
	VM        bool
	Namespace string
	Name      string
	UID       string
	// PodToken is the pod's service-account token, if the driver had one.
	PodToken string
	Resource string
	// ClientID selects a user-assigned identity.
	ClientID string
}

// Token returns a token for r. A refusal is an *Error with the agent's
// status and explanation.
func (n *NodeAgent) Token(ctx context.Context, r PodRequest) (Token, error) {
	mode := "pod"
	if r.VM {
		mode = "vm"
	}
	q := url.Values{"mode": {mode}, "namespace": {r.Namespace}, "name": {r.Name}, "uid": {r.UID}, "resource": {r.Resource}}
	if r.ClientID != "" {
		q.Set("client_id", r.ClientID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://node-agent"+NodeAgentTokenPath+"?"+q.Encode(), nil)
	if err != nil {
		return Token{}, err
	}
	if r.PodToken != "" {
		req.Header.Set(PodTokenHeader, r.PodToken)
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return Token{}, &Error{Description: fmt.Sprintf("the node agent at %s: %v", n.Socket, err), Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return Token{}, &Error{Description: "reading the node agent's answer: " + err.Error()}
	}
	var out struct {
		AccessToken string `json:"access_token"`
		ExpiresOn   string `json:"expires_on"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	json.Unmarshal(body, &out)
	if resp.StatusCode != http.StatusOK || out.AccessToken == "" {
		return Token{}, refusal(resp, out.Error, out.Description)
	}
	exp, err := strconv.ParseInt(out.ExpiresOn, 10, 64)
	if err != nil {
		return Token{}, &Error{Status: resp.StatusCode, Code: "bad_response", Description: "the node agent's answer has no valid expires_on"}
	}
	return Token{Value: out.AccessToken, Expires: time.Unix(exp, 0), Claims: ReadClaims(out.AccessToken)}, nil
}
