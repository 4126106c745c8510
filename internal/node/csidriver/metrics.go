package csidriver

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cofferhq/coffer/internal/node/providerclient"
	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// Metrics are the upstream driver's Prometheus series, with its names and
// labels, so existing dashboards and alerts keep working.
type Metrics struct {
	publish, publishErr         *prometheus.CounterVec
	unpublish, unpublishErr     *prometheus.CounterVec
	sync                        *prometheus.CounterVec
	syncDuration                *prometheus.HistogramVec
	rotation, rotationErr       *prometheus.CounterVec
	rotationDuration            *prometheus.HistogramVec
	publishDuration, objectsGot *prometheus.HistogramVec
	pushes                      prometheus.Counter
}

// Upstream error_type values.
const (
	ReasonFailedToMount          = string(mounterr.FailedToMount)
	ReasonEnsureMountPoint       = "FailedToEnsureMountPoint"
	ReasonSPCNotFound            = "SecretProviderClassNotFound"
	ReasonProviderLookup         = "FailedToLookupProviderGRPCClient"
	ReasonGRPCProviderError      = string(mounterr.GRPCProviderError)
	ReasonFileWriteError         = "FileWriteError"
	ReasonFailedToCreateSPCPS    = "FailedToCreateSPCPodStatus"
	ReasonFailedToSyncSecret     = "FailedToCreateSecret"
	ReasonInvalidArgument        = "InvalidArgument"
	ReasonNodePublishSecretToken = "ServiceAccountTokenMissing"
)

// NewMetrics registers the series with reg (nil: a private registry).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	buckets := prometheus.ExponentialBucketsRange(0.1, 2, 11)
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	hist := func(name, help string, b []float64, labels ...string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b}, labels)
		reg.MustRegister(h)
		return h
	}
	return &Metrics{
		publish:          counter("node_publish_total", "Total number of node publish calls", "provider", "os_type"),
		publishErr:       counter("node_publish_error_total", "Total number of node publish calls with error", "provider", "error_type", "os_type"),
		unpublish:        counter("node_unpublish_total", "Total number of node unpublish calls", "os_type"),
		unpublishErr:     counter("node_unpublish_error_total", "Total number of node unpublish calls with error", "os_type"),
		sync:             counter("sync_k8s_secret_total", "Total number of k8s secrets synced", "provider", "os_type"),
		syncDuration:     hist("sync_k8s_secret_duration_sec", "Distribution of how long it took to sync k8s secret", buckets, "os_type"),
		rotation:         counter("rotation_reconcile_total", "Total number of rotation reconciles", "provider", "os_type", "rotated"),
		rotationErr:      counter("rotation_reconcile_error_total", "Total number of rotation reconciles with error", "provider", "error_type", "os_type", "rotated"),
		rotationDuration: hist("rotation_reconcile_duration_sec", "Distribution of how long it took to rotate secrets-store content for pods", buckets, "os_type"),
		// Coffer's own: the latency users feel, and the objects per volume.
		publishDuration: hist("coffer_node_publish_duration_seconds", "Node publish latency, provider call and writes included.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "provider", "outcome"),
		objectsGot: hist("coffer_node_publish_files", "Files written per node publish.", prometheus.LinearBuckets(1, 5, 10), "provider"),
		pushes:     counter("coffer_rotation_pushes_total", "Volumes refreshed because their provider reported a change (push rotation).").WithLabelValues(),
	}
}

func (m *Metrics) pushed() { m.pushes.Inc() }

var osType = runtime.GOOS

// label bounds a provider name used as a label: names that are not
// provider names (which are only ever refused) share one value.
func label(provider string) string {
	if provider != "" && !providerclient.ValidName(provider) {
		return "invalid"
	}
	return provider
}

func (m *Metrics) published(provider string, seconds float64, files int) {
	m.publish.WithLabelValues(label(provider), osType).Inc()
	m.publishDuration.WithLabelValues(label(provider), "ok").Observe(seconds)
	m.objectsGot.WithLabelValues(label(provider)).Observe(float64(files))
}

func (m *Metrics) publishFailed(provider, reason string, seconds float64) {
	m.publishErr.WithLabelValues(label(provider), reason, osType).Inc()
	m.publishDuration.WithLabelValues(label(provider), "error").Observe(seconds)
}

func (m *Metrics) unpublished(err error) {
	if err != nil {
		m.unpublishErr.WithLabelValues(osType).Inc()
		return
	}
	m.unpublish.WithLabelValues(osType).Inc()
}

func (m *Metrics) rotated(provider string, rotated bool, seconds float64) {
	m.rotation.WithLabelValues(label(provider), osType, strconv.FormatBool(rotated)).Inc()
	m.rotationDuration.WithLabelValues(osType).Observe(seconds)
}

func (m *Metrics) rotationFailed(provider, reason string) {
	m.rotationErr.WithLabelValues(label(provider), reason, osType, "true").Inc()
}

func (m *Metrics) synced(provider string, seconds float64) {
	m.sync.WithLabelValues(label(provider), osType).Inc()
	m.syncDuration.WithLabelValues(osType).Observe(seconds)
}
