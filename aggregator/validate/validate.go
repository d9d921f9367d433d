// Package validate is the aggregator's one validation boundary: it turns a
// decoded update into trusted local weights, or into a rejection with a
// stable reason (package rules), counted per reason in metrics and in the
// job's result so an operator can tell a buggy client from a hostile one.
// The mean strategies fold what it passes without checking it again;
// DP-FedAvg and FedBuff, which fold something other than the update as
// received (a clipped delta, a staleness-scaled delta), check the values
// and weights they are given once more, so that each accepts exactly what
// the others accept.
//
// The ingest path copies no update whole: float32 tensors are read in place
// from the decoded message (tensor.ViewOf), the others, and a delta's sum
// with the global model, a block at a time (Values), and every value check
// (finiteness, norm, range) is one pass over them.
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
	// EvalSample is the round's evaluation sample: the clients whose
	// evaluation counts (see CheckEvaluation).
	EvalSample map[string]bool

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
// id in seen (one bit for a numbered client, see idSet) and the update's
// norm. Per-client state that is only needed in async mode (last, ids) or
// between Check and Admit (checked) is not kept for every client.
type Round struct {
	e    Expect
	seen idSet
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
	// held holds the norms of updates accepted but not yet admitted nor
	// refused (Hold): a round without a norm bound from the round before
	// decides them against its own median at its close.
	held map[string]float64
	// dropped are the held clients refused: seen, but not admitted.
	dropped map[string]bool
	// scratch holds one block of decoded values while an update is checked.
	scratch []float32
	// evaluated is the clients whose evaluation was admitted.
	evaluated map[string]bool
}

// NewRound returns the validator of the round e describes.
func NewRound(e Expect) *Round {
	r := &Round{e: e, checked: map[string]float64{}, held: map[string]float64{}, dropped: map[string]bool{}}
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
	v, rej := r.CheckValues(u, size)
	if rej != nil {
		return nil, rej
	}
	return v.Params(), nil
}

