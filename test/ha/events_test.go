package ha

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/events"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

// Three replicas share one etcd: writes through any of them yield one
// event each, sent by one replica (not one per replica), and after the
// replicas stop one by one, the one left still sends, all of them at least
// once. Access policy changes through two replicas yield one
// VaultAccessPolicyChanged each, sent once.
func TestEventsOneSenderAcrossReplicas(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{} // version -> deliveries
	policyChanges := 0
	rcv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e events.CloudEvent
		b, _ := io.ReadAll(r.Body)
		if json.Unmarshal(b, &e) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch e.Type {
		case "Microsoft.KeyVault.SecretNewVersionCreated":
			got[e.Data.Version]++
		case events.VaultAccessPolicyChanged:
			policyChanges++
		}
	}))
	defer rcv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(rcv.Certificate())
	ha := hatest.Start(t, etcdtest.Start(t, 1), 3, hatest.Options{AllowPrivateEndpoints: true, EgressRoots: roots, EventInterval: 20 * time.Millisecond})
	manage(t, ha.Client(0), "PUT", "vaults/demo/event-subscriptions/all", mgmthttp.EventSubscriptionIn{Endpoint: rcv.URL}, nil)

	ctx := context.Background()
	write := func(replicas []int, n int, from int) []string {
		var versions []string
		for i := range n {
			s, err := secrets(t, ha.Client(replicas[i%len(replicas)]), "demo").SetSecret(ctx, fmt.Sprintf("s%d", from+i), azsecrets.SetSecretParameters{Value: to.Ptr("v")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			versions = append(versions, s.ID.Version())
		}
		return versions
	}
	await := func(versions []string) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			missing := 0
			for _, v := range versions {
				if got[v] == 0 {
					missing++
				}
			}
			mu.Unlock()
			if missing == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d events never arrived", missing, len(versions))
			}
		}
	}
	first := write([]int{0, 1, 2}, 9, 0)
	await(first)
	// A marker written after them arrives after them (one queue, in
	// order), so by then any second sender has had its passes over them.
	await(write([]int{1}, 1, 50))
	mu.Lock()
	for _, v := range first {
		if got[v] != 1 {
			t.Errorf("version %s delivered %d times with no failover; one sender should send it once", v, got[v])
		}
	}
	mu.Unlock()

	// Two changes, through two replicas, each awaited: one event each.
	get := []string{"get"}
	for i, oid := range []string{"5a0c7d1e-0000-4000-8000-0000000000a1", "5a0c7d1e-0000-4000-8000-0000000000a2"} {
		manage(t, ha.Client(1+i), "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: oid, Secrets: &get}, nil)
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			n := policyChanges
			mu.Unlock()
			if n > i {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no VaultAccessPolicyChanged arrived for set-policy %d", i+1)
			}
		}
	}
	await(write([]int{0}, 1, 60)) // in order behind the policy events
	mu.Lock()
	if policyChanges != 2 {
		t.Errorf("%d VaultAccessPolicyChanged for two set-policy calls through two replicas; want one each, from one sender", policyChanges)
	}
	mu.Unlock()

	ha.Stop(0)
	ha.Stop(1)
	await(write([]int{2}, 3, 100))
}
