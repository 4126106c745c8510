package audit

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestAppendEntryIsJSON holds the hand-written encoder to encoding/json's
// output, byte for byte: audit lines written before it must still verify.
func TestAppendEntryIsJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", "0", " ", "\"", "\\", "<", ">", "&", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f",
		"é", "\u2028", "\u2029", "\xff", "\xe2\x82", "💥", "/", "'", "\u00e9"}
	str := func() string {
		n := rng.IntN(8)
		if n == 0 {
			return ""
		}
		s := ""
		for range n {
			s += alphabet[rng.IntN(len(alphabet))]
		}
		return s
	}
	floats := []float64{0, 1, 0.5, 12.345, 1e-7, 3.2e-9, 1e21, 1.5e22, 123456789.25, 0.001, 1e-6, 999999.999999}
	for i := range 20000 {
		e := Entry{Time: str(), RequestID: str(), Source: str(), Tenant: str(), Principal: str(), AppID: str(), Vault: str(),
			Object: str(), Version: str(), Method: str(), Operation: str(), Decision: str(), Status: rng.IntN(600) - 1,
			LatencyMs: floats[rng.IntN(len(floats))] * float64(rng.IntN(3)-1), Event: str(), Dropped: int64(rng.IntN(3)) * rng.Int64N(1e12),
			Detail: str(), Prev: str(), Hash: str()}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEntry(nil, &e); string(got) != string(want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// A line whose Time Record left empty carries the call's instant, written
// as Format(time.RFC3339Nano) in UTC would write it.
func TestAppendEntryFormatsRecordTime(t *testing.T) {
	zone := time.FixedZone("x", -7*3600)
	for _, at := range []time.Time{
		time.Date(2026, 12, 6, 2, 14, 0, 0, time.UTC),
		time.Date(2026, 12, 6, 2, 14, 5, 123456789, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 120000000, zone),
		time.Date(1999, 12, 31, 23, 59, 59, 1, zone),
	} {
		want, err := json.Marshal(Entry{Time: at.UTC().Format(time.RFC3339Nano), Operation: "op"})
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEntry(nil, &Entry{at: at, Operation: "op"}); string(got) != string(want) {
			t.Errorf("at %v:\n got %s\nwant %s", at, got, want)
		}
	}
}
