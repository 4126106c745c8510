package bench

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cofferhq/coffer/internal/cli/bench"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/testing/etcdtest"
	"github.com/cofferhq/coffer/internal/testing/hatest"
)

// replicaConns opens the workers' connections to replica 0 of ha.
func replicaConns(b *testing.B, ha *hatest.Cluster) []*bench.Conn {
	roots, err := httpclient.RootPool(ha.Admin.CAFile)
	if err != nil {
		b.Fatal(err)
	}
	addr := ha.Addr(0)
	conns := make([]*bench.Conn, workers)
	for i := range conns {
		c, err := bench.Dial(b.Context(), ha.Admin.VaultURL, roots, func(string) string { return addr })
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}

func haToken(b *testing.B, ha *hatest.Cluster) string {
	tok, err := ha.Client(0).Token(b.Context(), ha.Endpoints.Resource())
	if err != nil {
		b.Fatal(err)
	}
	return tok
}

// BenchmarkSecretGetEtcd is BenchmarkSecretGetHTTPS on the etcd engine,
// every request made linearizable by its Sync (a quorum read of the
// revision, shared by the requests waiting): members=1 is one etcd member,
// members=3 a 3-member cluster whose members share this machine's cores
// with the server and the load. Read them against BenchmarkSecretGetHTTPS
// of the same run.
func BenchmarkSecretGetEtcd(b *testing.B) {
	for _, members := range []int{1, 3} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) { benchGetEtcd(b, members) })
	}
}

func benchGetEtcd(b *testing.B, members int) {
	ha := hatest.Start(b, etcdtest.Start(b, members), 1, hatest.Options{})
	tok := haToken(b, ha)
	conns := replicaConns(b, ha)
	if status, err := conns[0].Do("PUT", getPath, tok, []byte(`{"value":"`+strings.Repeat("v", 64)+`"}`)); err != nil || status != 200 {
		b.Fatalf("PUT: %d %v", status, err)
	}
	runParallel(b, conns, func(c *bench.Conn) (int, error) { return c.Do("GET", getPath, tok, nil) })
}

// BenchmarkSecretPutEtcd is a durable PUT through a 3-member etcd cluster:
// acknowledged once a quorum has it on disk.
func BenchmarkSecretPutEtcd(b *testing.B) {
	ha := hatest.Start(b, etcdtest.Start(b, 3), 1, hatest.Options{})
	tok := haToken(b, ha)
	conns := replicaConns(b, ha)
	body := []byte(`{"value":"` + strings.Repeat("v", 64) + `"}`)
	var n atomic.Int64
	runParallel(b, conns, func(c *bench.Conn) (int, error) {
		return c.Do("PUT", fmt.Sprintf("/secrets/w%d?api-version=7.6", n.Add(1)%256), tok, body)
	})
}
