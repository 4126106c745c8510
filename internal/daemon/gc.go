package daemon

import (
	"os"
	"runtime/debug"
)

// NodeGCPercent is the garbage collector's target (GOGC) of the node
// daemons when the GOGC environment variable does not set one.
//
// A node daemon's live heap is small (4–9 MB) and it allocates in bursts,
// when the kubelet publishes volumes. With Go's default of 100 its
// resident memory settles near twice the live heap, so the headroom, not
// what it keeps per volume, is most of its growth with the volumes
// mounted (make bench-node-memory: the driver's anonymous memory at 1,000
// volumes was 20 MiB at 100 and 17 MiB at 50). Halving the headroom costs
// collections during the burst, which a daemon that is idle between bursts
// can afford; every DaemonSet pod of a cluster pays the memory.
const NodeGCPercent = 50

// LeanGC sets the collector's target to NodeGCPercent unless the GOGC
// environment variable sets one, so that an operator keeps the last word
// (GOGC=100 restores Go's default). The node daemons call it first thing.
func LeanGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(NodeGCPercent)
	}
}
