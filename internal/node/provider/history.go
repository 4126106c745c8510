package provider

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/cofferhq/coffer/internal/node/kvclient"
)

// historyOf chooses the versions that objectVersionHistory n writes, in
// file order: {file}/0 is pinned when one is given, otherwise current (the
// version a read without a version returns; "" when that read was refused
// because it is disabled), and the rest are the enabled versions older
// than it, newest first.
//
// attributes.created is whole seconds, so versions written within one
// second tie on it, and nothing in Key Vault's protocol orders them: Azure
// documents no order for a versions listing (it lists by version id, which
// is random). Two facts are sure, and decide what they can:
//  1. The current version is the newest. items was listed before current
//     was read, so every other listed version is older, even one that ties
//     with it; and a current missing from items was created since.
//  2. Ties among the other versions keep the listing's order (the sort is
//     stable). Coffer lists versions newest first in true creation order
//     and documents it, so against Coffer the order is exact; against
//     another vault, ties within one second come out in its order.
//
// ok is false when pinned is not an enabled version.
func historyOf(items []kvclient.Item, current, pinned string, n int) (versions []string, ok bool) {
	sorted := slices.Clone(items)
	slices.SortStableFunc(sorted, func(a, b kvclient.Item) int { return cmp.Compare(b.Attributes.Created, a.Attributes.Created) })
	ids := make([]string, 0, len(sorted)+1)
	if current != "" {
		i := slices.IndexFunc(sorted, func(it kvclient.Item) bool { return strings.EqualFold(it.Version(), current) })
		// A listed current that is disabled (a certificate's read still
		// answers) is skipped, as every disabled version is.
		if i < 0 || sorted[i].Attributes.Enabled {
			ids = append(ids, current)
		}
	}
	for _, it := range sorted {
		if it.Attributes.Enabled && !strings.EqualFold(it.Version(), current) {
			ids = append(ids, it.Version())
		}
	}
	from := 0
	if pinned != "" {
		from = slices.IndexFunc(ids, func(v string) bool { return strings.EqualFold(v, pinned) })
		if from < 0 {
			return nil, false
		}
	}
	return ids[from:min(len(ids), from+n)], true
}

// currentDisabled reports whether err is the vault refusing to read an
// object's current version because that version is disabled: the object
// has no enabled current version, and a history starts from the newest
// enabled one.
func currentDisabled(err error) bool {
	var ke *kvclient.Error
	if !errors.As(err, &ke) || ke.Status != http.StatusForbidden {
		return false
	}
	return ke.Inner == "SecretDisabled" || ke.Inner == "KeyDisabled"
}
