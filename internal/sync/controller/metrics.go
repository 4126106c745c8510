package controller

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus series.
type Metrics struct {
	syncs       *prometheus.CounterVec
	writes      *prometheus.CounterVec
	tokens      *prometheus.CounterVec
	pushes      prometheus.Counter
	pushLatency prometheus.Histogram
}

// NewMetrics registers the controller's series with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_sync_syncs_total",
			Help: "SecretSync syncs by result: created, updated, unchanged, released (a retained Secret let go), or the condition reason of a failure (ProviderError, ControllerSPCError, ...)."}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_sync_api_writes_total",
			Help: "Writes to the apiserver by this replica: Secret create and update, SecretSync status."}, []string{"op"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "coffer_sync_token_requests_total",
			Help: "TokenRequest calls for SecretSyncs' service accounts, by result (ok or error)."}, []string{"result"}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{Name: "coffer_sync_pushes_total",
			Help: "SecretSyncs a provider reported changed (push refresh)."}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "coffer_sync_push_to_secret_seconds",
			Help:    "From a provider's report that a SecretSync's objects changed in the vault to the Secret's update: the controller's share of the time from a vault change to the Secret (the provider reports a change within milliseconds of the vault's commit).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}),
	}
	if reg != nil {
		reg.MustRegister(m.syncs, m.writes, m.tokens, m.pushes, m.pushLatency)
	}
	return m
}

func (m *Metrics) result(r string) { m.syncs.WithLabelValues(r).Inc() }
func (m *Metrics) write(op string) { m.writes.WithLabelValues(op).Inc() }
func (m *Metrics) token(r string)  { m.tokens.WithLabelValues(r).Inc() }
