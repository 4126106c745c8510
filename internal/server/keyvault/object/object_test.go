package object

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/barrier"
	"github.com/cofferhq/coffer/internal/server/storage/physical/inmem"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

type data struct {
	Value string `json:"value"`
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newColl(t *testing.T) (*Collection[data], *clock) {
	t.Helper()
	b, err := barrier.Open(context.Background(), inmem.New(), rootkey.Generate())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	return New[data](b, "secrets", clk.now), clk
}

func set(value string) func(*Version[data]) (Version[data], error) {
	return func(*Version[data]) (Version[data], error) {
		return Version[data]{Attributes: Attributes{Enabled: true}, Data: data{Value: value}}, nil
	}
}

func TestVersionsAndCurrent(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	v1, _, err := c.Create(ctx, "demo", "Alpha", set("one"))
	if err != nil {
		t.Fatal(err)
	}
	if len(v1.ID) != 32 {
		t.Fatalf("version id %q is not 32 hex digits", v1.ID)
	}
	v2, h, err := c.Create(ctx, "demo", "ALPHA", set("two"))
	if err != nil {
		t.Fatal(err)
	}
	if h.Current != v2.ID || h.Previous != v1.ID || v2.Name != "Alpha" {
		t.Fatalf("head = %+v; want current %s, previous %s, name kept as first written", h, v2.ID, v1.ID)
	}
	got, _, err := c.Get(ctx, "demo", "alpha", "")
	if err != nil || got.Data.Value != "two" {
		t.Fatalf("Get(latest) = %+v, %v", got, err)
	}
	got, _, err = c.Get(ctx, "demo", "alpha", v1.ID)
	if err != nil || got.Data.Value != "one" {
		t.Fatalf("Get(v1) = %+v, %v", got, err)
	}
	if _, _, err := c.Get(ctx, "demo", "alpha", NewVersionID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(unknown version) = %v", err)
	}
	if _, _, err := c.Get(ctx, "other", "alpha", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get in another vault = %v", err)
	}
}

func TestUpdateOneVersion(t *testing.T) {
	ctx := context.Background()
	c, clk := newColl(t)
	v1, _, _ := c.Create(ctx, "demo", "a", set("one"))
	c.Create(ctx, "demo", "a", set("two"))
	clk.add(time.Minute)
	u, err := c.Update(ctx, "demo", "a", v1.ID, func(v *Version[data]) error {
		v.Attributes.Enabled = false
		v.Tags = map[string]string{"env": "prod"}
		return nil
	})
	if err != nil || u.Attributes.Enabled || u.Attributes.Updated != clk.now().Unix() || u.Data.Value != "one" {
		t.Fatalf("Update = %+v, %v", u, err)
	}
	cur, _, _ := c.Get(ctx, "demo", "a", "")
	if !cur.Attributes.Enabled || cur.Tags != nil {
		t.Fatal("updating v1 changed the current version")
	}
}

func TestSoftDeleteRecoverPurge(t *testing.T) {
	ctx := context.Background()
	c, clk := newColl(t)
	v1, _, _ := c.Create(ctx, "demo", "a", set("one"))
	h, cur, err := c.Delete(ctx, "demo", "a", 90*24*time.Hour)
	if err != nil || cur.ID != v1.ID || h.ScheduledPurge-h.DeletedDate != 90*24*3600 {
		t.Fatalf("Delete = %+v %+v %v", h, cur, err)
	}
	if _, _, err := c.Get(ctx, "demo", "a", v1.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(version) of a deleted object = %v, want ErrNotFound", err)
	}
	if _, _, err := c.Create(ctx, "demo", "a", set("x")); !errors.Is(err, ErrDeleted) {
		t.Fatalf("Create over a deleted name = %v, want ErrDeleted", err)
	}
	if _, _, err := c.Delete(ctx, "demo", "a", time.Hour); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if items, _, _ := c.List(ctx, "demo", "", 25); len(items) != 0 {
		t.Fatal("a deleted object is still listed")
	}
	if items, _, _ := c.ListDeleted(ctx, "demo", "", 25); len(items) != 1 {
		t.Fatal("the deleted object is not in the deleted list")
	}
	if _, _, err := c.Recover(ctx, "demo", "a"); err != nil {
		t.Fatal(err)
	}
	if got, _, err := c.Get(ctx, "demo", "a", v1.ID); err != nil || got.Data.Value != "one" {
		t.Fatalf("Get after recover = %v", err)
	}
	// Purge only works on deleted objects, and removes every version.
	if err := c.Purge(ctx, "demo", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Purge of a live object = %v", err)
	}
	c.Delete(ctx, "demo", "a", time.Hour)
	if err := c.Purge(ctx, "demo", "a"); err != nil {
		t.Fatal(err)
	}
	if v, _, err := c.Create(ctx, "demo", "a", set("fresh")); err != nil || v.Data.Value != "fresh" {
		t.Fatalf("Create after purge = %v", err)
	}
	if vers, _, _ := c.ListVersions(ctx, "demo", "a", "", 25); len(vers) != 1 {
		t.Fatalf("purge left %d old versions behind", len(vers)-1)
	}
	_ = clk
}

func TestPurgeDue(t *testing.T) {
	ctx := context.Background()
	c, clk := newColl(t)
	c.Create(ctx, "demo", "soon", set("1"))
	c.Create(ctx, "demo", "late", set("2"))
	c.Delete(ctx, "demo", "soon", time.Hour)
	c.Delete(ctx, "demo", "late", 48*time.Hour)
	if n, err := c.PurgeDue(ctx, "demo", clk.now(), nil); n != 0 || err != nil {
		t.Fatalf("PurgeDue now = %d, %v", n, err)
	}
	clk.add(2 * time.Hour)
	if n, err := c.PurgeDue(ctx, "demo", clk.now(), nil); n != 1 || err != nil {
		t.Fatalf("PurgeDue after 2h = %d, %v", n, err)
	}
	if _, _, err := c.GetDeleted(ctx, "demo", "soon"); !errors.Is(err, ErrNotFound) {
		t.Fatal("due object survived")
	}
	if _, _, err := c.GetDeleted(ctx, "demo", "late"); err != nil {
		t.Fatal("an object not yet due was purged")
	}
}

func TestPaging(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	for i := range 61 {
		if _, _, err := c.Create(ctx, "demo", fmt.Sprintf("s%02d", i), set("v")); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	after, pages := "", 0
	for {
		items, next, err := c.List(ctx, "demo", after, 25)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, it := range items {
			if seen[it.Head.Name] {
				t.Fatalf("%s listed twice", it.Head.Name)
			}
			seen[it.Head.Name] = true
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(seen) != 61 || pages != 3 {
		t.Fatalf("listed %d objects in %d pages, want 61 in 3", len(seen), pages)
	}
}

func TestExportImport(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	c.Create(ctx, "demo", "a", set("one"))
	c.Create(ctx, "demo", "a", set("two"))
	e, err := c.Export(ctx, "demo", "a")
	if err != nil || len(e.Versions) != 2 {
		t.Fatalf("Export = %d versions, %v", len(e.Versions), err)
	}
	if _, _, err := c.Import(ctx, "demo", e); !errors.Is(err, ErrExists) {
		t.Fatalf("Import over a live name = %v", err)
	}
	_, cur, err := c.Import(ctx, "other", e)
	if err != nil || cur.Data.Value != "two" {
		t.Fatalf("Import into another vault = %+v, %v", cur, err)
	}
	c.Delete(ctx, "other", "a", time.Hour)
	if _, _, err := c.Import(ctx, "other", e); !errors.Is(err, ErrExists) {
		t.Fatalf("Import over a deleted name = %v", err)
	}
}

func TestConcurrentCreatesKeepEveryVersion(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := c.Create(ctx, "demo", "hot", set(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	vers, _, err := c.ListVersions(ctx, "demo", "hot", "", 100)
	if err != nil || len(vers) != 20 {
		t.Fatalf("%d versions after 20 concurrent creates, %v", len(vers), err)
	}
}

// The read cache must never serve a stale version: every kind of write is
// followed by a read that must see it.
func TestReadCacheSeesEveryWrite(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	v1, _, _ := c.Create(ctx, "demo", "a", set("one"))
	c.Get(ctx, "demo", "a", v1.ID) // warm the cache
	c.Get(ctx, "demo", "a", "")
	c.Update(ctx, "demo", "a", v1.ID, func(v *Version[data]) error { v.Attributes.Enabled = false; return nil })
	if got, _, _ := c.Get(ctx, "demo", "a", v1.ID); got.Attributes.Enabled {
		t.Fatal("Get served a version from before its update")
	}
	v2, _, _ := c.Create(ctx, "demo", "a", set("two"))
	if got, _, _ := c.Get(ctx, "demo", "a", ""); got.ID != v2.ID {
		t.Fatal("Get(latest) served the old current version")
	}
	c.Delete(ctx, "demo", "a", time.Hour)
	if _, _, err := c.Get(ctx, "demo", "a", v1.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("Get served a deleted object from the cache")
	}
	c.Recover(ctx, "demo", "a")
	if got, _, err := c.Get(ctx, "demo", "a", ""); err != nil || got.ID != v2.ID {
		t.Fatalf("Get after recover = %v", err)
	}
	c.Delete(ctx, "demo", "a", time.Hour)
	c.Purge(ctx, "demo", "a")
	v3, _, _ := c.Create(ctx, "demo", "a", set("three"))
	if got, _, _ := c.Get(ctx, "demo", "a", ""); got.Data.Value != "three" || got.ID != v3.ID {
		t.Fatal("Get after purge and re-create served old data")
	}
	if _, _, err := c.Get(ctx, "demo", "a", v1.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("a purged version is still readable")
	}
}

func TestNamed(t *testing.T) {
	for key, want := range map[string][3]string{
		"o/demo/secrets/h/db":       {"demo", "secrets", "db"},
		"o/demo/secrets/v/db/0a1b":  {"demo", "secrets", "db"},
		"o/demo/certificates/d/tls": {"demo", "certificates", "tls"},
		"o/demo/secrets/x/db":       {},
		"o/demo/secrets/h/":         {},
		"core/keyring":              {},
		"vault/demo":                {},
		"o//secrets/h/db":           {},
	} {
		v, k, n, ok := Named(key)
		if got := [3]string{v, k, n}; got != want || ok != (want != [3]string{}) {
			t.Errorf("Named(%q) = %v %v, want %v", key, got, ok, want)
		}
	}
}

// A write drops the read cache's entry for the object it changed, so that
// what a delete or a purge took away, decrypted value and memo included,
// is not kept in memory until the name is read again.
func TestWritesEvictTheirCacheEntry(t *testing.T) {
	ctx := context.Background()
	c, _ := newColl(t)
	key := c.headKey("demo", "a")
	cached := func() bool { _, ok := c.cache.Load(key); return ok }
	warm := func(t *testing.T) {
		t.Helper()
		if _, _, err := c.Get(ctx, "demo", "a", ""); err != nil || !cached() {
			t.Fatalf("a read left no cache entry: %v", err)
		}
	}
	v1, _, err := c.Create(ctx, "demo", "a", set("one"))
	if err != nil {
		t.Fatal(err)
	}
	warm(t)
	if _, err := c.Update(ctx, "demo", "a", v1.ID, func(v *Version[data]) error { v.Tags = map[string]string{"k": "v"}; return nil }); err != nil {
		t.Fatal(err)
	}
	if cached() {
		t.Error("an update left the entry it outdated")
	}
	warm(t)
	if _, _, err := c.Delete(ctx, "demo", "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if cached() {
		t.Error("a delete left the deleted object's entry, value and all")
	}
	if _, _, err := c.Recover(ctx, "demo", "a"); err != nil {
		t.Fatal(err)
	}
	warm(t)
	if _, _, err := c.Delete(ctx, "demo", "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := c.Purge(ctx, "demo", "a"); err != nil {
		t.Fatal(err)
	}
	if cached() {
		t.Error("a purge left the object's entry")
	}
}