// CheckValues is Check, returning the values as Values: read in place or a
// block at a time, never copied whole. The averaging strategies fold them
// as they are (strategy.Update.Checked).
func (r *Round) CheckValues(u *fdxv1.Update, size int) (*Values, *rules.Rejection) {
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
func (r *Round) checkRest(u *fdxv1.Update, id string) (*Values, *rules.Rejection) {
	if rej := r.admissible(u, id); rej != nil {
		return nil, rej
	}
	if r.scratch == nil {
		r.scratch = make([]float32, scanBlock)
	}
	vals, norm, rej := weights(u, r.e, r.scratch)
	if rej == nil {
		r.checked[id] = norm
	}
	return vals, rej
}

// admissible checks what comes between the envelope and the tensors: a
// duplicate and the example count (shared by Check and CheckStreamed).
func (r *Round) admissible(u *fdxv1.Update, id string) *rules.Rejection {
	e := r.e
	// An async client's repeats were refused by the envelope (checkAsync).
	if e.Async == nil && r.seen.has(id) {
		return rules.Reject(rules.Duplicate, "client %q already contributed to round %d", id, e.Round)
	}
	maxExamples := int64(rules.MaxWeight)
	if e.MaxExamples > 0 {
		maxExamples = min(maxExamples, e.MaxExamples)
	}
	if n := u.GetNumExamples(); n < 1 || n > maxExamples {
		return rules.Reject(rules.BadNumExamples, "num_examples %d, want 1 to %d", n, maxExamples)
	}
	if e.ExamplesOf != nil {
		held, err := e.ExamplesOf(id)
		if err != nil {
			return rules.Reject(rules.BadNumExamples, "client %q has no shard: %v", id, err)
		}
		if n := u.GetNumExamples(); n > held {
			return rules.Reject(rules.BadNumExamples, "num_examples %d, but client %q's shard holds %d", n, id, held)
		}
	}
	return nil
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
	r.seen.add(id)
	if r.last != nil {
		r.last[id] = u.GetBaseRound()
		// A client may be admitted twice in an async version; in a
		// synchronous round, seen's keys are the admitted ids.
		r.ids = append(r.ids, id)
	}
	r.admitted = append(r.admitted, r.checked[id])
	delete(r.checked, id)
}

// CheckedNorm is ||local - global|| of u, which Check passed and which is
// neither admitted nor held yet.
func (r *Round) CheckedNorm(u *fdxv1.Update) float64 { return r.checked[u.GetClientId()] }

// Hold records that u, which Check passed and which was accepted, waits
// for a verdict (Release or Drop): its client counts as seen, and the
// update counts towards the round's total (Count, Norms).
func (r *Round) Hold(u *fdxv1.Update) {
	id := u.GetClientId()
	r.seen.add(id)
	r.held[id] = r.checked[id]
	delete(r.checked, id)
}

// HoldOutlier decides, in a round that bounds norms by its own median
// (no median from the round before), whether u, which Check passed and
// which was accepted, folds at once: when the round has three or more
// norms with u's and u's is within factor times their median. Otherwise
// it holds u (Hold) for a verdict at the round's close, against the
// median of all, and returns true. The single aggregator and each
// scale-out worker decide alike.
func (r *Round) HoldOutlier(u *fdxv1.Update, factor float64) bool {
	norm := r.CheckedNorm(u)
	ns := append(r.Norms(), norm)
	if len(ns) >= 3 && norm <= factor*Median(ns) {
		return false
	}
	r.Hold(u)
	return true
}

// OutlierBound is the bound held updates are decided against: factor
// times the median of every norm of the round, the held ones included.
func (r *Round) OutlierBound(factor float64) float64 { return factor * Median(r.Norms()) }

// RefuseOutlier decides the held update of client id against bound (from
// OutlierBound with the same factor): over it, the update is dropped and
// the refusal its client is told is returned; within it, nil is returned
// and the update stays held for the caller to fold and Release.
func (r *Round) RefuseOutlier(id string, factor, bound float64) *rules.Rejection {
	norm := r.held[id]
	if norm <= bound {
		return nil
	}
	r.Drop(id)
	return rules.Reject(rules.NormBound, "update norm %.4g over %g times the round's median, %.4g", norm, factor, bound)
}

// Release admits a held update.
func (r *Round) Release(id string) {
	r.admitted = append(r.admitted, r.held[id])
	delete(r.held, id)
}

// Drop refuses a held update; its client stays seen, so a copy sent again
// this round is a duplicate.
func (r *Round) Drop(id string) {
	delete(r.held, id)
	r.dropped[id] = true
}

// Norms returns the norms of the admitted and the held updates.
func (r *Round) Norms() []float64 {
	out := slices.Clone(r.admitted)
	for _, id := range slices.Sorted(maps.Keys(r.held)) {
		out = append(out, r.held[id])
	}
	return out
}

// Median is the median of xs (0 when empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	ns := slices.Clone(xs)
	slices.Sort(ns)
	if m := len(ns) / 2; len(ns)%2 == 1 {
		return ns[m]
	} else {
		return (ns[m-1] + ns[m]) / 2
	}
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
func (r *Round) MedianNorm() float64 { return Median(r.admitted) }

// AdmittedNorms returns ||local - global|| of each admitted update, in
// admission order: a scale-out worker ships them to the leader, which takes
// the median over all workers.
func (r *Round) AdmittedNorms() []float64 { return slices.Clone(r.admitted) }

// Round is the round this validator checks updates for.
func (r *Round) Round() int64 { return r.e.Round }

// Count is the number of admitted and held updates.
func (r *Round) Count() int { return len(r.admitted) + len(r.held) }

// Admitted returns the client ids of the admitted updates, sorted; in an
// asynchronous version a client whose two updates (on different base
// versions) were both admitted appears twice.
func (r *Round) Admitted() []string {
	if r.last == nil {
		ids := r.seen.sorted()
		if len(r.dropped) > 0 || len(r.held) > 0 {
			ids = slices.DeleteFunc(ids, func(id string) bool {
				_, held := r.held[id]
				return held || r.dropped[id]
			})
		}
		return ids
	}
	ids := slices.Clone(r.ids)
	slices.Sort(ids)
	return ids
}

// Values are the local weights of an update that Check passed, as the
// strategies fold them: global + delta for a synchronous delta, the values
// sent otherwise. They are never copied whole:
//
//   - A float32 tensor (aligned, on a little-endian machine) is read in
//     place, from the message's bytes (tensor.ViewOf): the usual full
//     weights cost no copy at all.
//   - Other tensors (float16, int8, unaligned float32) and a delta's sum
//     with the global model are decoded a block at a time (Block), into
//     the reader's scratch memory.
//
// A *Values exists only once the checks passed, so a strategy given one
// trusts it: it is finite, of the round's shapes, and every
// |NumExamples × value| is below 2^rules.MaxTermLog2. Values read the
// message and the round's global model: neither may change while they are
// used, and nothing may write into a slice they return.
type Values struct {
	ts    []*fdxv1.Tensor
	specs []tensor.Spec
	// views[i] is tensor i read in place, or nil: decode it.
	views [][]float32
	// global, for a synchronous delta, is the model the values add to.
	global [][]float32
	maxAbs float32
}

// Tensors returns the number of tensors.
func (v *Values) Tensors() int { return len(v.ts) }

// Len returns the number of values of tensor i.
func (v *Values) Len(i int) int { return v.specs[i].Size() }

// MaxAbs returns the largest |value|, which the checks measured.
func (v *Values) MaxAbs() float32 { return v.maxAbs }

// Block returns values [off, off+len(scratch)) of tensor i: a view of the
// message (which the caller must not write) or scratch, filled. It returns
// nil for a range outside the tensor.
func (v *Values) Block(i, off int, scratch []float32) []float32 {
	if i < 0 || i >= len(v.ts) || off < 0 || off+len(scratch) > v.Len(i) {
		return nil
	}
	x := v.sent(i, off, scratch)
	if v.global == nil || x == nil {
		return x
	}
	// x may be a view: the sum goes to scratch, element by element, which
	// is also right when x is scratch itself.
	g, out := v.global[i][off:off+len(x)], scratch[:len(x)]
	for j := range x {
		out[j] = x[j] + g[j]
	}
	return out
}

// sent returns values [off, off+len(scratch)) of tensor i as the client
// sent them (the delta, for a delta).
func (v *Values) sent(i, off int, scratch []float32) []float32 {
	if w := v.views[i]; w != nil {
		return w[off : off+len(scratch)]
	}
	if err := tensor.DecodeAt(scratch, v.ts[i], off); err != nil {
		return nil // unreachable: weights checked the tensor with tensor.Len
	}
	return scratch
}

// Params returns the values per tensor: the views, and a decoded copy of
// the tensors that are not read in place. The strategies that keep
// updates (the robust ones) or transform them (DP, FedBuff) take these.
func (v *Values) Params() [][]float32 {
	out := make([][]float32, len(v.ts))
	for i := range v.ts {
		if v.views[i] != nil && v.global == nil {
			out[i] = v.views[i]
			continue
		}
		x := make([]float32, v.Len(i))
		for off := 0; off < len(x); off += scanBlock {
			v.Block(i, off, x[off:min(off+scanBlock, len(x))])
		}
		out[i] = x
	}
	return out
}

// scanBlock is how many values of a decoded tensor the checks take at a
// time: the accumulator's block length (strategy's blockLen), 1 KiB of
// float32s, small enough to stay in the L1 cache between decode and use.
const scanBlock = 256

// weights checks u's tensors and values and returns them with the norm of
// the update's delta from the global model. scratch holds scanBlock values.
func weights(u *fdxv1.Update, e Expect, scratch []float32) (*Values, float64, *rules.Rejection) {
	ts := u.GetParams()
	if len(ts) != len(e.Specs) {
		return nil, 0, rules.Reject(rules.WrongShape, "got %d tensors, want %d", len(ts), len(e.Specs))
	}
	// An asynchronous job folds the delta itself (checkAsync made sure it
	// is one): its norm is that of the step it asks for. Otherwise the
	// local weights are folded, and the step is their distance from Global.
	async := e.Async != nil
	v := &Values{ts: ts, specs: e.Specs, views: make([][]float32, len(ts))}
	if u.GetIsDelta() && !async {
		v.global = e.Global
	}
	for i, t := range ts {
		if err := tensor.CheckSpec(i, t, e.Specs[i]); err != nil {
			return nil, 0, rules.Reject(rules.WrongShape, "%v", err)
		}
		if _, err := tensor.Len(t); err != nil {
			return nil, 0, rules.Reject(rules.WrongShape, "%v", err)
		}
		v.views[i] = tensor.ViewOf(t)
	}
	// One pass over every value, a block at a time where the values are
	// decoded: the largest |value| sent (as float32 bits, which for finite
	// values order like the values, and put NaN and infinities above them),
	// the largest |value| folded, and Σ (folded − global)², or Σ delta² for
	// an asynchronous delta (in the fixed order of sumSquares).
	var sentMax, mx uint32
	var ss sumSquares
	overflow := -1 // the first tensor where global + delta is not finite
	for i := range ts {
		var g []float32
		if !async {
			g = e.Global[i]
		}
		n := v.Len(i)
		if w := v.views[i]; w != nil && v.global == nil && !async {
			mx = scan(w, g, mx, &ss) // the usual full weights: one pass, in place
			sentMax = max(sentMax, mx)
			continue
		}
		for off := 0; off < n; off += scanBlock {
			blk := scratch[:min(scanBlock, n-off)]
			x := v.sent(i, off, blk)
			bm := maxAbs(x)
			sentMax = max(sentMax, bm)
			switch {
			case async:
				if overflow < 0 && bm < 0x7f800000 && sumOverflows(e.Global[i][off:off+len(x)], x) {
					overflow = i
				}
				mx = scan(x, nil, mx, &ss)
			case v.global != nil:
				y := v.Block(i, off, blk)
				m := scan(y, g[off:off+len(y)], 0, &ss)
				if m >= 0x7f800000 && bm < 0x7f800000 && overflow < 0 {
					overflow = i
				}
				mx = max(mx, m)
			default:
				mx = scan(x, g[off:off+len(x)], mx, &ss)
			}
		}
	}
	switch {
	case sentMax >= 0x7f800000:
		return nil, 0, rules.Reject(rules.NonFinite, "%v", v.firstNonFinite(scratch))
	case overflow >= 0:
		// The version the delta lands on is the current one (Global): a
		// delta that would overflow it is refused here rather than stop
		// the job when the buffer steps the model.
		return nil, 0, rules.Reject(rules.NonFinite, "global plus delta overflows in %q", e.Specs[overflow].Name)
	}
	v.maxAbs = math.Float32frombits(mx)
	norm, rej := bounds(e, u.GetNumExamples(), &ss, float64(v.maxAbs))
	if rej != nil {
		return nil, 0, rej
	}
	return v, norm, nil
}

// bounds applies the rules on an update's size, for the whole and the
// streamed path alike: its norm (from ss, Σ (folded − global)²) within
// MaxNorm, and every num_examples × value term within the strategies'
// exact range (maxAbs is the largest |value| folded). It returns the norm.
func bounds(e Expect, examples int64, ss *sumSquares, maxAbs float64) (float64, *rules.Rejection) {
	norm := math.Sqrt(ss.total())
	if e.MaxNorm > 0 && norm > e.MaxNorm {
		return 0, rules.Reject(rules.NormBound, "update norm %.4g over the bound %.4g", norm, e.MaxNorm)
	}
	// The strategies sum num_examples × value exactly in a fixed range and
	// trust every term to fit. The float64 product may round, but never
	// below 2^MaxTermLog2 when the exact one is not: this errs only towards
	// rejecting.
	if t := float64(examples) * maxAbs; t >= math.Ldexp(1, rules.MaxTermLog2) {
		return 0, rules.Reject(rules.OutOfRange, "num_examples %d times |value| %.4g is not below 2^%d", examples, maxAbs, rules.MaxTermLog2)
	}
	return norm, nil
}

// sumSquares is Σ d² over an update's coordinates, in four float64 sums:
// coordinate j of each tensor goes to sum j mod 4. One running sum would
// make every addition wait for the previous one, which bounded the whole
// check at about one value per four cycles; four independent sums take
// about one per cycle. The order is fixed by the coordinates alone (blocks
// start at multiples of 4), so the norm is deterministic: the same update
// gives the same bits, read in place or block by block, on every machine:
// float64(d*d) forbids fusing the product into an FMA.
type sumSquares [4]float64

func (s *sumSquares) total() float64 { return (s[0] + s[1]) + (s[2] + s[3]) }

// scan folds xs, coordinates [off, off+len(xs)) of a tensor with off a
// multiple of 4, into a running maximum of |x| as float32 bits (returned)
// and into ss: Σ (x − g)², or Σ x² for g nil. Once a value is NaN or
// infinite the sums are meaningless, and the maximum says so.
func scan(xs, g []float32, mx uint32, ss *sumSquares) uint32 {
	s0, s1, s2, s3 := ss[0], ss[1], ss[2], ss[3]
	n := len(xs) &^ 3
	if g == nil {
		for j := 0; j < n; j += 4 {
			x := xs[j : j+4 : j+4]
			mx = max(mx, math.Float32bits(x[0])&0x7fffffff, math.Float32bits(x[1])&0x7fffffff,
				math.Float32bits(x[2])&0x7fffffff, math.Float32bits(x[3])&0x7fffffff)
			d0, d1, d2, d3 := float64(x[0]), float64(x[1]), float64(x[2]), float64(x[3])
			s0, s1, s2, s3 = s0+float64(d0*d0), s1+float64(d1*d1), s2+float64(d2*d2), s3+float64(d3*d3)
		}
	} else {
		g = g[:len(xs)]
		for j := 0; j < n; j += 4 {
			x, y := xs[j:j+4:j+4], g[j:j+4:j+4]
			mx = max(mx, math.Float32bits(x[0])&0x7fffffff, math.Float32bits(x[1])&0x7fffffff,
				math.Float32bits(x[2])&0x7fffffff, math.Float32bits(x[3])&0x7fffffff)
			d0, d1 := float64(x[0])-float64(y[0]), float64(x[1])-float64(y[1])
			d2, d3 := float64(x[2])-float64(y[2]), float64(x[3])-float64(y[3])
			s0, s1, s2, s3 = s0+float64(d0*d0), s1+float64(d1*d1), s2+float64(d2*d2), s3+float64(d3*d3)
		}
	}
	*ss = sumSquares{s0, s1, s2, s3}
	for j := n; j < len(xs); j++ {
		mx = max(mx, math.Float32bits(xs[j])&0x7fffffff)
		d := float64(xs[j])
		if g != nil {
			d -= float64(g[j])
		}
		ss[j%4] += float64(d * d)
	}
	return mx
}

// maxAbs returns the largest |x| over xs as float32 bits.
func maxAbs(xs []float32) uint32 {
	var mx uint32
	for _, x := range xs {
		mx = max(mx, math.Float32bits(x)&0x7fffffff)
	}
	return mx
}

// sumOverflows reports whether some g + x, rounded to float32, is infinite.
func sumOverflows(g, x []float32) bool {
	for j := range x {
		if f := float32(float64(g[j]) + float64(x[j])); math.IsInf(float64(f), 0) {
			return true
		}
	}
	return false
}

// firstNonFinite describes the first NaN or infinity sent, as
// tensor.Decode would.
func (v *Values) firstNonFinite(scratch []float32) error {
	for i := range v.ts {
		n := v.Len(i)
		for off := 0; off < n; off += scanBlock {
			for j, x := range v.sent(i, off, scratch[:min(scanBlock, n-off)]) {
				if math.Float32bits(x)&0x7f800000 == 0x7f800000 {
					return fmt.Errorf("tensor %q: non-finite value %v at %d", v.specs[i].Name, x, off+j)
				}
			}
		}
	}
	return nil
}

// Update checks one update as the only one of a round that e describes.
func Update(u *fdxv1.Update, size int, e Expect) ([][]float32, *rules.Rejection) {
	return NewRound(e).Check(u, size)
}
