package nodeagent_test

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/node/authclient"
	"github.com/cofferhq/coffer/internal/node/nodeagent"
	"github.com/cofferhq/coffer/internal/node/podidentity"
)

// imds is an IMDS token request for vault with extra query pairs (which
// replace the defaults when they name api-version or resource).
func imds(pairs ...string) string {
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {vault}}
	for i := 0; i+1 < len(pairs); i += 2 {
		q.Set(pairs[i], pairs[i+1])
	}
	for k, v := range q {
		if len(v) == 1 && v[0] == "" {
			delete(q, k)
		}
	}
	return "/metadata/identity/oauth2/token?" + q.Encode()
}

var metadata = map[string]string{"Metadata": "true"}

func bearerOf(tok string) map[string]string {
	return map[string]string{"Metadata": "true", "Authorization": "Bearer " + tok}
}

// want is the expected answer: a token for client (status 200), or an
// error with status, code, a part of the description and, for the
// transient failures, Retry-After.
type want struct {
	status     int
	client     string
	resource   string
	code       string
	desc       string
	retryAfter int
}

func check(t *testing.T, got answer, w want) {
	t.Helper()
	if got.status != w.status {
		t.Fatalf("status %d, want %d: %s", got.status, w.status, got.raw)
	}
	if ct := got.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want JSON", ct)
	}
	if cc := got.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	if w.status == 200 {
		if got.body["client_id"] != w.client || got.body["access_token"] == "" || got.body["token_type"] != "Bearer" {
			t.Errorf("token body %v, want a token for %s", got.body, w.client)
		}
		if res := cmpOr(w.resource, vault); got.body["resource"] != res {
			t.Errorf("resource %q, want %q", got.body["resource"], res)
		}
		if claims := authclient.ReadClaims(got.body["access_token"]); claims.AppID != w.client {
			t.Errorf("the token is %s's, want %s's", claims.AppID, w.client)
		}
		return
	}
	if got.body["error"] != w.code || !strings.Contains(got.body["error_description"], w.desc) {
		t.Errorf("error %q %q, want %q containing %q", got.body["error"], got.body["error_description"], w.code, w.desc)
	}
	if got.retryAfter() != w.retryAfter {
		t.Errorf("Retry-After %q, want %d", got.header.Get("Retry-After"), w.retryAfter)
	}
	if _, ok := got.body["access_token"]; ok {
		t.Error("an error body carries an access_token")
	}
}

