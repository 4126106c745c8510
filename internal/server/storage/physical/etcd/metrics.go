package etcd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's: round-trip latency by operation, whether the
// watch is up, how far behind the cluster the watch runs, and how often
// the local view holds what a synced read asks for (to size ViewBytes).
type metrics struct {
	latency  *prometheus.HistogramVec
	watching prometheus.Gauge
	lagged   prometheus.Histogram
	reads    *prometheus.CounterVec
	// held and fetched are reads' two results, resolved once: a synced
	// read is on every request's path.
	held, fetched prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "coffer_etcd_request_duration_seconds",
			Help:    "Round trips to etcd by operation: get, scan, fetch (a synced read of a key the local view does not hold), txn, revision (a linearizable read's quorum read) and sync (a request's whole wait to be current).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}}, []string{"op"}),
		watching: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_etcd_watch_up",
			Help: "1 while this replica's watch of the store is established, 0 while it reconnects (requests then wait or answer 503)."}),
		lagged: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "coffer_etcd_watch_lag_revisions",
			Help:    "How many revisions behind the cluster's the watch's events were when they arrived.",
			Buckets: []float64{0, 1, 2, 5, 10, 50, 100, 1000}}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_etcd_view_reads_total",
			Help: "Synced reads of one key: held (answered from the local view) or fetched (read from the cluster). Many fetched: raise --etcd-view-bytes."}, []string{"result"}),
	}
	m.held, m.fetched = m.reads.WithLabelValues("held"), m.reads.WithLabelValues("fetched")
	if reg != nil {
		reg.MustRegister(m.latency, m.watching, m.lagged, m.reads)
	}
	return m
}

func (m *metrics) observe(op string, start time.Time) {
	m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (m *metrics) setWatching(ok bool) {
	if ok {
		m.watching.Set(1)
	} else {
		m.watching.Set(0)
	}
}

// lag records how far a watch response's last event trails the cluster
// revision the response was generated at.
func (m *metrics) lag(header, last int64) {
	if header >= last {
		m.lagged.Observe(float64(header - last))
	}
}
