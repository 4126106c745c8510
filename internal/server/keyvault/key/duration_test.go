package key

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	base := time.Date(2025, 1, 31, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"P90D":     base.AddDate(0, 0, 90),
		"P1Y10D":   base.AddDate(1, 0, 10),
		"P1M":      base.AddDate(0, 1, 0),
		"P2W":      base.AddDate(0, 0, 14),
		"PT48H":    base.Add(48 * time.Hour),
		"P1DT1H1M": base.AddDate(0, 0, 1).Add(time.Hour + time.Minute),
		"p7d":      base.AddDate(0, 0, 7),
	} {
		d, err := ParseDuration(in)
		if err != nil {
			t.Errorf("ParseDuration(%q): %v", in, err)
			continue
		}
		if got := d.After(base); !got.Equal(want) {
			t.Errorf("%s after %v = %v, want %v", in, base, got, want)
		}
		if got := d.Before(d.After(base)); in != "P1M" && !got.Equal(base) {
			t.Errorf("%s before after = %v, want %v", in, got, base)
		}
	}
	for _, bad := range []string{"", "P", "PT", "90D", "P1.5D", "P-1D", "PD", "P1D1Y", "P1H", "PT1D", "P1DT"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) succeeded", bad)
		}
	}
}