// The IMDS endpoint: what a request needs, how the caller is found, which
// identity it gets, and what each refusal looks like on the wire.
func TestIMDS(t *testing.T) {
	for name, c := range map[string]struct {
		cfg     func(*nodeagent.Config)
		cluster func(*cluster)
		call    call
		want    want
	}{
		// What every request needs.
		"no Metadata header":            {call: call{target: imds()}, want: want{status: 400, code: "invalid_request", desc: "Metadata: true"}},
		"Metadata false":                {call: call{target: imds(), header: map[string]string{"Metadata": "false"}}, want: want{status: 400, code: "invalid_request", desc: "Metadata"}},
		"Metadata in any case":          {call: call{target: imds(), header: map[string]string{"metadata": "TRUE"}}, want: want{status: 200, client: "sys-client"}},
		"no api-version":                {call: call{target: imds("api-version", ""), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "api-version is required"}},
		"api-version not a date":        {call: call{target: imds("api-version", "latest"), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "not a date"}},
		"any dated api-version":         {call: call{target: imds("api-version", "2021-12-13"), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"no resource":                   {call: call{target: imds("resource", ""), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "resource is required"}},
		"blank resource":                {call: call{target: imds("resource", " /.default"), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "resource is required"}},
		"resource with /.default":       {call: call{target: imds("resource", vault+"/.default"), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"resource over 1024 chars":      {call: call{target: imds("resource", "https://"+strings.Repeat("a", 1020)), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "longer than 1024"}},
		"repeated parameter":            {call: call{target: imds() + "&resource=https://other.example", header: metadata}, want: want{status: 400, code: "invalid_request", desc: "resource is repeated"}},
		"two selectors":                 {call: call{target: imds("client_id", "vm-client", "msi_res_id", resID("vm")), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "not 2 of them"}},
		"object_id and principal_id":    {call: call{target: imds("object_id", "vm-oid", "principal_id", "vm-oid"), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "not 2 of them"}},
		"X-Forwarded-For":               {call: call{target: imds(), header: map[string]string{"Metadata": "true", "X-Forwarded-For": "203.0.113.9"}}, want: want{status: 400, code: "invalid_request", desc: "X-Forwarded-For"}},
		"POST":                          {call: call{method: "POST", target: imds(), header: metadata}, want: want{status: 405, code: "invalid_request", desc: "use GET"}},
		"path in another case":          {call: call{target: strings.Replace(imds(), "/metadata/identity/oauth2/token", "/METADATA/Identity/OAuth2/Token", 1), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"path with a trailing slash":    {call: call{target: strings.Replace(imds(), "/token?", "/token/?", 1), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"other metadata path":           {call: call{target: "/metadata/instance?api-version=2021-02-01", header: metadata}, want: want{status: 404, code: "not_found", desc: "/metadata/instance is not available"}},
		"metadata path in another case": {call: call{target: "/Metadata/instance/compute", header: metadata}, want: want{status: 404, code: "not_found", desc: "not available here"}},
		"no such endpoint":              {call: call{target: "/latest/meta-data/"}, want: want{status: 404, code: "not_found", desc: "no such endpoint"}},
		"caches not synced":             {cluster: func(c *cluster) { c.synced = false }, call: call{target: imds(), header: metadata}, want: want{status: 503, code: "temporarily_unavailable", desc: "not synced", retryAfter: 2}},

		// The node, from one of its own addresses.
		"node: system-assigned":             {call: call{target: imds(), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"node: attached by client_id":       {call: call{target: imds("client_id", "VM-CLIENT"), header: metadata}, want: want{status: 200, client: "vm-client"}},
		"node: attached by msi_res_id":      {call: call{target: imds("msi_res_id", resID("vm")), header: metadata}, want: want{status: 200, client: "vm-client"}},
		"node: attached by mi_res_id":       {call: call{target: imds("mi_res_id", strings.ToUpper(resID("vm"))), header: metadata}, want: want{status: 200, client: "vm-client"}},
		"node: attached by object_id":       {call: call{target: imds("object_id", "vm-oid"), header: metadata}, want: want{status: 200, client: "vm-client"}},
		"node: system by principal_id":      {call: call{target: imds("principal_id", "sys-oid"), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"node: another resource":            {call: call{target: imds("resource", "https://management.example/"), header: metadata}, want: want{status: 200, client: "sys-client", resource: "https://management.example/"}},
		"node: identity not attached":       {call: call{target: imds("client_id", "bound-client"), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "Identity not found: client_id bound-client is not one of this node's 2 identities"}},
		"node: object id not attached":      {call: call{target: imds("object_id", "bound-oid"), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "Identity not found: object_id bound-oid"}},
		"node: no system-assigned identity": {cfg: func(c *nodeagent.Config) { c.SystemIdentity = "" }, call: call{target: imds(), header: metadata}, want: want{status: 400, code: "invalid_request", desc: "no system-assigned identity"}},
		"node: attached without system one": {cfg: func(c *nodeagent.Config) { c.SystemIdentity = "" }, call: call{target: imds("client_id", "vm-client"), header: metadata}, want: want{status: 200, client: "vm-client"}},
		"node: callers disabled":            {cfg: func(c *nodeagent.Config) { c.NodeCallers = false }, call: call{target: imds(), header: metadata}, want: want{status: 403, code: "unauthorized_client", desc: "node callers are disabled"}},
		"node: another address":             {call: call{target: imds(), header: metadata, remote: "192.0.2.7"}, want: want{status: 403, code: "unauthorized_client", desc: "is not an address of node node-1"}},

		// Pods, by their service-account token.
		"pod: default identity":                 {call: call{target: imds(), header: bearerOf(podToken("team-a-web")), remote: "10.1.0.5"}, want: want{status: 200, client: "bound-client"}},
		"pod: token from any address":           {call: call{target: imds(), header: bearerOf(podToken("team-a-web")), remote: "192.0.2.7"}, want: want{status: 200, client: "bound-client"}},
		"pod: token from the node":              {call: call{target: imds(), header: bearerOf(podToken("team-a-web"))}, want: want{status: 200, client: "bound-client"}},
		"pod: lower-case bearer":                {call: call{target: imds(), header: map[string]string{"Metadata": "true", "Authorization": "bearer " + podToken("team-a-web")}}, want: want{status: 200, client: "bound-client"}},
		"pod: second by msi_res_id":             {call: call{target: imds("msi_res_id", resID("second")), header: bearerOf(podToken("team-a-web"))}, want: want{status: 200, client: "second-client"}},
		"pod: second by client_id":              {call: call{target: imds("client_id", "second-client"), header: bearerOf(podToken("team-a-web"))}, want: want{status: 200, client: "second-client"}},
		"pod: bound by object_id":               {call: call{target: imds("object_id", "bound-oid"), header: bearerOf(podToken("team-a-web"))}, want: want{status: 200, client: "bound-client"}},
		"pod: not among its bindings":           {call: call{target: imds("client_id", "vm-client"), header: bearerOf(podToken("team-a-web"))}, want: want{status: 400, code: "invalid_request", desc: "Identity not found: client_id vm-client is not among the 2 identities bound to pod team-a/web"}},
		"pod: no binding label":                 {call: call{target: imds(), header: bearerOf(podToken("team-a-nolabel"))}, want: want{status: 400, code: "invalid_request", desc: "Identity not assigned: pod team-a/nolabel"}},
		"pod: no binding selects it":            {call: call{target: imds(), header: bearerOf(podToken("team-a-unbound"))}, want: want{status: 400, code: "invalid_request", desc: `has selector "nothing"`}},
		"pod: of another node":                  {call: call{target: imds(), header: bearerOf(podToken("team-a-far"))}, want: want{status: 403, code: "unauthorized_client", desc: "runs on node node-2, not node-1"}},
		"pod: not in the cache yet":             {call: call{target: imds(), header: bearerOf(podToken("ghost"))}, want: want{status: 404, code: "temporarily_unavailable", desc: "pod team-a/ghost is not on node node-1", retryAfter: 2}},
		"pod: an earlier pod's token":           {call: call{target: imds(), header: bearerOf(podToken("stale-uid"))}, want: want{status: 403, code: "unauthorized_client", desc: "names an earlier pod"}},
		"pod: token refused":                    {call: call{target: imds(), header: bearerOf("not-a-token")}, want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver"}},
		"pod: token of another audience":        {call: call{target: imds(), header: bearerOf(podToken("web-csi"))}, want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver"}},
		"pod: agent audiences":                  {cfg: func(c *nodeagent.Config) { c.TokenAudiences = []string{"api://AzureADTokenExchange"} }, call: call{target: imds(), header: bearerOf(podToken("web-csi"))}, want: want{status: 200, client: "bound-client"}},
		"pod: token not bound to a pod":         {call: call{target: imds(), header: bearerOf(podToken("sa-only"))}, want: want{status: 403, code: "unauthorized_client", desc: "is not bound to a pod"}},
		"pod: excepted is the node":             {call: call{target: imds(), header: bearerOf(podToken("team-a-host"))}, want: want{status: 200, client: "sys-client"}},
		"pod: no exception in its namespace":    {call: call{target: imds(), header: bearerOf(podToken("team-b-host"))}, want: want{status: 400, code: "invalid_request", desc: "Identity not assigned"}},
		"pod: excepted outside node namespaces": {cfg: func(c *nodeagent.Config) { c.NodeIdentityNamespaces = []string{"kube-system"} }, call: call{target: imds(), header: bearerOf(podToken("team-a-host"))}, want: want{status: 403, code: "unauthorized_client", desc: "not in --vm-identity-namespaces"}},
		"pod: excepted inside node namespaces":  {cfg: func(c *nodeagent.Config) { c.NodeIdentityNamespaces = []string{"team-a"} }, call: call{target: imds("client_id", "vm-client"), header: bearerOf(podToken("team-a-host"))}, want: want{status: 200, client: "vm-client"}},
		"pod: highest weight first": {
			cluster: func(c *cluster) { c.snap.Bindings[1].Spec.Weight = 20 },
			call:    call{target: imds(), header: bearerOf(podToken("team-a-web"))}, want: want{status: 200, client: "second-client"},
		},
		"pod: binding of another namespace": {
			cluster: func(c *cluster) { c.snap.Bindings[0].Namespace, c.snap.Bindings[1].Namespace = "team-b", "team-b" },
			call:    call{target: imds(), header: bearerOf(podToken("team-a-web"))}, want: want{status: 400, code: "invalid_request", desc: "Identity not assigned"},
		},

		// Pods by address alone.
		"address: refused in token mode":   {call: call{target: imds(), header: metadata, remote: "10.1.0.5"}, want: want{status: 403, code: "unauthorized_client", desc: "pod team-a/web) carries no service-account token"}},
		"address: source-ip mode":          {cfg: sourceIP, call: call{target: imds(), header: metadata, remote: "10.1.0.5"}, want: want{status: 200, client: "bound-client"}},
		"address: unknown, source-ip":      {cfg: sourceIP, call: call{target: imds(), header: metadata, remote: "10.1.0.99"}, want: want{status: 404, code: "temporarily_unavailable", desc: "no pod on node node-1 has address 10.1.0.99", retryAfter: 2}},
		"address: shared by two pods":      {cfg: sourceIP, call: call{target: imds(), header: metadata, remote: "10.1.0.9"}, want: want{status: 403, code: "unauthorized_client", desc: "2 pods on this node have address 10.1.0.9"}},
		"address: pod of another node":     {cfg: sourceIP, call: call{target: imds(), header: metadata, remote: "10.2.0.5"}, want: want{status: 404, code: "temporarily_unavailable", desc: "has address 10.2.0.5", retryAfter: 2}},
		"address: the node in source-ip":   {cfg: sourceIP, call: call{target: imds(), header: metadata}, want: want{status: 200, client: "sys-client"}},
		"address: token wins":              {cfg: sourceIP, call: call{target: imds(), header: bearerOf(podToken("team-a-web")), remote: "10.1.0.6"}, want: want{status: 200, client: "bound-client"}},
		"address: bad token never ignored": {cfg: sourceIP, call: call{target: imds(), header: bearerOf("not-a-token"), remote: "10.1.0.5"}, want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver"}},

		// The authority's answers, as IMDS clients expect them.
		"authority: throttled":                 {call: call{target: imds("resource", resThrottled), header: metadata}, want: want{status: 429, code: "throttled", desc: "too many requests", retryAfter: 7}},
		"authority: failing":                   {call: call{target: imds("resource", resBroken), header: metadata}, want: want{status: 503, code: "temporarily_unavailable", retryAfter: 2}},
		"authority: an answer without a token": {call: call{target: imds("resource", resGarbled), header: metadata}, want: want{status: 503, code: "temporarily_unavailable", desc: "no usable token", retryAfter: 2}},
		"authority: a proxy's refusal":         {call: call{target: imds("resource", resProxied), header: metadata}, want: want{status: 403, code: "unauthorized_client", desc: "Not Found"}},
		"authority: invalid resource":          {call: call{target: imds("resource", resInvalid), header: metadata}, want: want{status: 400, code: "invalid_resource", desc: "AADSTS500011"}},
		"authority: not an operator":           {cfg: func(c *nodeagent.Config) { c.VMIdentities = append(c.VMIdentities, "stranger-client") }, call: call{target: imds("client_id", "stranger-client"), header: metadata}, want: want{status: 403, code: "unauthorized_client", desc: "Managed Identity Operator"}},
		"authority: wrong agent secret":        {cfg: func(c *nodeagent.Config) { c.AgentSecret = "wrong" }, call: call{target: imds(), header: metadata}, want: want{status: 403, code: "invalid_client", desc: "AADSTS7000215"}},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			if c.cluster != nil {
				c.cluster(cl)
			}
			w := newWorld(t, cl, c.cfg)
			check(t, serve(t, w.agent.Handler(), c.call), c.want)
		})
	}
}

func sourceIP(c *nodeagent.Config) { c.Lookup = nodeagent.LookupSourceIP }

// The IMDS answer is a JSON object of strings whose times agree with the
// token's.
func TestIMDSBody(t *testing.T) {
	w := newWorld(t, newCluster(), nil)
	got := serve(t, w.agent.Handler(), call{target: imds(), header: metadata})
	check(t, got, want{status: 200, client: "sys-client"})
	exp := authclient.ReadClaims(got.body["access_token"]).Expiry
	if got.body["expires_on"] != strconv.FormatInt(exp, 10) {
		t.Errorf("expires_on %s, want the token's exp %d", got.body["expires_on"], exp)
	}
	in, err := strconv.Atoi(got.body["expires_in"])
	if err != nil || in <= 0 || in > 3600 || got.body["ext_expires_in"] != got.body["expires_in"] {
		t.Errorf("expires_in %q, ext_expires_in %q: want the seconds left, both", got.body["expires_in"], got.body["ext_expires_in"])
	}
	for _, k := range []string{"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before", "resource", "token_type"} {
		if _, ok := got.body[k]; !ok {
			t.Errorf("no %s in %v", k, got.body)
		}
	}
	if len(got.body) != 8 {
		t.Errorf("fields %v, want IMDS's eight", got.body)
	}
}

// The App Service protocol: X-IDENTITY-HEADER is the node's shared secret
// (and the caller is then found as for IMDS) or the pod's token.
func TestAppService(t *testing.T) {
	const shared = "shared-identity-header"
	withHeader := func(c *nodeagent.Config) { c.IdentityHeader = shared }
	target := "/msi/token?api-version=" + nodeagent.AppServiceAPIVersion + "&resource=" + url.QueryEscape(vault)
	for name, c := range map[string]struct {
		cfg     func(*nodeagent.Config)
		cluster func(*cluster)
		call    call
		want    want
	}{
		"shared header, node caller":     {cfg: withHeader, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared}}, want: want{status: 200, client: "sys-client"}},
		"shared header, pod token":       {cfg: withHeader, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared, "Authorization": "Bearer " + podToken("team-a-web")}}, want: want{status: 200, client: "bound-client"}},
		"shared header, pod address":     {cfg: withHeader, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared}, remote: "10.1.0.5"}, want: want{status: 403, code: "unauthorized_client", desc: "carries no service-account token"}},
		"pod token as the header":        {call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": podToken("team-a-web")}}, want: want{status: 200, client: "bound-client"}},
		"pod token selects by client_id": {call: call{target: target + "&client_id=second-client", header: map[string]string{"X-IDENTITY-HEADER": podToken("team-a-web")}}, want: want{status: 200, client: "second-client"}},
		"refused token as the header":    {call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": "sa.unknown.sig"}}, want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver"}},
		"wrong shared header":            {cfg: withHeader, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared + "x"}}, want: want{status: 401, code: "unauthorized_client", desc: "neither the node's identity header"}},
		"shared header not configured":   {call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared}}, want: want{status: 401, code: "unauthorized_client"}},
		"no header":                      {cfg: withHeader, call: call{target: target}, want: want{status: 400, code: "invalid_request", desc: "X-IDENTITY-HEADER is required"}},
		"IMDS api-version":               {cfg: withHeader, call: call{target: strings.Replace(target, nodeagent.AppServiceAPIVersion, "2018-02-01", 1), header: map[string]string{"X-IDENTITY-HEADER": shared}}, want: want{status: 400, code: "invalid_request", desc: "api-version=2019-08-01"}},
		"no resource":                    {cfg: withHeader, call: call{target: "/msi/token?api-version=" + nodeagent.AppServiceAPIVersion, header: map[string]string{"X-IDENTITY-HEADER": shared}}, want: want{status: 400, code: "invalid_request", desc: "resource is required"}},
		"X-Forwarded-For":                {cfg: withHeader, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": shared, "X-Forwarded-For": "203.0.113.9"}}, want: want{status: 400, code: "invalid_request", desc: "X-Forwarded-For"}},
		"path in another case":           {cfg: withHeader, call: call{target: strings.Replace(target, "/msi/token", "/MSI/Token", 1), header: map[string]string{"X-IDENTITY-HEADER": shared}}, want: want{status: 200, client: "sys-client"}},
		"token header while not synced":  {cluster: func(c *cluster) { c.synced = false }, call: call{target: target, header: map[string]string{"X-IDENTITY-HEADER": podToken("team-a-web")}}, want: want{status: 503, code: "temporarily_unavailable", desc: "not synced", retryAfter: 2}},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			if c.cluster != nil {
				c.cluster(cl)
			}
			w := newWorld(t, cl, c.cfg)
			got := serve(t, w.agent.Handler(), c.call)
			check(t, got, c.want)
			if got.status == 200 {
				exp := authclient.ReadClaims(got.body["access_token"]).Expiry
				if got.body["expires_on"] != strconv.FormatInt(exp, 10) || len(got.body) != 5 {
					t.Errorf("body %v: want access_token, expires_on, resource, token_type and client_id", got.body)
				}
			}
		})
	}
}

// The provider's endpoint on the local socket: the provider names the
// pod, and the agent checks it (and its token, when one is passed).
func TestLocal(t *testing.T) {
	web := url.Values{"mode": {"pod"}, "namespace": {"team-a"}, "name": {"web"}, "uid": {"uid-web"}, "resource": {vault}}
	q := func(change ...string) string {
		v := url.Values{}
		for k, vs := range web {
			v[k] = vs
		}
		for i := 0; i+1 < len(change); i += 2 {
			if change[i+1] == "" {
				v.Del(change[i])
			} else {
				v.Set(change[i], change[i+1])
			}
		}
		return authclient.NodeAgentTokenPath + "?" + v.Encode()
	}
	podTok := func(tok string) map[string]string { return map[string]string{authclient.PodTokenHeader: tok} }
	for name, c := range map[string]struct {
		cfg     func(*nodeagent.Config)
		cluster func(*cluster)
		call    call
		want    want
	}{
		"pod mode":                    {call: call{target: q()}, want: want{status: 200, client: "bound-client"}},
		"pod mode, client_id":         {call: call{target: q("client_id", "second-client")}, want: want{status: 200, client: "second-client"}},
		"pod mode, not bound":         {call: call{target: q("client_id", "vm-client")}, want: want{status: 400, code: "invalid_request", desc: "Identity not found"}},
		"pod mode, with its token":    {call: call{target: q(), header: podTok(podToken("web-csi"))}, want: want{status: 200, client: "bound-client"}},
		"token of the wrong audience": {call: call{target: q(), header: podTok(podToken("team-a-web"))}, want: want{status: 403, code: "unauthorized_client", desc: "refused by the apiserver"}},
		"token of another pod":        {call: call{target: q("name", "nolabel", "uid", "uid-nolabel"), header: podTok(podToken("web-csi"))}, want: want{status: 403, code: "unauthorized_client", desc: "belongs to pod team-a/web"}},
		"custom provider audience": {
			cfg: func(c *nodeagent.Config) { c.ProviderAudience = "api://custom" },
			cluster: func(c *cluster) {
				r := c.reviews[podToken("web-csi")]
				r.audiences = []string{"api://custom"}
				c.reviews[podToken("web-csi")] = r
			},
			call: call{target: q(), header: podTok(podToken("web-csi"))}, want: want{status: 200, client: "bound-client"},
		},
		"vm mode, system-assigned":   {call: call{target: q("mode", "vm")}, want: want{status: 200, client: "sys-client"}},
		"vm mode, attached":          {call: call{target: q("mode", "vm", "client_id", "vm-client")}, want: want{status: 200, client: "vm-client"}},
		"vm mode, not attached":      {call: call{target: q("mode", "vm", "client_id", "bound-client")}, want: want{status: 400, code: "invalid_request", desc: "Identity not found"}},
		"vm mode, namespace refused": {cfg: func(c *nodeagent.Config) { c.NodeIdentityNamespaces = []string{"kube-system"} }, call: call{target: q("mode", "vm")}, want: want{status: 403, code: "unauthorized_client", desc: "--vm-identity-namespaces"}},
		"unknown mode":               {call: call{target: q("mode", "node")}, want: want{status: 400, code: "invalid_request", desc: "mode must be pod or vm"}},
		"no resource":                {call: call{target: q("resource", "")}, want: want{status: 400, code: "invalid_request", desc: "resource is required"}},
		"no uid":                     {call: call{target: q("uid", "")}, want: want{status: 400, code: "invalid_request", desc: "namespace, name and uid"}},
		"wrong uid":                  {call: call{target: q("uid", "uid-earlier-web")}, want: want{status: 403, code: "unauthorized_client", desc: "names an earlier pod"}},
		"pod of another node":        {call: call{target: q("name", "far", "uid", "uid-far")}, want: want{status: 404, code: "temporarily_unavailable", desc: "not on node node-1", retryAfter: 2}},
		"not synced":                 {cluster: func(c *cluster) { c.synced = false }, call: call{target: q()}, want: want{status: 503, code: "temporarily_unavailable", desc: "not synced", retryAfter: 2}},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			if c.cluster != nil {
				c.cluster(cl)
			}
			w := newWorld(t, cl, c.cfg)
			check(t, serve(t, w.agent.LocalHandler(), c.call), c.want)
		})
	}
	t.Run("IMDS paths are not served there", func(t *testing.T) {
		w := newWorld(t, newCluster(), nil)
		if got := serve(t, w.agent.LocalHandler(), call{target: imds(), header: metadata}); got.status != 404 {
			t.Fatalf("status %d, want 404", got.status)
		}
	})
}

