package coordinator_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// TestSampledRound: a round with a fit sample and an evaluation sample
// takes only the sampled clients' updates, refuses the others with their
// reasons, waits for the evaluations too, and records the federated figures
// weighted by the evaluators' examples.
func TestSampledRound(t *testing.T) {
	pop := []string{"a", "b", "c", "d", "e", "f"}
	var seed uint64
	var fit, eval []string
	evalOnly := ""
	for seed = 1; evalOnly == ""; seed++ {
		fit, _, _ = rules.Draw(seed, 1, rules.RoleFit, pop, 3)
		eval, _, _ = rules.Draw(seed, 1, rules.RoleEvaluate, pop, 2)
		for _, id := range eval {
			if !slices.Contains(fit, id) {
				evalOnly = id
			}
		}
	}
	seed--
	outsider := ""
	for _, id := range pop {
		if !slices.Contains(fit, id) && !slices.Contains(eval, id) {
			outsider = id
		}
	}
	specs := testSpecs(t)
	cfg := testConfig(2)
	cfg.Sampling = &coordinator.Sampling{Seed: seed, Population: pop, FractionFit: 0.5, FractionEvaluate: 0.34}
	srv := newFakeServer()
	rep := newReplies()
	evalUpdate := func(id string, n int64, acc float64) *fdxv1.Update {
		return &fdxv1.Update{Job: testJob, ClientId: id, BaseRound: 1, EvaluateOnly: true, NumExamples: n,
			Metrics: map[string]float64{rules.MetricEvalAccuracy: acc, rules.MetricEvalLoss: 1 - acc}}
	}
	withParams := evalUpdate(evalOnly, 20, 0.75)
	withParams.Params = tensorsOf(specs)
	queue := []struct {
		name string
		u    *fdxv1.Update
		want string // "" accepted
	}{
		{"outsider trains", newUpdate(specs, outsider, 1, 10, localParams(specs, 1)), "not_sampled"},
		{"outsider evaluates", evalUpdate(outsider, 20, 0.9), "not_sampled"},
		{"evaluation with params", withParams, "wrong_shape"},
		{"evaluation of no examples", evalUpdate(evalOnly, 0, 0.75), "bad_num_examples"},
		{"evaluation", evalUpdate(evalOnly, 20, 0.75), ""},
		{"evaluation again", evalUpdate(evalOnly, 20, 0.1), "duplicate"},
	}
	// The trainers; one drawn to evaluate too reports in its update.
	wantSum, wantN := 20*0.75, 20.0
	for i, id := range fit {
		u := newUpdate(specs, id, 1, int64(10+i), localParams(specs, i+1))
		u.Metrics = map[string]float64{"loss": float64(i), "accuracy": 0.5}
		if slices.Contains(eval, id) {
			u.Metrics[rules.MetricEvalAccuracy], u.Metrics[rules.MetricEvalLoss], u.Metrics[rules.MetricEvalExamples] = 0.5, 0.5, 30
			wantSum += 30 * 0.5
			wantN += 30
		}
		queue = append(queue, struct {
			name string
			u    *fdxv1.Update
			want string
		}{"fit " + id, u, ""})
	}
	for _, q := range queue {
		srv.updates <- rep.deliver(q.name, q.u, 0)
	}
	c := newCoordinator(t, cfg, srv, nil)
	res := wait(t, runAsync(context.Background(), c))
	if res.err != nil {
		t.Fatal(res.err)
	}
	for _, q := range queue {
		v := rep.get(q.name)
		if q.want == "" && !v.accepted || q.want != "" && !strings.HasPrefix(v.reason, q.want+":") {
			t.Errorf("%s: accepted %v reason %q, want %q", q.name, v.accepted, v.reason, q.want)
		}
	}
	r := res.res.Rounds[0]
	if !slices.Equal(r.Sampled, fit) || !slices.Equal(r.Contributors, fit) {
		t.Errorf("sampled %v contributors %v, want %v", r.Sampled, r.Contributors, fit)
	}
	f := r.Federated
	if f == nil || f.Clients != len(eval) || f.Examples != int64(wantN) || math.Abs(f.Accuracy-wantSum/wantN) > 1e-15 {
		t.Errorf("federated %+v, want %d clients on %v examples, accuracy %v", f, len(eval), wantN, wantSum/wantN)
	}
	// loss 0, 1, 2 weighted by 10, 11, 12 examples.
	if want := (0*10 + 1*11 + 2*12) / 33.0; math.Abs(r.FitMetrics["loss"]-want) > 1e-15 {
		t.Errorf("fit metrics %v, want loss %v", r.FitMetrics, want)
	}
	ms := srv.models()
	s := ms[0].GetSampling()
	if s == nil || !slices.Equal(s.GetFitClients(), fit) || !slices.Equal(s.GetEvaluateClients(), eval) || s.GetPopulation() != 6 {
		t.Fatalf("round 1 model's sampling %v, want fit %v eval %v", s, fit, eval)
	}
	for _, id := range pop {
		if rules.Sampled(ms[0], rules.RoleFit, id) != slices.Contains(fit, id) || rules.Sampled(ms[0], rules.RoleEvaluate, id) != slices.Contains(eval, id) {
			t.Errorf("client %s: the record's thresholds disagree with its lists", id)
		}
	}
	if last := ms[len(ms)-1]; !last.GetFinal() || last.GetSampling() != nil {
		t.Errorf("final model: final %v, sampling %v; want final without sampling", last.GetFinal(), last.GetSampling())
	}
}

func TestSamplingConfigErrors(t *testing.T) {
	for name, s := range map[string]*coordinator.Sampling{
		"no population":        {FractionFit: 0.5},
		"population below min": {FractionFit: 0.5, Population: []string{"a"}},
		"fraction above 1":     {FractionFit: 1.5, Population: []string{"a", "b"}},
		"negative evaluate":    {FractionEvaluate: -0.1, Population: []string{"a", "b"}},
		"duplicate id":         {FractionFit: 0.5, Population: []string{"a", "b", "a"}},
		"bad id":               {FractionFit: 0.5, Population: []string{"a", ""}},
	} {
		cfg := testConfig(2)
		cfg.Sampling = s
		if _, err := coordinator.New(cfg, newFakeServer(), nil, nil, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func tensorsOf(specs []tensor.Spec) []*fdxv1.Tensor {
	return newUpdate(specs, "x", 1, 1, filled(specs, 0)).GetParams()
}
