package etcd

import (
	"context"
	"testing"

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
		b, err := New(context.Background(), Options{Endpoints: c.Endpoints(), Prefix: "/fuzz/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return syncedReads{b}
	})
}
