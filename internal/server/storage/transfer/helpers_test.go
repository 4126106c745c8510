package transfer

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/bolt"
	"github.com/cofferhq/coffer/internal/server/storage/physical/etcd"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
)

// engines opens empty stores of every engine; the etcd ones are prefixes
// of one cluster.
type engines struct {
	cluster *etcdtest.Cluster
	n       atomic.Int64
}

func newEngines(t *testing.T) *engines { return &engines{cluster: etcdtest.Start(t, 1)} }

var engineNames = []string{"bolt", "etcd", "inmem"}

func (e *engines) open(t *testing.T, name string) physical.Backend {
	t.Helper()
	var b physical.Backend
	var err error
	switch name {
	case "bolt":
		b, err = bolt.Open(filepath.Join(t.TempDir(), "coffer.db"))
	case "etcd":
		b, err = etcd.New(context.Background(), etcd.Options{Endpoints: e.cluster.Endpoints(), Prefix: fmt.Sprintf("/t%d/", e.n.Add(1))})
	case "inmem":
		b = inmem.New()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// fill seals n values into b through a barrier, as a server would: a
// keyring and sealed blobs. Each value holds its key, so canaries can be
// looked for.
func fill(t *testing.T, b physical.Backend, root rootkey.Key, n, size int) *barrier.Barrier {
	t.Helper()
	ctx := context.Background()
	br, err := barrier.Open(ctx, b, root)
	if err != nil {
		t.Fatal(err)
	}
	for start := 0; start < n; start += 50 {
		var ops []barrier.Op
		for i := start; i < min(n, start+50); i++ {
			v := fmt.Appendf(nil, "value of %d ", i)
			for len(v) < size {
				v = append(v, 'x')
			}
			ops = append(ops, barrier.Op{Key: fmt.Sprintf("o/demo/secrets/v/s%05d/x", i), Value: v})
		}
		if err := br.Apply(ctx, nil, ops); err != nil {
			t.Fatal(err)
		}
	}
	return br
}

// entries reads every entry of b, as a copy compares them.
func entries(t *testing.T, b physical.Backend) []physical.Entry {
	t.Helper()
	var out []physical.Entry
	if err := (Store{B: b}).Walk(context.Background(), func(e physical.Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameEntries(t *testing.T, a, b physical.Backend) {
	t.Helper()
	ea, eb := entries(t, a), entries(t, b)
	if len(ea) != len(eb) {
		t.Fatalf("source has %d entries, target %d", len(ea), len(eb))
	}
	for i := range ea {
		if ea[i].Key != eb[i].Key || string(ea[i].Value) != string(eb[i].Value) {
			t.Fatalf("entry %d: source %q, target %q (or their values differ)", i, ea[i].Key, eb[i].Key)
		}
	}
}

var errCrash = errors.New("the process died here")

// crashAfter is a real engine as a crash leaves it: the first n batches
// commit, and from then on every write fails, as if the process had died
// between two batches. (A wrapper, not a mock: the engine below is real,
// and only the moment of the crash is chosen.)
type crashAfter struct {
	physical.Backend
	n, applied int
}

func (c *crashAfter) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	if c.applied >= c.n {
		return errCrash
	}
	c.applied++
	return c.Backend.Apply(ctx, conds, ops)
}

// recorder is a real engine that records the size of every batch written
// to it.
type recorder struct {
	physical.Backend
	ops, bytes []int
}

func (r *recorder) Apply(ctx context.Context, conds []physical.Cond, ops []physical.Op) error {
	n := 0
	for _, c := range conds {
		n += len(c.Key) + len(c.Value)
	}
	for _, o := range ops {
		n += len(o.Key) + len(o.Value)
	}
	r.ops, r.bytes = append(r.ops, len(ops)), append(r.bytes, n)
	return r.Backend.Apply(ctx, conds, ops)
}
