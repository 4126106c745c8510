// Package mlog stands in for monis.app/mlog, which the Go module proxy does
// not serve. Only sigs.k8s.io/secrets-store-csi-driver/pkg/secrets-store
// needs it, for one call to Fatal; Coffer imports that package in tests
// alone, to drive its provider with the upstream driver's own client code.
package mlog

import (
	"fmt"
	"os"
)

// Fatal prints err and exits, as the real mlog.Fatal does.
func Fatal(err error, _ ...any) {
	fmt.Fprintln(os.Stderr, "fatal:", err)
	os.Exit(1)
}
