package nodeagent

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_node_agent_token_requests_total",
			Help: "Token requests by endpoint (imds, appservice, provider) and HTTP status."}, []string{"endpoint", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "coffer_node_agent_token_request_duration_seconds",
			Help: "Token request latency by endpoint.", Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5}}, []string{"endpoint"}),
	}
}

func (m *metrics) observe(endpoint string, status int, d time.Duration) {
	m.requests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(endpoint).Observe(d.Seconds())
}

// Register adds the agent's metrics to reg.
func (a *Agent) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{a.metrics.requests, a.metrics.latency} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
