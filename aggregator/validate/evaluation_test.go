package validate_test

import (
	"errors"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// evalExpect is logregExpect with client-7 sampled to evaluate and every
// client holding a shard of 50 examples (client-9 none).
func evalExpect(t *testing.T) validate.Expect {
	e := logregExpect(t)
	e.EvalSample = map[string]bool{"client-7": true}
	e.ExamplesOf = func(id string) (int64, error) {
		if id == "client-9" {
			return 0, errors.New("no shard")
		}
		return 50, nil
	}
	return e
}

func evaluation(id string, n int64) *fdxv1.Update {
	return &fdxv1.Update{Job: job, ClientId: id, BaseRound: round, NumExamples: n,
		Metrics: map[string]float64{rules.MetricEvalLoss: 0.5, rules.MetricEvalAccuracy: 0.9}}
}

func TestCheckEvaluation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		update *fdxv1.Update
		want   rules.Reason // "": accepted
	}{
		{"sampled", evaluation("client-7", 50), ""},
		{"not sampled", evaluation("client-8", 10), rules.NotSampled},
		{"other job", func() *fdxv1.Update { u := evaluation("client-7", 10); u.Job = "other"; return u }(), rules.WrongJob},
		{"stale", func() *fdxv1.Update { u := evaluation("client-7", 10); u.BaseRound = round - 1; return u }(), rules.StaleRound},
		{"with tensors", func() *fdxv1.Update {
			u := validUpdate(logregExpect(t))
			u.Metrics = evaluation("", 1).Metrics
			return u
		}(), rules.WrongShape},
		{"zero examples", evaluation("client-7", 0), rules.BadNumExamples},
		{"more than the shard", evaluation("client-7", 51), rules.BadNumExamples},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := validate.NewRound(evalExpect(t))
			n, rej := r.CheckEvaluation(tc.update, proto.Size(tc.update))
			switch {
			case tc.want == "" && rej != nil:
				t.Fatalf("refused: %v", rej)
			case tc.want == "" && n != tc.update.GetNumExamples():
				t.Errorf("weight %d, want %d", n, tc.update.GetNumExamples())
			case tc.want != "" && (rej == nil || rej.Reason != tc.want):
				t.Errorf("got %v, want %s", rej, tc.want)
			}
		})
	}
}

// TestEvaluationOnce: an admitted evaluation is a duplicate the second
// time, whether it comes alone or in a training update's metrics.
func TestEvaluationOnce(t *testing.T) {
	r := validate.NewRound(evalExpect(t))
	u := evaluation("client-7", 20)
	if !r.WantsEvaluation("client-7") || r.WantsEvaluation("client-8") {
		t.Fatal("WantsEvaluation does not follow the evaluation sample")
	}
	if _, rej := r.CheckEvaluation(u, proto.Size(u)); rej != nil {
		t.Fatalf("first evaluation: %v", rej)
	}
	r.AdmitEvaluation("client-7")
	if _, rej := r.CheckEvaluation(u, proto.Size(u)); rej == nil || rej.Reason != rules.Duplicate {
		t.Errorf("second evaluation: %v, want duplicate", rej)
	}
	if r.WantsEvaluation("client-7") || r.Evaluations() != 1 {
		t.Errorf("after one evaluation: WantsEvaluation %v, Evaluations %d", r.WantsEvaluation("client-7"), r.Evaluations())
	}
}

func TestEvalExamples(t *testing.T) {
	r := validate.NewRound(evalExpect(t))
	for _, tc := range []struct {
		id   string
		v    float64
		want int64 // 0: refused
	}{
		{"client-7", 1, 1}, {"client-7", 50, 50}, {"client-7", 50.5, 0}, {"client-7", 51, 0},
		{"client-7", 0, 0}, {"client-7", -3, 0}, {"client-7", math.NaN(), 0}, {"client-9", 1, 0},
	} {
		n, ok := r.EvalExamples(tc.id, tc.v)
		if (tc.want == 0) == ok || n != tc.want {
			t.Errorf("EvalExamples(%s, %v) = %d, %v; want %d", tc.id, tc.v, n, ok, tc.want)
		}
	}
}
