package daemon

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
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
// (GOGC=100 restores Go's default). It also starts returning freed heap
// to the system once the daemon is quiet (see watchFreeHeap). The node
// daemons call it first thing.
func LeanGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(NodeGCPercent)
	}
	freeHeapOnce.Do(func() {
		go watchFreeHeap(time.Tick(freeHeapCheck), readHeap, debug.FreeOSMemory)
	})
}

var freeHeapOnce sync.Once

// freeHeapCheck is how often a node daemon looks for freed heap to return,
// and how long it must have run no collection to count as quiet.
const freeHeapCheck = 2 * time.Second

// freeHeapMin is the freed heap worth returning at once. Below it, the
// runtime's own scavenger returns it soon enough.
const freeHeapMin = 2 << 20

// watchFreeHeap calls release, at a tick, when the heap holds at least
// freeHeapMin bytes that are free but not returned to the system and no
// collection ran since the last tick: a burst of publishes has ended.
//
// After a burst the runtime keeps the freed heap for reuse and returns it
// only slowly; a daemon that then idles for hours keeps megabytes it does
// not use (about 5 MB after 1,000 volumes). Returning it costs one
// collection of a small heap, and never runs during a burst.
func watchFreeHeap(tick <-chan time.Time, read func() (free, cycles uint64), release func()) {
	_, last := read()
	for range tick {
		free, cycles := read()
		if cycles == last && free >= freeHeapMin {
			release()
			_, cycles = read() // release collects: that is not activity
		}
		last = cycles
	}
}

// readHeap reads the heap's free, unreturned bytes and the collections run.
func readHeap() (free, cycles uint64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}
