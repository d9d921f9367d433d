package strategy

import (
	"fmt"
	"math"
	"math/big"
	"testing"

	"github.com/fdxkafka/fdxkafka/shared/model"
)

func TestWeightedMetricsByHand(t *testing.T) {
	in := []ClientMetrics{
		{ClientID: "b", Examples: 300, Metrics: map[string]float64{"loss": 0.5, "accuracy": 0.8}},
		{ClientID: "a", Examples: 100, Metrics: map[string]float64{"loss": 1.5, "accuracy": 0.4, "only_a": 7}},
		{ClientID: "c", Examples: 600, Metrics: map[string]float64{"loss": math.NaN(), "accuracy": 0.9}},
		{ClientID: "d", Examples: 0, Metrics: map[string]float64{"loss": 100}}, // no weight
		{ClientID: "e", Examples: 5, Metrics: map[string]float64{"loss": math.Inf(1)}},
	}
	got := WeightedMetrics(in)
	// loss: (100·1.5 + 300·0.5) / 400 = 0.75; accuracy: (40 + 240 + 540) / 1000 = 0.82.
	want := map[string]*big.Rat{"loss": big.NewRat(3, 4), "accuracy": big.NewRat(82, 100), "only_a": big.NewRat(7, 1)}
	if len(got) != len(want) {
		t.Fatalf("got %v, want keys of %v", got, want)
	}
	for k, w := range want {
		wf, _ := w.Float64()
		if math.Abs(got[k]-wf) > 1e-15 {
			t.Errorf("%s = %v, want %v", k, got[k], wf)
		}
	}
	// Arrival order does not change a bit.
	rev := []ClientMetrics{in[4], in[3], in[2], in[1], in[0]}
	again := WeightedMetrics(rev)
	for k := range got {
		if math.Float64bits(got[k]) != math.Float64bits(again[k]) {
			t.Errorf("%s: %v in one order, %v in another", k, got[k], again[k])
		}
	}
	if WeightedMetrics(nil) != nil {
		t.Error("no clients gave figures")
	}
}

func TestWeightedMetricsBoundsNames(t *testing.T) {
	m := map[string]float64{}
	for i := range 100 {
		m[fmt.Sprintf("k%03d", i)] = 1
	}
	m[string(make([]byte, 65))] = 1
	got := WeightedMetrics([]ClientMetrics{{ClientID: "x", Examples: 1, Metrics: m}})
	if len(got) != MaxMetricKeys {
		t.Errorf("%d names kept, want %d", len(got), MaxMetricKeys)
	}
	if _, ok := got["k000"]; !ok {
		t.Error("the first names in sorted order were not the ones kept")
	}
}

// planned overrides two of Policy's methods and keeps the defaults of the
// others.
type planned struct{ fedAvg }

func (planned) ConfigureFit(round int64, p Plan) Plan {
	p.LearningRate /= float64(round) // a schedule
	return p
}

// Evaluate skips the odd rounds.
func (planned) Evaluate(round int64, params [][]float32, central Evaluator) (model.Metrics, bool, error) {
	if round%2 == 1 {
		return model.Metrics{}, false, nil
	}
	return Default{}.Evaluate(round, params, central)
}

func TestPolicy(t *testing.T) {
	job := Plan{FractionFit: 0.5, MinFit: 2, LearningRate: 0.1, LocalEpochs: 1, FractionEvaluate: 0.2, MinEvaluate: 1}
	every := []string{"fedavg", "fedprox", "fedadam", "median", "krum", "dpfedavg-fixed"}
	for _, name := range every {
		s := mustNew(t, Config{Name: name, NoiseMultiplier: 0.1, ClipNorm: 1})
		if got := s.ConfigureEvaluate(3, job); got != job {
			t.Errorf("%s changed the evaluation plan: %+v", name, got)
		}
		if got := s.ConfigureFit(3, job); name != "fedprox" && got != job {
			t.Errorf("%s changed the fit plan: %+v", name, got)
		}
	}
	prox := mustNew(t, Config{Name: "fedprox", ProximalMu: 0.3})
	if got := prox.ConfigureFit(1, job); got.ProximalMu != 0.3 || got.LearningRate != job.LearningRate {
		t.Errorf("fedprox plan %+v, want the job's with mu 0.3", got)
	}
	set := job
	set.ProximalMu = 0.7
	if got := prox.ConfigureFit(1, set); got.ProximalMu != 0.7 {
		t.Errorf("fedprox overrode the job's mu: %v", got.ProximalMu)
	}

	var s Strategy = planned{}
	if got := s.ConfigureFit(4, job); got.LearningRate != 0.025 {
		t.Errorf("a strategy's own ConfigureFit was not used: %+v", got)
	}
	calls := 0
	central := func([][]float32) (model.Metrics, error) { calls++; return model.Metrics{Accuracy: 0.5}, nil }
	if _, ok, _ := s.Evaluate(3, nil, central); ok || calls != 0 {
		t.Errorf("round 3: evaluated %v, %d calls; want skipped", ok, calls)
	}
	if m, ok, err := s.Evaluate(4, nil, central); !ok || err != nil || m.Accuracy != 0.5 || calls != 1 {
		t.Errorf("round 4: %+v, %v, %v, %d calls; want the central evaluation", m, ok, err, calls)
	}
	fit := []ClientMetrics{{ClientID: "a", Examples: 1, Metrics: map[string]float64{"loss": 1}}, {ClientID: "b", Examples: 3, Metrics: map[string]float64{"loss": 3}}}
	if got := s.AggregateFitMetrics(fit); got["loss"] != 2.5 {
		t.Errorf("default fit metrics %v, want the weighted loss 2.5", got)
	}
	if got := s.AggregateEvaluate(fit); got["loss"] != 2.5 {
		t.Errorf("default evaluation metrics %v, want the weighted loss 2.5", got)
	}
}
