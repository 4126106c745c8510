package physical

import (
	"context"
	"strings"
)

// LeasePrefix holds the keys an engine keeps for its own coordination and
// binds to a process's lifetime: the etcd engine's elections, whose keys
// vanish with their leases. They are not the store's data, so tools that
// copy, compare or check a store pass over them.
const LeasePrefix = "leader/"

// IsLease reports whether key is under LeasePrefix.
func IsLease(key string) bool { return strings.HasPrefix(key, LeasePrefix) }

// Walker is implemented by engines that can read every key at one point in
// time: the bolt engine within one read transaction, the etcd engine with
// every page at one revision. Offline tools (snapshots, migrations, the
// store check) use it, so that what they read is a state the store was in,
// even if a writer was busy meanwhile.
type Walker interface {
	// ForEach calls fn, in key order, for every entry whose key starts with
	// prefix, as the store was when ForEach began; keys under LeasePrefix
	// are left out. fn must not write to the same store (a bolt write may
	// wait for the read to end). An error from fn stops the walk and is
	// returned.
	ForEach(ctx context.Context, prefix string, fn func(Entry) error) error
}

// walkPage is the page size of Walk's fallback.
const walkPage = 500

// Walk calls fn for every entry under prefix in key order, leaving out
// LeasePrefix. On a Walker it reads at one point in time; on another
// engine it pages through Scan, which is only consistent if no one writes.
func Walk(ctx context.Context, b Backend, prefix string, fn func(Entry) error) error {
	if w, ok := b.(Walker); ok {
		return w.ForEach(ctx, prefix, fn)
	}
	after := ""
	for {
		page, err := b.Scan(ctx, prefix, after, walkPage)
		if err != nil {
			return err
		}
		for _, e := range page {
			after = e.Key
			if IsLease(e.Key) {
				continue
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page) < walkPage {
			return nil
		}
	}
}
