package kvhttp

import (
	"regexp"
)

// Latest is the newest api-version Coffer speaks.
const Latest = "2026-04-01"

var (
	numbered = regexp.MustCompile(`^7\.[0-6]$`)
	preview  = regexp.MustCompile(`^7\.[0-6]-preview\.[0-9]{1,2}$`)
	dated    = map[string]bool{"2025-07-01": true, "2026-04-01": true}
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
	return numbered.MatchString(v) || preview.MatchString(v) || dated[v] || legacy[v]
}

// hasPreviousVersion reports whether responses at v carry previousVersion,
// which the dated api-versions added.
func hasPreviousVersion(v string) bool { return dated[v] }
