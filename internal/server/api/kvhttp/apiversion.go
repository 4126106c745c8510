package kvhttp

// Latest is the newest api-version Coffer speaks.
const Latest = "2026-04-01"

var (
	dated = map[string]bool{"2025-07-01": true, "2026-04-01": true}
	// Key Vault's first versions, still accepted there and still in
	// scripts and walkthroughs (seed 002 reads a secret with 2016-10-01).
	// Their shapes are 7.0's without the fields it added, which old
	// clients ignore.
	legacy = map[string]bool{"2015-06-01": true, "2016-10-01": true}
)

// supportedVersion reports whether v is an api-version Coffer accepts: the
// two before 7.0, 7.0 to 7.6, their previews, and the dated versions the
// current SDKs send.
func supportedVersion(v string) bool {
	return numbered(v) || dated[v] || legacy[v]
}

// numbered reports whether v is 7.0 to 7.6 or one of their previews
// (7.N-preview.D or .DD). It is hand-parsed rather than a regular
// expression because every request checks it, and the two regexps it
// replaced were a measurable part of a GET's own cost.
func numbered(v string) bool {
	if len(v) < 3 || v[0] != '7' || v[1] != '.' || v[2] < '0' || v[2] > '6' {
		return false
	}
	rest := v[3:]
	if rest == "" {
		return true
	}
	const tag = "-preview."
	if len(rest) <= len(tag) || rest[:len(tag)] != tag {
		return false
	}
	digits := rest[len(tag):]
	if len(digits) > 2 {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// hasPreviousVersion reports whether responses at v carry previousVersion,
// which the dated api-versions added.
func hasPreviousVersion(v string) bool { return dated[v] }
