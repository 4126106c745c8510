package kvhttp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestSecretOutAppendJSON compares the hand-written secret bundle encoder
// with encoding/json on random bundles, every optional field present or
// not, with strings that need escaping.
func TestSecretOutAppendJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	strs := []string{"", "v", "s3cr\"et\\", "<html>&", "line\nbreak\u2028", "\xff\xfeinvalid", "ünïcode ✓"}
	str := func() string { return strs[rng.IntN(len(strs))] }
	opt := func() *int64 {
		if rng.IntN(2) == 0 {
			return nil
		}
		n := rng.Int64N(1 << 40)
		return &n
	}
	for range 2000 {
		o := secretOut{ID: str(), ContentType: str(), KID: str(), Managed: rng.IntN(2) == 0, PreviousVersion: str(),
			Attributes: attributesOut{Enabled: rng.IntN(2) == 0, NotBefore: opt(), Expires: opt(),
				Created: rng.Int64N(1 << 40), Updated: rng.Int64N(1 << 40), RecoveryLevel: str(), RecoverableDays: rng.IntN(91)}}
		if rng.IntN(2) == 0 {
			v := str()
			o.Value = &v
		}
		if n := rng.IntN(4); n > 0 {
			o.Tags = map[string]string{}
			for range n {
				o.Tags[str()+str()] = str()
			}
		}
		if rng.IntN(3) == 0 {
			o.deletedInfo = deletedInfo{RecoveryID: str(), DeletedDate: rng.Int64N(3), ScheduledPurgeDate: rng.Int64N(3)}
		}
		want, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.AppendJSON(nil); string(got) != string(want) {
			t.Fatalf("AppendJSON:\n got %s\nwant %s", got, want)
		}
	}
}

// An ETag is the version, a dot and 16 hex digits of the state's SHA-256,
// quoted: the form the reads, the vault watch and clients' stored tags
// share, whatever builds it.
func TestETagForm(t *testing.T) {
	for _, version := range []string{"", "v", "405844a57b912ccf950cf1dbbc73953a"} {
		for _, state := range [][]any{nil, {"text/plain"}, {map[string]string{"k": "v"}, "x"}} {
			var b []byte
			for _, part := range state {
				b = appendState(b, part)
			}
			sum := sha256.Sum256(b)
			want := `"` + version + "." + hex.EncodeToString(sum[:8]) + `"`
			if got := etagOf(version, state...); got != want {
				t.Errorf("etagOf(%q, %v) = %s, want %s", version, state, got, want)
			}
		}
	}
}
