// Package metrics exposes the aggregator's progress to Prometheus and to
// orchestrators: it implements coordinator.Observer on a private registry,
// and serves /metrics, /healthz and /readyz. A private registry, rather than
// the process-wide default, keeps several jobs in one process (tests, the
// evaluation harness) from colliding on metric names.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/shared/httpserver"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Label values of fdx_update_bytes_total's result label.
const (
	resultAccepted = "accepted"
	resultRejected = "rejected"
)

// shutdownTimeout bounds how long Serve waits for in-flight scrapes once
// its context ends, so a stuck client cannot hold up the process exit.
const shutdownTimeout = 5 * time.Second

var _ coordinator.Observer = (*Metrics)(nil)

// Metrics records one job's progress. Its methods are safe for concurrent
// use and never block, as coordinator.Observer requires.
//
// Client ids are deliberately never used as label values: the number of
// clients is unbounded, and each distinct label value would be a new time
// series kept forever by the registry and by Prometheus.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler
	ready   atomic.Bool
	traffic atomic.Pointer[trafficFn]

	roundsCompleted prometheus.Counter
	currentRound    prometheus.Gauge
	accepted        prometheus.Counter
	rejected        *prometheus.CounterVec
	updateBytes     *prometheus.CounterVec
	roundDuration   prometheus.Histogram
	aggregation     prometheus.Histogram
	roundClients    prometheus.Gauge
	accuracy        prometheus.Gauge
	loss            prometheus.Gauge
}

// trafficFn reports cumulative transport counts; see Metrics.TrafficFunc.
type trafficFn func() (msgsSent, msgsRecv, bytesSent, bytesRecv int64)

// New returns metrics for one job on the given channel ("kafka", "grpc",
// ...), registered on a registry of their own. The job id and channel
// become constant labels fdx_job and channel of every fdx_ metric so that
// dashboards can tell jobs and transports apart. The label is not "job":
// Prometheus sets "job" to the scrape config's name, and a target's own
// "job" would be renamed exported_job on ingestion. The process starts not
// ready; call SetReady once the channel accepts clients.
func New(job, channel string) *Metrics {
	reg := prometheus.NewRegistry()
	// The Go and process collectors describe the process, not the job, so
	// they are registered without the job and channel labels.
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	fdx := prometheus.WrapRegistererWithPrefix("fdx_",
		prometheus.WrapRegistererWith(prometheus.Labels{"fdx_job": job, "channel": channel}, reg))

	// The buckets span 10 ms to 10 min: aggregating a small model takes
	// milliseconds, while a round that waits for slow clients or for its
	// deadline can take minutes.
	durationBuckets := []float64{
		0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30, 60, 120, 300, 600,
	}
	m := &Metrics{
		reg: reg,
		roundsCompleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rounds_completed_total",
			Help: "Rounds closed, aggregated and published.",
		}),
		currentRound: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "current_round",
			Help: "Round currently collecting updates.",
		}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "updates_accepted_total",
			Help: "Client updates that passed validation.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "updates_rejected_total",
			Help: "Client updates rejected by validation, by reason.",
		}, []string{"reason"}),
		updateBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "update_bytes_total",
			Help: "Encoded size of received client updates, by validation result.",
		}, []string{"result"}),
		roundDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "round_duration_seconds",
			Help:    "Time from publishing a round's model to publishing the next one.",
			Buckets: durationBuckets,
		}),
		aggregation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aggregation_duration_seconds",
			Help:    "Time spent aggregating a round's updates.",
			Buckets: durationBuckets,
		}),
		roundClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "round_clients",
			Help: "Clients whose updates went into the last closed round.",
		}),
		accuracy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "model_accuracy_ratio",
			Help: "Held-out accuracy of the global model after the last closed round, as a fraction from 0 to 1.",
		}),
		loss: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "model_loss",
			Help: "Held-out loss of the global model after the last closed round.",
		}),
	}
	fdx.MustRegister(
		m.roundsCompleted, m.currentRound, m.accepted, m.rejected, m.updateBytes,
		m.roundDuration, m.aggregation, m.roundClients, m.accuracy, m.loss,
		newTrafficCollector(m),
	)

	// Series that exist from the start show up as zeros on dashboards and
	// make rate() and increase() correct from the first rejection on;
	// series created lazily would lose that first increment.
	for _, r := range rules.Reasons() {
		m.rejected.WithLabelValues(string(r))
	}
	m.updateBytes.WithLabelValues(resultAccepted)
	m.updateBytes.WithLabelValues(resultRejected)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg,
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			// A failing collector should not hide every other metric.
			ErrorHandling: promhttp.ContinueOnError,
			Registry:      reg,
		})))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Liveness only says the process can answer; readiness is
		// separate so an orchestrator does not restart a job that is
		// still waiting for its broker.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !m.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	m.handler = mux
	return m
}

