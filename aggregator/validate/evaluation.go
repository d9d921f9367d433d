package validate

import (
	"math"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Federated evaluation: a client sampled to evaluate reports its figures
// on held-out examples, either in an evaluate-only update (no tensors) or
// in the metrics of its training update. Both count once per client and
// round, weighted by a number of examples the client can hold, so that no
// client outweighs its shard in the round's federated figures.

// CheckEvaluation validates an evaluate-only update of encoded size size:
// the envelope (as CheckEnvelope), that its client is in the round's
// evaluation sample (Expect.EvalSample) and has not evaluated yet, that
// it carries no tensors, and that num_examples is a valid evaluation
// weight (EvalExamples). It returns that weight. Call AdmitEvaluation once
// the update is accepted.
func (r *Round) CheckEvaluation(u *fdxv1.Update, size int) (int64, *rules.Rejection) {
	if rej := r.CheckEnvelope(u, size); rej != nil {
		return 0, rej
	}
	id := u.GetClientId()
	switch {
	case !r.e.EvalSample[id]:
		return 0, rules.Reject(rules.NotSampled, "client %q is not sampled to evaluate round %d", id, r.e.Round)
	case r.evaluated[id]:
		return 0, rules.Reject(rules.Duplicate, "client %q already evaluated round %d", id, r.e.Round)
	case len(u.GetParams()) != 0:
		return 0, rules.Reject(rules.WrongShape, "an evaluate-only update carries %d tensors", len(u.GetParams()))
	}
	n, ok := r.EvalExamples(id, float64(u.GetNumExamples()))
	if !ok {
		return 0, rules.Reject(rules.BadNumExamples, "evaluated on %d examples, want 1 to the client's shard", u.GetNumExamples())
	}
	return n, nil
}

// EvalExamples checks a claimed count of evaluation examples (a float,
// as training updates report it among their metrics): a whole number from
// 1 to the client's shard (Expect.ExamplesOf) and to rules.MaxWeight.
func (r *Round) EvalExamples(id string, v float64) (int64, bool) {
	if !(v >= 1) || v != math.Trunc(v) || v > rules.MaxWeight {
		return 0, false
	}
	n := int64(v)
	if r.e.ExamplesOf != nil {
		held, err := r.e.ExamplesOf(id)
		if err != nil || n > held {
			return 0, false
		}
	}
	return n, true
}

// WantsEvaluation reports whether id is sampled to evaluate and has not
// evaluated yet: a training update's evaluation metrics then count.
func (r *Round) WantsEvaluation(id string) bool {
	return r.e.EvalSample[id] && !r.evaluated[id]
}

// AdmitEvaluation records that id's evaluation was accepted.
func (r *Round) AdmitEvaluation(id string) {
	if r.evaluated == nil {
		r.evaluated = map[string]bool{}
	}
	r.evaluated[id] = true
}

// Evaluations is the number of evaluations admitted.
func (r *Round) Evaluations() int { return len(r.evaluated) }
