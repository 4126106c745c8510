package kvhttp

import (
	"net/url"
	"strings"
)

// queryGet is url.Values.Get on r.URL.Query() without building the map:
// the first value of name in the raw query, unescaped, or "". A request
// reads one or two parameters, and parsing the whole query was three
// allocations on every one. Pairs are read as url.ParseQuery reads them:
// split at '&', a pair holding ';' or a bad escape is skipped.
func queryGet(raw, name string) string {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(k, "%+") {
			// An escaped key: compare it unescaped, which only then
			// allocates.
			uk, err := url.QueryUnescape(k)
			if err != nil || uk != name {
				continue
			}
		} else if k != name {
			continue
		}
		uv, err := url.QueryUnescape(v)
		if err != nil {
			continue
		}
		return uv
	}
	return ""
}
