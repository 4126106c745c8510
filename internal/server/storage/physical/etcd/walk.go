package etcd

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// walkPage bounds one page of ForEach.
const walkPage = 500

var _ physical.Walker = (*Backend)(nil)

// ForEach implements physical.Walker: every page is read at the revision of
// the first, so the walk sees the prefix as it was at that revision, however
// many writes other processes commit meanwhile. It reads the cluster, not
// the local view.
func (b *Backend) ForEach(ctx context.Context, prefix string, fn func(physical.Entry) error) error {
	if b.isClosed() {
		return physical.ErrClosed
	}
	from := b.prefix + prefix
	end := clientv3.GetPrefixRangeEnd(from)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(walkPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		cctx, cancel := b.call(ctx)
		resp, err := b.cli.Get(cctx, from, opts...)
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("etcd: revision %d was compacted while it was being read; run again (or raise etcd's --auto-compaction-retention): %w", rev, err)
		}
		if err != nil {
			return b.unavailable("read at one revision", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			k := b.keyOf(kv)
			if physical.IsLease(k) {
				continue
			}
			if err := fn(physical.Entry{Key: k, Value: kv.Value}); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
