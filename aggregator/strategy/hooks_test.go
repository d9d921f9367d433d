package strategy

import (
	"fmt"
	"math"
	"math/big"
	"testing"
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

type planned struct{ fedAvg }

func (planned) Configure(round int64, p Plan) Plan {
	p.LearningRate /= float64(round) // a schedule
	return p
}

func TestConfigureHook(t *testing.T) {
	job := Plan{FractionFit: 0.5, MinFit: 2, LearningRate: 0.1, LocalEpochs: 1}
	if got := Configure(fedAvg{}, 3, job); got != job {
		t.Errorf("fedavg changed the plan: %+v", got)
	}
	prox, _ := New(Config{Name: "fedprox", ProximalMu: 0.3})
	if got := Configure(prox, 1, job); got.ProximalMu != 0.3 {
		t.Errorf("fedprox plan has mu %v, want 0.3", got.ProximalMu)
	}
	set := job
	set.ProximalMu = 0.7
	if got := Configure(prox, 1, set); got.ProximalMu != 0.7 {
		t.Errorf("fedprox overrode the job's mu: %v", got.ProximalMu)
	}
	if got := Configure(planned{}, 4, job); got.LearningRate != 0.025 {
		t.Errorf("a strategy's own hook was not used: %+v", got)
	}
}
