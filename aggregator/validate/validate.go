// Package validate is the aggregator's one validation boundary: it turns a
// decoded update into trusted local weights, or into a rejection with a
// stable reason (package rules), counted per reason in metrics and in the
// job's result so an operator can tell a buggy client from a hostile one.
// The strategies trust what it passes and check nothing again.
package validate

import (
	"fmt"
	"maps"
	"math"
	"slices"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Expect is what a valid update for the open round looks like.
type Expect struct {
	Job   string
	Round int64
	Specs []tensor.Spec
	// Global is the round's model, needed for deltas and the norm bound.
	Global [][]float32
	// MaxNorm bounds ||local - global||_2; 0 disables the check.
	MaxNorm float64
	// MaxExamples bounds num_examples: a client claiming more would
	// dominate the weighted mean. The bound is never above
	// rules.MaxWeight, which 0 means.
	MaxExamples int64
	// MaxBytes bounds the encoded update; 0 disables the check.
	MaxBytes int
	// Allowed, when non-nil, is the set of known client ids.
	Allowed map[string]bool
	// ExamplesOf, when set, returns how many examples a client can have:
	// its shard's size, known from the job's partition spec. A claim above
	// it is refused, so that no client can outweigh what it holds.
	ExamplesOf func(clientID string) (int64, error)
	// Sample, when non-nil, is the round's training sample: other clients'
	// updates are refused as not_sampled.
	Sample map[string]bool

	// Async checks updates for an asynchronous (FedBuff) job, where Round
	// is the current model version; nil for a synchronous round.
	Async *Async
}

// Async is what an asynchronous job expects besides a synchronous round's
// checks.
type Async struct {
	// MaxStaleness bounds Round − base_round; 0 accepts any earlier round.
	MaxStaleness int64
	// LastBase is, per client, the base round of its newest update already
	// counted in an earlier version. A client's next update must be trained
	// on a newer round, so that an update sent twice counts once however
	// far apart the copies arrive. Check reads it, never writes it.
	LastBase map[string]int64
}

// Round checks the updates of one open round. It holds the round's one
// "seen" set, so that a duplicate is refused from its envelope, before its
// tensors are decoded. Not safe for concurrent use: the round loop owns it.
//
// Its memory grows with the round's updates, and a round may take 100,000
// of them or more, so it keeps per admitted client only what it must: the
// id in seen and the update's norm (about 40 bytes with the map's
// overhead). Per-client state that is only needed in async mode (last,
// ids) or between Check and Admit (checked) is not kept for every client.
type Round struct {
	e    Expect
	seen map[string]struct{}
	// last is the async base round admitted per client in this version;
	// nil in a synchronous round.
	last map[string]int64
	// ids are the admitted clients in async mode, where one may count
	// twice; nil in a synchronous round.
	ids []string
	// checked holds the norm of each update that passed Check and is not
	// yet admitted (usually one: the round loop admits an update right
	// after checking it); admitted holds the norms of the admitted ones,
	// from whose median the next round's norm bound derives.
	checked  map[string]float64
	admitted []float64
}

// NewRound returns the validator of the round e describes.
func NewRound(e Expect) *Round {
	r := &Round{e: e, seen: map[string]struct{}{}, checked: map[string]float64{}}
	if e.Async != nil {
		r.last = map[string]int64{}
	}
	return r
}

// Check validates u, of encoded size size, and returns the client's full
// local weights, which every strategy accepts as they are. The cheap
// envelope checks (size, job, client, round, sample, duplicate, example
// count) run before the tensors are decoded. Check does not mark the client
// as seen: call Admit once the update is accepted, so that an update the
// channel failed to store may be sent again.
func (r *Round) Check(u *fdxv1.Update, size int) ([][]float32, *rules.Rejection) {
	if rej := r.CheckEnvelope(u, size); rej != nil {
		return nil, rej
	}
	id := u.GetClientId()
	if r.e.Sample != nil && !r.e.Sample[id] {
		return nil, rules.Reject(rules.NotSampled, "client %q is not in round %d's sample", id, r.e.Round)
	}
	return r.checkRest(u, id)
}

// CheckEnvelope checks what every message of the round must satisfy,
// training update or evaluation: its size, job, client id and round.
func (r *Round) CheckEnvelope(u *fdxv1.Update, size int) *rules.Rejection {
	e := r.e
	if e.MaxBytes > 0 && size > e.MaxBytes {
		return rules.Reject(rules.Oversize, "%d bytes over the limit %d", size, e.MaxBytes)
	}
	if u.GetJob() != e.Job {
		return rules.Reject(rules.WrongJob, "job %q, this aggregator runs %q", u.GetJob(), e.Job)
	}
	id := u.GetClientId()
	if err := rules.ValidateClientID(id); err != nil {
		return rules.Reject(rules.BadClientID, "%v", err)
	}
	if e.Allowed != nil && !e.Allowed[id] {
		return rules.Reject(rules.UnknownClient, "client %q is not in the job's client list", id)
	}
	if e.Async != nil {
		return r.checkAsync(u)
	}
	switch br := u.GetBaseRound(); {
	case br < e.Round:
		return rules.Reject(rules.StaleRound, "trained on round %d, the open round is %d", br, e.Round)
	case br > e.Round:
		return rules.Reject(rules.FutureRound, "claims round %d, the open round is %d", br, e.Round)
	}
	return nil
}

// checkRest continues Check after the envelope and the sample.
func (r *Round) checkRest(u *fdxv1.Update, id string) ([][]float32, *rules.Rejection) {
	e := r.e
	// An async client's repeats were refused by the envelope (checkAsync).
	if _, dup := r.seen[id]; e.Async == nil && dup {
		return nil, rules.Reject(rules.Duplicate, "client %q already contributed to round %d", id, e.Round)
	}
	maxExamples := int64(rules.MaxWeight)
	if e.MaxExamples > 0 {
		maxExamples = min(maxExamples, e.MaxExamples)
	}
	if n := u.GetNumExamples(); n < 1 || n > maxExamples {
		return nil, rules.Reject(rules.BadNumExamples, "num_examples %d, want 1 to %d", n, maxExamples)
	}
	if e.ExamplesOf != nil {
		held, err := e.ExamplesOf(id)
		if err != nil {
			return nil, rules.Reject(rules.BadNumExamples, "client %q has no shard: %v", id, err)
		}
		if n := u.GetNumExamples(); n > held {
			return nil, rules.Reject(rules.BadNumExamples, "num_examples %d, but client %q's shard holds %d", n, id, held)
		}
	}
	vals, norm, rej := weights(u, e)
	if rej == nil {
		r.checked[id] = norm
	}
	return vals, rej
}

// checkAsync checks an asynchronous update's base round and that it is a
// delta: the aggregator keeps no older versions to subtract from, and a
// delta makes the update's meaning independent of the version it arrives
// at (see coordinator's async loop).
func (r *Round) checkAsync(u *fdxv1.Update) *rules.Rejection {
	e, id, br := r.e, u.GetClientId(), u.GetBaseRound()
	switch {
	case br > e.Round:
		return rules.Reject(rules.FutureRound, "claims round %d, the current version is %d", br, e.Round)
	case br < 1:
		return rules.Reject(rules.StaleRound, "base round %d, versions start at 1", br)
	case e.Async.MaxStaleness > 0 && e.Round-br > e.Async.MaxStaleness:
		return rules.Reject(rules.StaleRound, "trained on version %d, %d behind the current %d (max staleness %d)",
			br, e.Round-br, e.Round, e.Async.MaxStaleness)
	}
	last, ok := r.last[id]
	if !ok {
		last, ok = e.Async.LastBase[id]
	}
	if ok && br <= last {
		return rules.Reject(rules.Duplicate, "client %q already contributed an update trained on version %d", id, last)
	}
	if !u.GetIsDelta() {
		return rules.Reject(rules.WrongShape, "an asynchronous job takes deltas (is_delta) against the base version")
	}
	return nil
}

// Admit records that u, which Check passed, was accepted.
func (r *Round) Admit(u *fdxv1.Update) {
	id := u.GetClientId()
	r.seen[id] = struct{}{}
	if r.last != nil {
		r.last[id] = u.GetBaseRound()
		// A client may be admitted twice in an async version; in a
		// synchronous round, seen's keys are the admitted ids.
		r.ids = append(r.ids, id)
	}
	r.admitted = append(r.admitted, r.checked[id])
	delete(r.checked, id)
}

// LastBase returns e.Async.LastBase updated with this version's admitted
// updates: the duplicate guard the next version starts from.
func (r *Round) LastBase() map[string]int64 {
	out := map[string]int64{}
	if r.e.Async != nil {
		maps.Copy(out, r.e.Async.LastBase)
	}
	maps.Copy(out, r.last)
	return out
}

// MedianNorm is the median ||local - global|| of the admitted updates (0
// with none), what the next round's norm bound scales.
func (r *Round) MedianNorm() float64 {
	if len(r.admitted) == 0 {
		return 0
	}
	ns := slices.Clone(r.admitted)
	slices.Sort(ns)
	if m := len(ns) / 2; len(ns)%2 == 1 {
		return ns[m]
	} else {
		return (ns[m-1] + ns[m]) / 2
	}
}

// AdmittedNorms returns ||local - global|| of each admitted update, in
// admission order: a scale-out worker ships them to the leader, which takes
// the median over all workers.
func (r *Round) AdmittedNorms() []float64 { return slices.Clone(r.admitted) }

// Count is the number of admitted updates.
func (r *Round) Count() int { return len(r.admitted) }

// Admitted returns the client ids of the admitted updates, sorted; in an
// asynchronous version a client whose two updates (on different base
// versions) were both admitted appears twice.
func (r *Round) Admitted() []string {
	if r.last == nil {
		return slices.Sorted(maps.Keys(r.seen))
	}
	ids := slices.Clone(r.ids)
	slices.Sort(ids)
	return ids
}

// weights decodes u's tensors, checks their values and returns them with
// the norm of the update's delta from the global model.
func weights(u *fdxv1.Update, e Expect) ([][]float32, float64, *rules.Rejection) {
	vals, err := tensor.Decode(u.GetParams(), e.Specs)
	if err != nil {
		if isNonFinite(u.GetParams(), e.Specs) {
			return nil, 0, rules.Reject(rules.NonFinite, "%v", err)
		}
		return nil, 0, rules.Reject(rules.WrongShape, "%v", err)
	}
	// An asynchronous job folds the delta itself (checkAsync made sure it
	// is one): its norm is that of the step it asks for. Otherwise the
	// local weights are folded, and the step is their distance from Global.
	async := e.Async != nil
	if async {
		// The version the delta lands on is the current one (Global): a
		// delta that would overflow it is refused here rather than stop
		// the job when the buffer steps the model.
		for i := range vals {
			for j, x := range vals[i] {
				if f := float32(float64(e.Global[i][j]) + float64(x)); math.IsInf(float64(f), 0) {
					return nil, 0, rules.Reject(rules.NonFinite, "global plus delta overflows in %q", e.Specs[i].Name)
				}
			}
		}
	}
	if u.GetIsDelta() && !async {
		for i := range vals {
			for j := range vals[i] {
				vals[i][j] += e.Global[i][j]
				if f := float64(vals[i][j]); math.IsInf(f, 0) || math.IsNaN(f) {
					return nil, 0, rules.Reject(rules.NonFinite, "global plus delta overflows in %q", e.Specs[i].Name)
				}
			}
		}
	}
	var ss float64
	for i := range vals {
		for j, x := range vals[i] {
			d := float64(x)
			if !async {
				d -= float64(e.Global[i][j])
			}
			ss += d * d
		}
	}
	norm := math.Sqrt(ss)
	if e.MaxNorm > 0 && norm > e.MaxNorm {
		return nil, 0, rules.Reject(rules.NormBound, "update norm %.4g over the bound %.4g", norm, e.MaxNorm)
	}
	// The strategies sum num_examples × value exactly in a fixed range and
	// trust every term to fit. The float64 product may round, but never
	// below 2^MaxTermLog2 when the exact one is not: this errs only towards
	// rejecting.
	var maxAbs float64
	for _, v := range vals {
		for _, x := range v {
			maxAbs = max(maxAbs, math.Abs(float64(x)))
		}
	}
	if t := float64(u.GetNumExamples()) * maxAbs; t >= math.Ldexp(1, rules.MaxTermLog2) {
		return nil, 0, rules.Reject(rules.OutOfRange, "num_examples %d times |value| %.4g is not below 2^%d", u.GetNumExamples(), maxAbs, rules.MaxTermLog2)
	}
	return vals, norm, nil
}

// isNonFinite tells a shape problem from a value problem once Decode failed.
func isNonFinite(ts []*fdxv1.Tensor, specs []tensor.Spec) bool {
	if len(ts) != len(specs) {
		return false
	}
	for i, t := range ts {
		if t.GetName() != specs[i].Name || fmt.Sprint(t.GetShape()) != fmt.Sprint(specs[i].Shape) {
			return false
		}
		v, err := tensor.Float32s(nil, t)
		if err != nil || len(v) != specs[i].Size() {
			return false
		}
	}
	return true
}

// Update checks one update as the only one of a round that e describes.
func Update(u *fdxv1.Update, size int, e Expect) ([][]float32, *rules.Rejection) {
	return NewRound(e).Check(u, size)
}
