package throttle

import (
	"strings"
	"sync"
	"testing"
	"time"
)

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

func TestParse(t *testing.T) {
	for in, want := range map[string]Limits{
		"keyvault":                    {Preset: PresetKeyVault},
		"off":                         {},
		"requests=100,key-creates=5":  {Requests: 100, KeyCreates: 5},
		"keyvault, per-principal=500": {Preset: PresetKeyVault, PerPrincipal: 500},
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "requests=-1", "requests=x", "reads=5", "requests=2000000"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if e := (Limits{Preset: PresetKeyVault}).Effective(); e.Requests != 4000 || e.KeyCreates != 20 {
		t.Errorf("the keyvault preset is %+v", e)
	}
}

// TestStaticLimits runs a vault's buckets through their window.
func TestStaticLimits(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	l := New(Options{Capacity: -1, Now: c.now})
	lim := Limits{Requests: 10, KeyCreates: 2, PerPrincipal: 6}
	admit := func(p string, class Class) Decision {
		d := l.Admit("v", lim, p, class, false)
		if d.OK {
			d.Release()
		}
		return d
	}
	for i := range 6 {
		if d := admit("alice", Full); !d.OK {
			t.Fatalf("alice's request %d refused: %s", i, d.Reason)
		}
	}
	d := admit("alice", Full)
	if d.OK || !strings.Contains(d.Reason, "one caller") || d.RetryAfter <= 0 || d.RetryAfter > Window {
		t.Fatalf("alice over her share: %+v", d)
	}
	for i := range 4 {
		if d := admit("bob", Full); !d.OK {
			t.Fatalf("bob's request %d refused: %s", i, d.Reason)
		}
	}
	if d := admit("bob", Full); d.OK || !strings.Contains(d.Reason, "the vault's limit of 10") {
		t.Fatalf("the vault over its limit: %+v", d)
	}
	if d := admit("carol", Light); d.OK {
		t.Fatal("a light request passed an empty bucket")
	}
	// A second is a tenth of the window: one request back.
	c.add(time.Second)
	if d := admit("carol", Full); !d.OK {
		t.Fatalf("after the refill: %s", d.Reason)
	}
	// A refusal costs nothing: the vault bucket refills as if it had not
	// been asked.
	c.add(10 * time.Second)
	for range 2 {
		if d := admit("dave", KeyCreate); !d.OK {
			t.Fatalf("key create: %s", d.Reason)
		}
	}
	if d := admit("dave", KeyCreate); d.OK || !strings.Contains(d.Reason, "key creations") {
		t.Fatalf("the third key creation: %+v", d)
	}
	if d := admit("dave", Full); !d.OK {
		t.Fatalf("a refused creation spent the vault's tokens: %s", d.Reason)
	}
	// Light requests cost a quarter.
	c.add(10 * time.Second)
	n := 0
	for admit("erin", Light).OK {
		n++
	}
	if n != 24 { // per-principal 6 units: 24 quarters
		t.Fatalf("%d light requests within 6 units, want 24", n)
	}
	// A charge after the fact puts the caller in debt.
	c.add(10 * time.Second)
	l.Charge("v", lim, "frank", 7)
	if d := admit("frank", Full); d.OK {
		t.Fatal("a caller in debt was admitted")
	}
}

// TestOverloadShedsTheHeaviest fills the server and checks who is refused.
func TestOverloadShedsTheHeaviest(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	l := New(Options{Capacity: 8, Tarpit: time.Millisecond, Now: c.now})
	var flights []*Flight
	for range 9 {
		flights = append(flights, l.Enter())
	}
	// The flooder sends 3,000 requests in the last second, the steady
	// caller 5: both are over capacity, only the flooder over its share.
	for i := range 3000 {
		c.add(time.Second / 3000)
		if i%600 == 0 {
			if d := l.Admit("v", Limits{}, "steady", Full, false); !d.OK {
				t.Fatalf("the steady caller was refused: %s", d.Reason)
			}
		}
		l.Admit("v", Limits{}, "flood", Full, false)
	}
	d := l.Admit("v", Limits{}, "flood", Full, false)
	if d.OK || d.Tarpit == 0 || d.RetryAfter == 0 || !strings.Contains(d.Reason, "share") {
		t.Fatalf("the flooder past capacity: %+v", d)
	}
	if d := l.Admit("v", Limits{}, "steady", Full, false); !d.OK {
		t.Fatalf("the steady caller was refused: %s", d.Reason)
	}
	// Held reads are never refused for load.
	if d := l.Admit("v", Limits{}, "flood", Light, true); !d.OK {
		t.Fatal("a held read was refused")
	}
	// Below capacity, the flooder is served.
	for _, f := range flights {
		f.Done()
		f.Done() // a second Done does nothing
	}
	if d := l.Admit("v", Limits{}, "flood", Full, false); !d.OK {
		t.Fatal("below capacity the flooder is still refused")
	}
	if l.total.Load() != 0 {
		t.Fatalf("%d in flight after every Done", l.total.Load())
	}
	// A flood that stops is forgiven within seconds.
	for range 9 {
		l.Enter()
	}
	c.add(10 * time.Second)
	l.Admit("v", Limits{}, "steady", Full, false)
	c.add(100 * time.Millisecond)
	if d := l.Admit("v", Limits{}, "flood", Full, false); !d.OK {
		t.Fatalf("ten seconds after its flood, the flooder is refused: %s", d.Reason)
	}
}