// Health follows the caches, on both handlers.
func TestHealth(t *testing.T) {
	cl := newCluster()
	w := newWorld(t, cl, nil)
	for _, h := range []struct {
		name string
		get  func() answer
	}{
		{"imds", func() answer { return serve(t, w.agent.Handler(), call{target: "/healthz"}) }},
		{"local", func() answer { return serve(t, w.agent.LocalHandler(), call{target: "/healthz"}) }},
	} {
		cl.set(func(c *cluster) { c.synced = false })
		if got := h.get(); got.status != 503 {
			t.Errorf("%s before sync: %d, want 503", h.name, got.status)
		}
		cl.set(func(c *cluster) { c.synced = true })
		if got := h.get(); got.status != 200 || got.raw != "ok" {
			t.Errorf("%s after sync: %d %q, want 200 ok", h.name, got.status, got.raw)
		}
	}
}

// The review cache: a pod's steady requests cost one TokenReview until the
// token expires (at most five minutes), and a refused token is remembered
// for 30 seconds.
func TestReviewCache(t *testing.T) {
	for name, c := range map[string]struct {
		token   string
		expires time.Duration // the review's token expiry; 0 for none
		status  int
		// after, the clock moves on and how many reviews were made then.
		steps []step
	}{
		"good token, no expiry": {token: podToken("team-a-web"), status: 200,
			steps: []step{{0, 1}, {time.Minute, 1}, {3*time.Minute + 59*time.Second, 1}, {time.Second, 2}, {time.Second, 2}}},
		"good token, expiring soon": {token: podToken("team-a-web"), expires: 90 * time.Second, status: 200,
			steps: []step{{0, 1}, {89 * time.Second, 1}, {time.Second, 2}}},
		"refused token": {token: "not-a-token", status: 403,
			steps: []step{{0, 1}, {29 * time.Second, 1}, {time.Second, 2}, {10 * time.Second, 2}}},
		"token not bound to a pod": {token: podToken("sa-only"), status: 403,
			steps: []step{{0, 1}, {29 * time.Second, 1}, {time.Second, 2}}},
	} {
		t.Run(name, func(t *testing.T) {
			cl := newCluster()
			w := newWorld(t, cl, nil)
			if c.expires > 0 {
				r := cl.reviews[c.token]
				r.rv.Expires = w.clock.Now().Add(c.expires)
				cl.reviews[c.token] = r
			}
			for i, s := range c.steps {
				w.clock.Add(s.advance)
				got := serve(t, w.agent.Handler(), call{target: imds(), header: bearerOf(c.token)})
				if got.status != c.status {
					t.Fatalf("request %d: status %d, want %d: %s", i, got.status, c.status, got.raw)
				}
				if n := cl.reviewCount(); n != s.reviews {
					t.Fatalf("request %d (+%s): %d reviews, want %d", i, s.advance, n, s.reviews)
				}
			}
		})
	}
	t.Run("audiences are part of the key", func(t *testing.T) {
		cl := newCluster()
		w := newWorld(t, cl, nil)
		tok := podToken("web-csi")
		// Refused at the IMDS endpoint (the apiserver's audience) ...
		if got := serve(t, w.agent.Handler(), call{target: imds(), header: bearerOf(tok)}); got.status != 403 {
			t.Fatalf("IMDS: %d, want 403", got.status)
		}
		// ... yet good for the provider, whose audience it has: the
		// cached refusal must not answer for another audience.
		target := authclient.NodeAgentTokenPath + "?mode=pod&namespace=team-a&name=web&uid=uid-web&resource=" + url.QueryEscape(vault)
		if got := serve(t, w.agent.LocalHandler(), call{target: target, header: map[string]string{authclient.PodTokenHeader: tok}}); got.status != 200 {
			t.Fatalf("provider: %d, want 200: %s", got.status, got.raw)
		}
		if n := cl.reviewCount(); n != 2 {
			t.Fatalf("%d reviews, want one per audience", n)
		}
	})
}

