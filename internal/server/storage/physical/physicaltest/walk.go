package physicaltest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
)

// walkKeys is more than one page of every engine's ForEach.
const walkKeys = 1200

func walkKey(i int) string { return fmt.Sprintf("w/%04d", i) }

// walkAtOnePointInTime checks that ForEach sees the store as it was when it
// began: a batch committed in the middle of the walk (a change, an insert
// and a delete ahead of it) is not seen, and keys under LeasePrefix never
// are.
func walkAtOnePointInTime(t *testing.T, b physical.Backend) {
	w, ok := b.(physical.Walker)
	if !ok {
		t.Fatalf("%T does not implement physical.Walker", b)
	}
	ctx := context.Background()
	// A large value written and deleted leaves free space behind, so that
	// the write during the walk need not grow bolt's memory map, which
	// would wait for the walk's read transaction to end.
	mustApply(t, b, nil, []physical.Op{{Key: "big", Value: bytes.Repeat([]byte("x"), 1<<20)}})
	mustApply(t, b, nil, []physical.Op{{Key: "big", Delete: true}})
	for start := 0; start < walkKeys; start += 100 {
		var ops []physical.Op
		for i := start; i < start+100; i++ {
			ops = append(ops, physical.Op{Key: walkKey(i), Value: []byte("old")})
		}
		mustApply(t, b, nil, ops)
	}
	mustApply(t, b, nil, []physical.Op{{Key: physical.LeasePrefix + "job/1", Value: []byte("candidate")}})

	var seen []physical.Entry
	err := w.ForEach(ctx, "", func(e physical.Entry) error {
		if len(seen) == 0 {
			done := make(chan error, 1)
			go func() {
				done <- b.Apply(ctx, nil, []physical.Op{
					{Key: walkKey(1100), Value: []byte("new")}, {Key: walkKey(1150) + "x", Value: []byte("new")}, {Key: walkKey(walkKeys - 1), Delete: true},
				})
			}()
			select {
			case err := <-done:
				if err != nil {
					return err
				}
			case <-time.After(30 * time.Second):
				return errors.New("a write could not commit while ForEach was reading")
			}
		}
		seen = append(seen, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != walkKeys {
		t.Fatalf("ForEach saw %d entries, want the %d there were when it began", len(seen), walkKeys)
	}
	for i, e := range seen {
		if e.Key != walkKey(i) || string(e.Value) != "old" {
			t.Fatalf("entry %d is %s=%q, want %s=old: the walk saw a write made after it began, or lost its order", i, e.Key, e.Value, walkKey(i))
		}
	}
	// The next walk sees the write, and a prefix narrows it.
	var after []physical.Entry
	if err := physical.Walk(ctx, b, "w/11", func(e physical.Entry) error { after = append(after, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(after) != 100 || string(after[0].Value) != "new" || after[51].Key != walkKey(1150)+"x" {
		t.Fatalf("the walk after the write saw %d entries under w/11 (want 100: w/1100=new, w/1150x added, w/1199 deleted)", len(after))
	}
	stop := errors.New("stop")
	n := 0
	if err := w.ForEach(ctx, "", func(physical.Entry) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("ForEach with fn failing = %v after %d calls, want fn's error after 1", err, n)
	}
}
