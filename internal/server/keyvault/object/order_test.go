package object

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
)

// listAll pages through an object's versions and returns their values.
func listAll(t *testing.T, c *Collection[data], name string, limit int) []string {
	t.Helper()
	var values []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("the listing does not end")
		}
		vers, next, err := c.ListVersions(context.Background(), "demo", name, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vers {
			values = append(values, v.Data.Value)
		}
		if next == "" {
			return values
		}
		after = next
	}
}

// Versions created within one second (the clock does not move here) list
// newest first, in the order they were created, on every page size; an
// update does not move a version, and versions created while a listing
// pages do not disturb the pages still to come.
func TestListVersionsNewestFirst(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	var want []string
	ids := map[string]string{}
	for i := range 30 {
		v, _, err := c.Create(ctx, "demo", "burst", set(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		want = slices.Insert(want, 0, strconv.Itoa(i))
		ids[v.Data.Value] = v.ID
	}
	if _, err := c.Update(ctx, "demo", "burst", ids["7"], func(v *Version[data]) error { v.Attributes.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 7, 25, 30, 0} {
		if got := listAll(t, c, "burst", limit); !slices.Equal(got, want) {
			t.Fatalf("limit %d: versions %v, want %v", limit, got, want)
		}
	}

	first, next, err := c.ListVersions(ctx, "demo", "burst", "", 10)
	if err != nil || len(first) != 10 || next != ids["20"] {
		t.Fatalf("first page: %d versions, next %q, %v; want 10, next %q", len(first), next, err, ids["20"])
	}
	if _, _, err := c.Create(ctx, "demo", "burst", set("new")); err != nil {
		t.Fatal(err)
	}
	rest, _, err := c.ListVersions(ctx, "demo", "burst", next, 100)
	if err != nil || len(rest) != 20 || rest[0].Data.Value != "19" {
		t.Fatalf("the page after a create: %d versions from %q, %v; want 20 from 19", len(rest), rest[0].Data.Value, err)
	}

	if _, _, err := c.ListVersions(ctx, "demo", "burst", NewVersionID(), 10); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a cursor naming no version: %v, want ErrInvalid", err)
	}
	if _, _, err := c.ListVersions(ctx, "demo", "missing", "", 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("versions of a missing object: %v, want ErrNotFound", err)
	}
}

// An export keeps the versions' order, so a restored object lists as the
// original did.
func TestImportKeepsOrder(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	for i := range 5 {
		c.Create(ctx, "demo", "a", set(strconv.Itoa(i)))
	}
	e, err := c.Export(ctx, "demo", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Import(ctx, "other", e); err != nil {
		t.Fatal(err)
	}
	c.Create(ctx, "other", "a", set("after restore"))
	var got []string
	vers, _, err := c.ListVersions(ctx, "other", "a", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vers {
		got = append(got, v.Data.Value)
	}
	if want := []string{"after restore", "4", "3", "2", "1", "0"}; !slices.Equal(got, want) {
		t.Fatalf("restored versions %v, want %v", got, want)
	}
}

// Versions stored before Order existed have none. They rank after every
// version that has one; among themselves the head's current and previous
// versions come first, then created, then the id.
func TestListVersionsStoredBeforeOrder(t *testing.T) {
	tests := map[string]struct {
		legacy []time.Duration // each legacy version's created, after the first
		since  int             // versions created since Order exists
		// want is the listing, in groups: a group's versions tie on every
		// rank but the id. "L2" is the third legacy version, "N0" the first
		// created since.
		want [][]string
	}{
		"one second": {
			legacy: []time.Duration{0, 0, 0, 0},
			want:   [][]string{{"L3"}, {"L2"}, {"L0", "L1"}},
		},
		"seconds apart": {
			legacy: []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second},
			want:   [][]string{{"L3"}, {"L2"}, {"L1"}, {"L0"}},
		},
		"one version since": {
			legacy: []time.Duration{0, 0, 0},
			since:  1,
			want:   [][]string{{"N0"}, {"L2"}, {"L0", "L1"}},
		},
		"two versions since": {
			legacy: []time.Duration{0, 0, 0},
			since:  2,
			want:   [][]string{{"N1"}, {"N0"}, {"L0", "L1", "L2"}},
		},
		"later seconds lose to the order": {
			legacy: []time.Duration{0, 0, 5 * time.Second},
			since:  1,
			want:   [][]string{{"N0"}, {"L2"}, {"L0", "L1"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c, clk := newColl(t)
			ids := map[string]string{}
			start := clk.now()
			for i, d := range tc.legacy {
				clk.add(start.Add(d).Sub(clk.now()))
				v, _, err := c.Create(ctx, "demo", "old", set("L"+strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				ids[v.Data.Value] = v.ID
				stripOrder(t, c, "old", v.ID)
			}
			for i := range tc.since {
				v, _, err := c.Create(ctx, "demo", "old", set("N"+strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				ids[v.Data.Value] = v.ID
			}
			var want []string
			for _, group := range tc.want {
				slices.SortFunc(group, func(a, b string) int { return strings.Compare(ids[a], ids[b]) })
				want = append(want, group...)
			}
			for _, limit := range []int{1, 2, 25} {
				if got := listAll(t, c, "old", limit); !slices.Equal(got, want) {
					t.Fatalf("limit %d: versions %v, want %v", limit, got, want)
				}
			}
		})
	}
}

// stripOrder rewrites a stored version as a server from before Order
// would have written it.
func stripOrder(t *testing.T, c *Collection[data], name, id string) {
	t.Helper()
	ctx := context.Background()
	key := c.versionKey("demo", name, id)
	rec, err := c.st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(rec.Value, &fields); err != nil {
		t.Fatal(err)
	}
	if _, ok := fields["order"]; !ok {
		t.Fatal("a new version was stored without its order")
	}
	delete(fields, "order")
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.st.Apply(ctx, nil, []barrier.Op{{Key: key, Value: b}}); err != nil {
		t.Fatal(err)
	}
}