// Registry returns the registry the metrics live on, so callers can add
// collectors of their own or gather without HTTP.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// RoundStarted implements coordinator.Observer.
func (m *Metrics) RoundStarted(round int64) {
	m.currentRound.Set(float64(round))
}

// UpdateAccepted implements coordinator.Observer. clientID is ignored; see
// Metrics.
func (m *Metrics) UpdateAccepted(_ string, bytes int) {
	m.accepted.Inc()
	m.updateBytes.WithLabelValues(resultAccepted).Add(float64(max(bytes, 0)))
}

// UpdateRejected implements coordinator.Observer. clientID is ignored; see
// Metrics. reason is a closed enumeration, so it is safe as a label value.
func (m *Metrics) UpdateRejected(reason rules.Reason, _ string, bytes int) {
	m.rejected.WithLabelValues(string(reason)).Inc()
	m.updateBytes.WithLabelValues(resultRejected).Add(float64(max(bytes, 0)))
}

// RoundClosed implements coordinator.Observer. The record's per-round
// rejection counts are not added: UpdateRejected already counted each one
// as it happened. Its contributor ids are not exported; see Metrics.
func (m *Metrics) RoundClosed(r coordinator.RoundRecord) {
	m.roundsCompleted.Inc()
	m.roundDuration.Observe(r.DurationMs / 1000)
	m.aggregation.Observe(r.AggregateMs / 1000)
	m.roundClients.Set(float64(r.Clients))
	m.accuracy.Set(r.Accuracy)
	m.loss.Set(r.Loss)
}

// TrafficFunc makes each scrape export f's cumulative transport counts as
// fdx_channel_messages_total and fdx_channel_bytes_total, labelled by
// direction. Reading at scrape time, rather than copying the counts on
// every message, keeps the channel's hot path free of metrics work. f must
// be safe for concurrent use and fast. A later call replaces f; nil stops
// the export.
func (m *Metrics) TrafficFunc(f func() (msgsSent, msgsRecv, bytesSent, bytesRecv int64)) {
	if f == nil {
		m.traffic.Store(nil)
		return
	}
	tf := trafficFn(f)
	m.traffic.Store(&tf)
}

// SetReady sets what /readyz reports.
func (m *Metrics) SetReady(ready bool) { m.ready.Store(ready) }

// Handler serves /metrics for this registry, /healthz (200 while the
// process runs) and /readyz (200 once SetReady(true), 503 otherwise).
func (m *Metrics) Handler() http.Handler { return m.handler }

// trafficCollector exports the counts of Metrics.traffic. One call of the
// function per scrape gives messages and bytes from the same instant.
type trafficCollector struct {
	m               *Metrics
	messages, bytes *prometheus.Desc
}

func newTrafficCollector(m *Metrics) *trafficCollector {
	return &trafficCollector{
		m: m,
		messages: prometheus.NewDesc("channel_messages_total",
			"Transport messages moved by the aggregator, by direction.", []string{"direction"}, nil),
		bytes: prometheus.NewDesc("channel_bytes_total",
			"Transport payload bytes moved by the aggregator, by direction.", []string{"direction"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *trafficCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.messages
	ch <- c.bytes
}

// Collect implements prometheus.Collector.
func (c *trafficCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.traffic.Load()
	if f == nil {
		return
	}
	msgsSent, msgsRecv, bytesSent, bytesRecv := (*f)()
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(msgsSent), "sent")
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(msgsRecv), "received")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(bytesSent), "sent")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(bytesRecv), "received")
}

// Serve listens on addr and serves h in a goroutine until ctx ends, then
// shuts down gracefully. Listening happens before Serve returns, so a taken
// port is reported to the caller rather than only logged, and with port 0
// the returned address says which port was chosen. log may be nil.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (boundAddr string, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics listen on %q: %w", addr, err)
	}
	srv := httpserver.New(h, httpserver.Timeouts{}, log)
	bound := ln.Addr().String()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", bound, "err", err)
		}
	}()
	context.AfterFunc(ctx, func() {
		// ctx is already done, so the shutdown needs a context of its own.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("metrics server shutdown", "addr", bound, "err", err)
		}
	})
	log.Info("metrics server listening", "addr", bound)
	return bound, nil
}