type step struct {
	advance time.Duration
	reviews int
}

// A pod's identity follows the bindings as they are now: the agent reads
// the snapshot on each request.
func TestBindingChange(t *testing.T) {
	cl := newCluster()
	w := newWorld(t, cl, nil)
	req := call{target: imds(), header: bearerOf(podToken("team-a-web"))}
	check(t, serve(t, w.agent.Handler(), req), want{status: 200, client: "bound-client"})
	cl.set(func(c *cluster) { c.snap.Bindings = nil })
	check(t, serve(t, w.agent.Handler(), req), want{status: 400, code: "invalid_request", desc: "Identity not assigned"})
	cl.set(func(c *cluster) {
		c.snap.Bindings = []podidentity.AzureIdentityBinding{binding("team-a", "b", "second", "web", 0)}
	})
	check(t, serve(t, w.agent.Handler(), req), want{status: 200, client: "second-client"})
}

// A pod that floods the agent gets 429 with Retry-After past its limit,
// while another caller (the node) is still served between its requests.
func TestPodFlood(t *testing.T) {
	w := newWorld(t, newCluster(), func(c *nodeagent.Config) { c.PodRate, c.PodBurst = 1, 20 })
	h := w.agent.Handler()
	flood := call{target: imds(), header: bearerOf(podToken("team-a-web")), remote: "10.1.0.5"}
	start := time.Now()
	served, refused := 0, 0
	for i := range 200 {
		got := serve(t, h, flood)
		switch got.status {
		case 200:
			served++
		case 429:
			refused++
			if got.body["error"] != "too_many_requests" || !strings.Contains(got.body["error_description"], "source address 10.1.0.5") || got.retryAfter() < 1 {
				t.Fatalf("a refusal: %v, Retry-After %q", got.body, got.header.Get("Retry-After"))
			}
		default:
			t.Fatalf("status %d: %s", got.status, got.raw)
		}
		if i%10 == 0 {
			check(t, serve(t, h, call{target: imds(), header: metadata}), want{status: 200, client: "sys-client"})
		}
	}
	if most := 20 + int(time.Since(start).Seconds()) + 1; served > most || refused == 0 {
		t.Fatalf("%d served and %d refused of 200 from one pod, want at most %d served", served, refused, most)
	}
}
