package coordinator

import (
	"strings"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Federated is a round's federated evaluation: the sampled clients'
// evaluation of the model the round started from (ModelRound), on their
// held-out examples, weighted by those examples. Compare it with the
// centralized figures of the previous round's record (or the job's initial
// ones), which score the same model on the test set.
type Federated struct {
	ModelRound int64   `json:"model_round"`
	Clients    int     `json:"clients"`
	Examples   int64   `json:"examples"`
	Loss       float64 `json:"loss"`
	Accuracy   float64 `json:"accuracy"`
	// Metrics is every evaluation metric the clients reported, aggregated
	// by the strategy's Policy (example-weighted by default).
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// roundMetrics is what the open round's clients reported about themselves.
type roundMetrics struct {
	fit  []strategy.ClientMetrics
	eval []strategy.ClientMetrics
}

// noteFit keeps an accepted update's metrics: its training figures, and its
// evaluation when the client was sampled to evaluate.
func (c *Coordinator) noteFit(st *roundState, u *fdxv1.Update) {
	if len(u.GetMetrics()) == 0 {
		return
	}
	fit := map[string]float64{}
	for k, v := range u.GetMetrics() {
		if k != rules.MetricEvalLoss && k != rules.MetricEvalAccuracy && k != rules.MetricEvalExamples {
			fit[k] = v
		}
	}
	st.metrics.fit = append(st.metrics.fit, strategy.ClientMetrics{ClientID: u.GetClientId(), Examples: u.GetNumExamples(), Metrics: fit})
	if st.in.Check().WantsEvaluation(u.GetClientId()) {
		if n, ok := st.in.Check().EvalExamples(u.GetClientId(), u.GetMetrics()[rules.MetricEvalExamples]); ok {
			c.noteEval(st, u.GetClientId(), n, u.GetMetrics())
		} else {
			c.log.Warn("evaluation ignored: bad example count", "round", st.rec.Round, "client_id", u.GetClientId(),
				"eval_examples", u.GetMetrics()[rules.MetricEvalExamples])
		}
	}
}

func (c *Coordinator) noteEval(st *roundState, id string, n int64, m map[string]float64) {
	ev := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, "eval_") && k != rules.MetricEvalExamples {
			ev[k] = v
		}
	}
	st.in.Check().AdmitEvaluation(id)
	st.metrics.eval = append(st.metrics.eval, strategy.ClientMetrics{ClientID: id, Examples: n, Metrics: ev})
}

// evaluationsDue tells whether the round still waits for evaluations: the
// whole evaluation sample before the deadline, min-evaluate-clients of it
// after.
func (c *Coordinator) evaluationsDue(st *roundState) bool {
	if st.plan.eval == nil {
		return false
	}
	want := len(st.plan.eval)
	if st.pastDeadline {
		want = min(want, c.cfg.Sampling.MinEvaluate)
	}
	return st.in.Check().Evaluations() < want
}

// summarize puts the clients' own figures into the round record.
func (c *Coordinator) summarize(st *roundState) {
	rec := &st.rec
	rec.Sampled = st.plan.sampledIDs()
	rec.FitMetrics = c.policy.AggregateFitMetrics(st.metrics.fit)
	if len(st.metrics.eval) == 0 {
		return
	}
	f := &Federated{ModelRound: rec.Round, Clients: len(st.metrics.eval), Metrics: c.policy.AggregateEvaluate(st.metrics.eval)}
	for _, e := range st.metrics.eval {
		f.Examples += e.Examples
	}
	f.Loss, f.Accuracy = f.Metrics[rules.MetricEvalLoss], f.Metrics[rules.MetricEvalAccuracy]
	rec.Federated = f
}
