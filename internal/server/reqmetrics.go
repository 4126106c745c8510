package server

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// requestMetrics counts requests by API and status and times them by API.
// It keeps each label set's child: WithLabelValues hashes its labels, and
// the status would be formatted again, on every request. Both label sets
// are small and bounded: the APIs are a fixed list and the statuses are
// those the handlers write.
type requestMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	counters  sync.Map // requestLabels -> prometheus.Counter
	observers sync.Map // api -> prometheus.Observer
}

type requestLabels struct {
	api    string
	status int
}

func newRequestMetrics(reg prometheus.Registerer) *requestMetrics {
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_http_requests_total", Help: "HTTP requests by API and status code."}, []string{"api", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "coffer_http_request_duration_seconds", Help: "HTTP request latency by API.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}}, []string{"api"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// observe counts one request and records how long it took.
func (m *requestMetrics) observe(api string, status int, elapsed time.Duration) {
	k := requestLabels{api, status}
	c, ok := m.counters.Load(k)
	if !ok {
		c, _ = m.counters.LoadOrStore(k, m.requests.WithLabelValues(api, strconv.Itoa(status)))
	}
	c.(prometheus.Counter).Inc()
	o, ok := m.observers.Load(api)
	if !ok {
		o, _ = m.observers.LoadOrStore(api, m.latency.WithLabelValues(api))
	}
	o.(prometheus.Observer).Observe(elapsed.Seconds())
}
