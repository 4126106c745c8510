// Command etcd is the etcd server that controller-runtime's envtest starts
// next to kube-apiserver in tests.
//
// It is etcd's own entry point, built from the Go module proxy, so that the
// tests need no prebuilt etcd release download. Calling etcdmain.Main keeps
// etcd's complete flag set and --help text: envtest passes
// --listen-peer-urls, --listen-client-urls, --advertise-client-urls and
// --data-dir, and greps `etcd --help` for --unsafe-no-fsync before it passes
// that as well.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
