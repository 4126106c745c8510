//go:build node

package cli

import "strings"

// describeError turns an error into the one line the CLI prints. The node
// daemons' errors are their own, not Azure SDK responses, so the first
// line is the description.
func describeError(err error) string {
	s := strings.TrimSpace(err.Error())
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
