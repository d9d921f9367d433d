package strategy

import (
	"math"
	"slices"
	"strings"

	"github.com/fdxkafka/fdxkafka/shared/model"
)

// Policy is what a strategy decides about a round besides aggregating its
// updates (Strategy.Begin, Flower's aggregate_fit): the rest of Flower's
// Strategy, one method each. Every strategy embeds Default and overrides
// what it changes, as FedProx does ConfigureFit; the round loop asks only
// the Policy. Its methods must be functions of their arguments and the
// strategy's State, so that a restarted aggregator decides a round as the
// first did.
type Policy interface {
	// ConfigureFit is configure_fit: who trains in round (FractionFit,
	// MinFit) and how (LearningRate, LocalEpochs, ProximalMu), from the
	// job's plan.
	ConfigureFit(round int64, job Plan) Plan
	// ConfigureEvaluate is configure_evaluate: who evaluates round's
	// starting model (FractionEvaluate, MinEvaluate).
	ConfigureEvaluate(round int64, job Plan) Plan
	// AggregateFitMetrics folds the clients' own training figures of a
	// round into the round's (Flower's fit_metrics_aggregation_fn).
	AggregateFitMetrics(results []ClientMetrics) map[string]float64
	// AggregateEvaluate folds the clients' evaluations of a round's model
	// into the round's federated evaluation (aggregate_evaluate).
	AggregateEvaluate(results []ClientMetrics) map[string]float64
	// Evaluate is the centralized evaluation (evaluate) of the model
	// that closes round, with central, the job's held-out test set; ok
	// false: the model goes unevaluated.
	Evaluate(round int64, params [][]float32, central Evaluator) (m model.Metrics, ok bool, err error)
}

// Evaluator scores global parameters on held-out data.
type Evaluator func(params [][]float32) (model.Metrics, error)

// Default is the Policy of plain FedAvg, which strategies embed: the job's
// plan as it is, example-weighted metrics (WeightedMetrics), and every
// model evaluated.
type Default struct{}

// ConfigureFit returns the job's plan.
func (Default) ConfigureFit(_ int64, job Plan) Plan { return job }

// ConfigureEvaluate returns the job's plan.
func (Default) ConfigureEvaluate(_ int64, job Plan) Plan { return job }

// AggregateFitMetrics is WeightedMetrics.
func (Default) AggregateFitMetrics(results []ClientMetrics) map[string]float64 {
	return WeightedMetrics(results)
}

// AggregateEvaluate is WeightedMetrics.
func (Default) AggregateEvaluate(results []ClientMetrics) map[string]float64 {
	return WeightedMetrics(results)
}

// Evaluate evaluates every model with central.
func (Default) Evaluate(_ int64, params [][]float32, central Evaluator) (model.Metrics, bool, error) {
	m, err := central(params)
	return m, err == nil, err
}

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

// ClientMetrics is one client's figures for a round: its training metrics
// (weighted by the examples it trained on) or its evaluation of the global
// model (weighted by the examples it evaluated on).
type ClientMetrics struct {
	ClientID string
	Examples int64
	Metrics  map[string]float64
}

// MaxMetricKeys bounds the distinct metric names a round aggregates: a
// client's names are its own, and a hostile one must not grow the round
// record without end.
const MaxMetricKeys = 32

// maxMetricKeyLen bounds one metric name.
const maxMetricKeyLen = 64

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
