package etcd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's: round-trip latency by operation, whether the
// watch is up, and how far behind the cluster the watch runs.
type metrics struct {
	latency  *prometheus.HistogramVec
	watching prometheus.Gauge
	lagged   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "coffer_etcd_request_duration_seconds",
			Help:    "Round trips to etcd by operation: get, scan, txn, revision (a linearizable read's quorum read) and sync (a request's whole wait to be current).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}}, []string{"op"}),
		watching: prometheus.NewGauge(prometheus.GaugeOpts{Name: "coffer_etcd_watch_up",
			Help: "1 while this replica's watch of the store is established, 0 while it reconnects (requests then wait or answer 503)."}),
		lagged: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "coffer_etcd_watch_lag_revisions",
			Help:    "How many revisions behind the cluster's the watch's events were when they arrived.",
			Buckets: []float64{0, 1, 2, 5, 10, 50, 100, 1000}}),
	}
	if reg != nil {
		reg.MustRegister(m.latency, m.watching, m.lagged)
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
