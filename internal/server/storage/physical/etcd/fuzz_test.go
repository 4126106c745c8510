package etcd

import (
	"context"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

func TestSeedCorpus(t *testing.T) { fuzzseed.Corpus(t, "FuzzKeys", physicaltest.Seeds) }

// FuzzKeys runs the engines' key fuzzer against a one-member etcd, with
// every read synced as a request's is: the engine's prefix and its local
// view must keep any key, and bytewise order, as the other engines do.
func FuzzKeys(f *testing.F) {
	c := etcdtest.Start(f, 1)
	physicaltest.FuzzKeys(f, func(t testing.TB) physical.Backend {
		// Generous deadlines: the fuzzer checks keys, and its one etcd
		// member, on a shared machine, can stall for seconds (a 10-minute
		// run once failed on "no quorum read within 2s" after 12,000
		// inputs). How fast an unreachable store is answered 503 is
		// test/ha's to check; a round that never ends still fails here.
		b, err := New(context.Background(), Options{Endpoints: c.Endpoints(), Prefix: "/fuzz/", RequestTimeout: time.Minute, SyncTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return syncedReads{b}
	})
}
