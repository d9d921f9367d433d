package coordinator

import (
	"math"
	"strings"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
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
	// by the strategy's hook (example-weighted by default).
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// roundMetrics is what the open round's clients reported about themselves.
type roundMetrics struct {
	fit  []strategy.ClientMetrics
	eval []strategy.ClientMetrics
	// evaluated is the clients whose evaluation counts.
	evaluated map[string]bool
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
	if st.plan.eval[u.GetClientId()] {
		if n, ok := c.evalExamples(u.GetClientId(), u.GetMetrics()[rules.MetricEvalExamples]); ok {
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
	if st.metrics.evaluated == nil {
		st.metrics.evaluated = map[string]bool{}
	}
	st.metrics.evaluated[id] = true
	st.metrics.eval = append(st.metrics.eval, strategy.ClientMetrics{ClientID: id, Examples: n, Metrics: ev})
}

// evalExamples checks a claimed count of evaluation examples: a whole
// number from 1 to the client's shard, so no client outweighs what it holds.
func (c *Coordinator) evalExamples(id string, v float64) (int64, bool) {
	if !(v >= 1) || v != math.Trunc(v) || v > rules.MaxWeight {
		return 0, false
	}
	n := int64(v)
	if c.cfg.ExamplesOf != nil {
		held, err := c.cfg.ExamplesOf(id)
		if err != nil || n > held {
			return 0, false
		}
	}
	return n, true
}

// takeEvaluation handles an evaluate-only update: it checks the envelope,
// that the client was sampled to evaluate and has not yet, and keeps its
// figures. It never touches the model.
func (c *Coordinator) takeEvaluation(st *roundState, d channel.Delivery) {
	rej := d.Rejection
	u := d.Update
	if rej == nil {
		rej = st.check.CheckEnvelope(u, d.Size)
	}
	if rej == nil {
		switch id := u.GetClientId(); {
		case !st.plan.eval[id]:
			rej = rules.Reject(rules.NotSampled, "client %q is not sampled to evaluate round %d", id, st.rec.Round)
		case st.metrics.evaluated[id]:
			rej = rules.Reject(rules.Duplicate, "client %q already evaluated round %d", id, st.rec.Round)
		case len(u.GetParams()) != 0:
			rej = rules.Reject(rules.WrongShape, "an evaluate-only update carries %d tensors", len(u.GetParams()))
		}
	}
	var n int64
	if rej == nil {
		var ok bool
		if n, ok = c.evalExamples(u.GetClientId(), float64(u.GetNumExamples())); !ok {
			rej = rules.Reject(rules.BadNumExamples, "evaluated on %d examples, want 1 to the client's shard", u.GetNumExamples())
		}
	}
	if rej == nil {
		if err := d.Accept(); err != nil {
			rej = rules.Reject(rules.NotStored, "%v", err)
		}
	}
	if rej != nil {
		c.reject(st, d, rej)
		return
	}
	c.noteEval(st, u.GetClientId(), n, u.GetMetrics())
	c.obs.UpdateAccepted(u.GetClientId(), d.Size)
	d.Reply(nil)
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
	return len(st.metrics.evaluated) < want
}

// summarize puts the clients' own figures into the round record.
func (c *Coordinator) summarize(st *roundState) {
	rec := &st.rec
	rec.Sampled = st.plan.sampledIDs()
	rec.FitMetrics = strategy.AggregateMetrics(c.strat, st.metrics.fit)
	if len(st.metrics.eval) == 0 {
		return
	}
	f := &Federated{ModelRound: rec.Round, Clients: len(st.metrics.eval), Metrics: strategy.AggregateMetrics(c.strat, st.metrics.eval)}
	for _, e := range st.metrics.eval {
		f.Examples += e.Examples
	}
	f.Loss, f.Accuracy = f.Metrics[rules.MetricEvalLoss], f.Metrics[rules.MetricEvalAccuracy]
	rec.Federated = f
}
