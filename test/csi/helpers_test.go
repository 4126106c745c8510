// Package csi tests Coffer's Secrets Store CSI provider and driver against
// a live Coffer server, the upstream driver's own provider-client code, the
// upstream fake provider, csi-test's sanity suite, real tmpfs mounts and a
// real kube-apiserver.
package csi

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cofferhq/coffer/internal/node/provider"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/providertest"
	"github.com/cofferhq/coffer/internal/testing/testserver"
)

// runningProvider is Coffer's provider on a unix socket in a temp dir,
// built by the provider daemon's own entry point.
type runningProvider struct{ *providertest.Provider }

func startProvider(t testing.TB, env *testserver.Env, name string) *runningProvider {
	t.Helper()
	return startProviderWith(t, env, name, env.Endpoints.Apex(), "")
}

// startProviderAt starts a provider that looks for vaults and the
// authority at suffix (host:port).
func startProviderAt(t testing.TB, env *testserver.Env, name, suffix string) *runningProvider {
	t.Helper()
	return startProviderWith(t, env, name, suffix, "")
}

// startProviderWith starts a provider that gets pod and VM identity tokens
// from the node agent on agentSocket (a path; empty: no node agent).
func startProviderWith(t testing.TB, env *testserver.Env, name, suffix, agentSocket string) *runningProvider {
	t.Helper()
	if agentSocket != "" {
		agentSocket = "unix://" + agentSocket
	}
	return &runningProvider{providertest.Start(t, name, provider.Options{
		VaultSuffix: suffix, CAFile: env.Admin.CAFile, NodeAgentSocket: agentSocket})}
}

// vaultRequests reads the provider's counter of vault reads with result.
func (p *runningProvider) vaultRequests(t testing.TB, result string) float64 {
	t.Helper()
	total := 0.0
	for _, typ := range []string{"secret", "key", "cert"} {
		total += testutil.ToFloat64(metricVec(t, p.Reg, "coffer_provider_vault_requests_total", typ, result))
	}
	return total
}

// metricVec finds one labelled counter in a registry.
func metricVec(t testing.TB, reg *prometheus.Registry, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for i, l := range m.GetLabel() {
				if l.GetValue() != labels[i] {
					continue metrics
				}
			}
			c.Add(m.GetCounter().GetValue())
		}
	}
	return c
}

// servicePrincipal creates a service principal with the given permissions
// on vault demo and returns its credentials.
func servicePrincipal(t testing.TB, env *testserver.Env, name string, secrets, keys, certs []string) mgmthttp.SPOut {
	t.Helper()
	ctx := context.Background()
	var sp mgmthttp.SPOut
	if err := env.Client.Manage(ctx, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: name}, &sp); err != nil {
		t.Fatal(err)
	}
	in := mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &secrets, Keys: &keys, Certificates: &certs}
	if err := env.Client.Manage(ctx, "POST", "vaults/demo/set-policy", in, nil); err != nil {
		t.Fatal(err)
	}
	return sp
}

// setSecret stores a secret in vault demo and returns its version.
func setSecret(t testing.TB, env *testserver.Env, name, value string) string {
	t.Helper()
	sc, err := env.Client.Secrets("demo")
	if err != nil {
		t.Fatal(err)
	}
	r, err := sc.SetSecret(context.Background(), name, azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.ID.Version()
}

// objects renders the objects parameter from one YAML mapping per object.
func objects(objs ...string) string {
	var b strings.Builder
	b.WriteString("array:\n")
	for _, o := range objs {
		b.WriteString("  - |\n")
		for _, line := range strings.Split(strings.TrimSpace(o), "\n") {
			b.WriteString("    " + strings.TrimSpace(line) + "\n")
		}
	}
	return b.String()
}

// spAttributes are the SPC parameters for vault demo with a service
// principal from nodePublishSecretRef.
func spAttributes(env *testserver.Env, objs string) map[string]string {
	return map[string]string{"keyvaultName": "demo", "tenantId": env.State.TenantID, "objects": objs,
		"csi.storage.k8s.io/pod.name": "app", "csi.storage.k8s.io/pod.namespace": "default"}
}

func spSecrets(sp mgmthttp.SPOut) map[string]string {
	return map[string]string{"clientid": sp.AppID, "clientsecret": sp.Password}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
