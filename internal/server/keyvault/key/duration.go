package key

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is an ISO 8601 duration as Key Vault's rotation policies write
// them: P[nY][nM][nW][nD][T[nH][nM][nS]]. Years, months and days are
// calendar units, so they are kept apart rather than folded into a
// time.Duration: P1M after January 31 is a month, not 30 days.
type Duration struct {
	Years, Months, Weeks, Days int
	Clock                      time.Duration // the T part
	text                       string
}

// ParseDuration reads an ISO 8601 duration such as P90D, P1Y10D or PT48H.
// Fractions and negative durations are refused: Key Vault accepts neither.
func ParseDuration(s string) (Duration, error) {
	d := Duration{text: s}
	rest, ok := strings.CutPrefix(strings.ToUpper(s), "P")
	if !ok || rest == "" || rest == "T" {
		return Duration{}, fmt.Errorf("%q is not an ISO 8601 duration such as P90D, P1Y or PT48H", s)
	}
	date, clock, hasClock := strings.Cut(rest, "T")
	if hasClock && clock == "" {
		return Duration{}, fmt.Errorf("%q has a T with no hours, minutes or seconds after it", s)
	}
	parse := func(part string, units string, set func(unit byte, n int)) error {
		for part != "" {
			i := strings.IndexFunc(part, func(r rune) bool { return r < '0' || r > '9' })
			if i <= 0 || !strings.ContainsRune(units, rune(part[i])) {
				return fmt.Errorf("%q is not an ISO 8601 duration such as P90D, P1Y or PT48H", s)
			}
			n, err := strconv.Atoi(part[:i])
			if err != nil || n > 100000 {
				return fmt.Errorf("%q has a number out of range", s)
			}
			set(part[i], n)
			units = units[strings.IndexByte(units, part[i])+1:] // each unit once, in order
			part = part[i+1:]
		}
		return nil
	}
	if err := parse(date, "YMWD", func(u byte, n int) {
		switch u {
		case 'Y':
			d.Years = n
		case 'M':
			d.Months = n
		case 'W':
			d.Weeks = n
		case 'D':
			d.Days = n
		}
	}); err != nil {
		return Duration{}, err
	}
	if err := parse(clock, "HMS", func(u byte, n int) {
		switch u {
		case 'H':
			d.Clock += time.Duration(n) * time.Hour
		case 'M':
			d.Clock += time.Duration(n) * time.Minute
		case 'S':
			d.Clock += time.Duration(n) * time.Second
		}
	}); err != nil {
		return Duration{}, err
	}
	return d, nil
}

// After returns t plus d.
func (d Duration) After(t time.Time) time.Time {
	return t.AddDate(d.Years, d.Months, d.Weeks*7+d.Days).Add(d.Clock)
}

// Before returns t minus d.
func (d Duration) Before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -(d.Weeks*7 + d.Days)).Add(-d.Clock)
}

// Approx is d as a fixed length, taking a year as 365 days and a month as
// 30: what the validation rules compare, since they hold for no date in
// particular.
func (d Duration) Approx() time.Duration {
	days := d.Years*365 + d.Months*30 + d.Weeks*7 + d.Days
	return time.Duration(days)*24*time.Hour + d.Clock
}

// String returns the duration as it was written.
func (d Duration) String() string { return d.text }
