package webhooksig

import (
	"errors"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	body := []byte(`{"a":1}`)
	h := Sign([]byte("k"), at, body)
	for name, tc := range map[string]struct {
		secret, header string
		body           []byte
		now            time.Time
		ok             bool
	}{
		"valid":           {"k", h, body, at.Add(time.Minute), true},
		"rotation":        {"k", h + ",v1=00", body, at, true},
		"other secret":    {"k2", h, body, at, false},
		"other body":      {"k", h, []byte(`{"a":2}`), at, false},
		"too old":         {"k", h, body, at.Add(10 * time.Minute), false},
		"no time":         {"k", "v1=00", body, at, false},
		"no signature":    {"k", "t=1700000000", body, at, false},
		"time not in mac": {"k", "t=1700000001" + h[len("t=1700000000"):], body, at, false},
		"garbage":         {"k", "hello", body, at, false},
	} {
		err := Verify([]byte(tc.secret), tc.header, tc.body, tc.now, 5*time.Minute)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Verify = %v, want ok %v", name, err, tc.ok)
		}
	}
}
