package kvhttp

import (
	"regexp"
	"testing"
)

// The accepted set was defined by these two expressions; the hand parser
// must accept exactly what they accept.
var (
	refNumbered = regexp.MustCompile(`^7\.[0-6]$`)
	refPreview  = regexp.MustCompile(`^7\.[0-6]-preview\.[0-9]{1,2}$`)
)

func TestNumberedMatchesTheExpressions(t *testing.T) {
	var cases []string
	// Every string over the alphabet the grammar uses, up to the longest
	// accepted length, would be too many; instead vary each position of
	// every accepted shape and add the near misses.
	alphabet := "0123456789.-7aprevwi/ \x00é"
	for _, base := range []string{"7.0", "7.6", "7.7", "7.0-preview.1", "7.6-preview.99", "7.3-preview.0", "7.3-preview.123"} {
		cases = append(cases, base, base[:len(base)-1], base+"0", base+"\n", " "+base)
		for i := range len(base) {
			for _, c := range alphabet {
				b := []rune(base)
				if i < len(b) {
					b[i] = c
				}
				cases = append(cases, string(b))
			}
		}
	}
	cases = append(cases, "", "7", "7.", "7.-preview.1", "7.1-preview.", "7.1-preview", "7.1-PREVIEW.1", "8.0", "07.0", "7.10", "2026-04-01")
	accepted := 0
	for _, v := range cases {
		want := refNumbered.MatchString(v) || refPreview.MatchString(v)
		if got := numbered(v); got != want {
			t.Errorf("numbered(%q) = %v, the expressions say %v", v, got, want)
		}
		if want {
			accepted++
		}
	}
	if accepted < 10 {
		t.Fatalf("only %d of %d cases are accepted: the cases do not exercise the accepting path", accepted, len(cases))
	}
}
