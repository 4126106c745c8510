package provider

import "testing"

func TestLRUBoundsBytesAndEvictsTheOldest(t *testing.T) {
	l := newLRU[string](100)
	l.put("a", "A", 25)
	l.put("b", "B", 25)
	l.put("c", "C", 25)
	l.get("a") // a is now the most recent
	l.put("d", "D", 25)
	l.put("e", "E", 25) // over 100: the least recent (b) goes
	if _, ok := l.get("b"); ok {
		t.Fatal("the least recently used entry was kept")
	}
	for _, k := range []string{"a", "c", "d", "e"} {
		if _, ok := l.get(k); !ok {
			t.Fatalf("%s was evicted", k)
		}
	}
	l.put("big", "X", 26) // over a quarter of the bound
	if _, ok := l.get("big"); ok {
		t.Fatal("a value over a quarter of the bound was kept")
	}
	l.put("a", "A2", 10) // replacing frees the old size
	if v, _ := l.get("a"); v != "A2" || l.used != 85 {
		t.Fatalf("after replacing a: %q, %d bytes used", v, l.used)
	}
}
