package ha

import (
	"context"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/node/kvclient"
	"github.com/cofferhq/coffer/internal/protocol/vaultwatch"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

// A vault watch held on one replica reports another replica's write with
// the tag a read answers, and another replica's revocation with Dropped,
// never with the writes that follow it: the watch follows the store's
// watch, and authorizes against the state every replica shares.
func TestVaultWatchAcrossReplicas(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	ha := hatest.Start(t, etcd, 2, hatest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := ha.Client(0)
	var sp mgmthttp.SPOut
	manage(t, a, "POST", "service-principals", mgmthttp.CreateSPIn{DisplayName: "watcher"}, &sp)
	getPerm := []string{"get"}
	manage(t, a, "POST", "vaults/demo/set-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &getPerm}, nil)
	set := func(value string) {
		t.Helper()
		if _, err := secrets(t, a, "demo").SetSecret(ctx, "pushed", azsecrets.SetSecretParameters{Value: to.Ptr(value)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	set("before")
	tok := spToken(t, ha, 1, sp.AppID, sp.Password)
	kv := &kvclient.Client{HTTP: ha.HTTP(1)}
	ws, err := kv.OpenWatch(ctx, ha.Endpoints.AuthorityURL(), tok, []vaultwatch.Object{{Vault: "demo", Kind: vaultwatch.Secrets, Name: "pushed", ETag: etagOf(t, ha, 1, tok)}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	records := make(chan vaultwatch.Record, 16)
	go func() {
		defer close(records)
		for {
			rec, err := ws.Next()
			if err != nil {
				return
			}
			records <- rec
		}
	}()
	next := func() vaultwatch.Record {
		t.Helper()
		select {
		case rec, ok := <-records:
			if !ok {
				t.Fatal("the watch ended")
			}
			return rec
		case <-time.After(20 * time.Second):
			t.Fatal("no record for 20 s")
		}
		return vaultwatch.Record{}
	}
	if rec := next(); rec.Type != vaultwatch.Ready {
		t.Fatalf("first record %+v, want Ready", rec)
	}
	set("after")
	if rec, want := next(), etagOf(t, ha, 1, tok); rec.Type != vaultwatch.Changed || rec.ETag != want {
		t.Fatalf("after replica a's write: %+v, want Changed to %s", rec, want)
	}
	manage(t, a, "POST", "vaults/demo/delete-policy", mgmthttp.PolicyIn{ObjectID: sp.ObjectID, Secrets: &getPerm}, nil)
	set("after the revocation")
	for rec := next(); rec.Type != vaultwatch.Dropped; rec = next() {
		if rec.Type != vaultwatch.Authorized {
			t.Fatalf("after replica a's revocation: %+v, want Dropped", rec)
		}
	}
}
