//go:build tools

// Package tools keeps the ACME test server that the tests build, Let's
// Encrypt's pebble, in this module's go.mod and go.sum, so that
// `go build github.com/letsencrypt/pebble/v2/cmd/pebble` works from here with
// exactly the pinned version, and pebble's dependencies never enter the main
// module's graph. It is never compiled.
package tools

import _ "github.com/letsencrypt/pebble/v2/cmd/pebble"
