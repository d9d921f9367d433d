package strategy

import (
	"math"
	"slices"
	"strings"
)

// Flower's Strategy has, besides aggregate_fit (Begin, Round), a configure
// side (configure_fit, configure_evaluate) and an evaluation side (evaluate,
// aggregate_evaluate). Here they are optional interfaces with defaults, as
// Reporter and Proximal are: Configure and AggregateMetrics call a
// strategy's own hook when it has one and the default otherwise, so that
// every strategy has both hooks without each carrying boilerplate. The
// centralized evaluation (Flower's evaluate) is the job's Evaluator, run by
// the coordinator on every aggregate.

// Plan is what a round asks of its clients: who trains and who evaluates
// (Flower's fraction and minimum of each), and the round's training
// settings, which travel in the model record's train config.
type Plan struct {
	// FractionFit and MinFit size the round's training sample (Flower's
	// fraction_fit, min_fit_clients); a fraction of 1 asks every client.
	FractionFit float64
	MinFit      int
	// FractionEvaluate and MinEvaluate size the evaluation sample (0: no
	// federated evaluation).
	FractionEvaluate float64
	MinEvaluate      int
	// LearningRate, LocalEpochs and ProximalMu are the clients' training
	// settings for the round.
	LearningRate float64
	LocalEpochs  int
	ProximalMu   float64
}

// Configurer is Flower's configure_fit and configure_evaluate: it adjusts
// the job's plan for one round (a learning-rate schedule, a larger sample
// late in training). It must be a function of its arguments and the
// strategy's State, so that a restarted aggregator plans the same round.
type Configurer interface {
	Configure(round int64, job Plan) Plan
}

// Configure returns s's plan for round: s's own Configure if it has one,
// else the job's plan, with FedProx's μ filled in when the job set none
// (on the server FedProx is FedAvg; its term is the clients').
func Configure(s Strategy, round int64, job Plan) Plan {
	if c, ok := s.(Configurer); ok {
		return c.Configure(round, job)
	}
	if p, ok := s.(Proximal); ok && job.ProximalMu == 0 {
		job.ProximalMu = p.ProximalMu()
	}
	return job
}

// ClientMetrics is one client's figures for a round: its training metrics
// (weighted by the examples it trained on) or its evaluation of the global
// model (weighted by the examples it evaluated on).
type ClientMetrics struct {
	ClientID string
	Examples int64
	Metrics  map[string]float64
}

// MetricsAggregator is Flower's fit_metrics_aggregation_fn and
// evaluate_metrics_aggregation_fn in one: it folds the clients' figures of
// a round into the round's.
type MetricsAggregator interface {
	AggregateMetrics(results []ClientMetrics) map[string]float64
}

// MaxMetricKeys bounds the distinct metric names a round aggregates: a
// client's names are its own, and a hostile one must not grow the round
// record without end.
const MaxMetricKeys = 32

// maxMetricKeyLen bounds one metric name.
const maxMetricKeyLen = 64

// AggregateMetrics folds results with s's own hook if it has one, else with
// WeightedMetrics.
func AggregateMetrics(s Strategy, results []ClientMetrics) map[string]float64 {
	if a, ok := s.(MetricsAggregator); ok {
		return a.AggregateMetrics(results)
	}
	return WeightedMetrics(results)
}

// WeightedMetrics is the example-weighted mean of every metric, as Flower's
// weighted_average: Σ nᵢ·mᵢ / Σ nᵢ over the clients that report the metric
// with a finite value and nᵢ ≥ 1. Clients are summed in client-id order, so
// the result is bit-identical whatever order they arrived in. At most
// MaxMetricKeys names are kept, the first in sorted order; names longer than
// 64 bytes are ignored. A nil map means no client reported anything.
func WeightedMetrics(results []ClientMetrics) map[string]float64 {
	rs := slices.Clone(results)
	slices.SortFunc(rs, func(a, b ClientMetrics) int { return strings.Compare(a.ClientID, b.ClientID) })
	var keys []string
	seen := map[string]bool{}
	for _, r := range rs {
		for k := range r.Metrics {
			if !seen[k] && len(k) <= maxMetricKeyLen {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	if len(keys) > MaxMetricKeys {
		keys = keys[:MaxMetricKeys]
	}
	var out map[string]float64
	for _, k := range keys {
		var sum, weight float64
		for _, r := range rs {
			v, ok := r.Metrics[k]
			if !ok || r.Examples < 1 || math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			sum += float64(r.Examples) * v
			weight += float64(r.Examples)
		}
		if weight == 0 {
			continue
		}
		if m := sum / weight; !math.IsInf(m, 0) && !math.IsNaN(m) {
			if out == nil {
				out = map[string]float64{}
			}
			out[k] = m
		}
	}
	return out
}
