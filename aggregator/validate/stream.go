package validate

// Validating a streamed update. A chunked update's values reach the
// aggregator chunk by chunk (package kafkachan), and for the mean
// strategies it folds them the same way, never holding the whole update.
// Validation then has two parts: a Scan sees every value as the chunks
// arrive (pass 1) and keeps only what the rules need (shapes, finiteness,
// the norm of the step from the global model, the largest |value|); once
// the transfer is complete and authenticated, CheckStreamed applies the
// same rules as Check, with the same reasons, from the Scan and the
// update's other fields. Only then are the values read again and folded
// (pass 2): nothing unvalidated is ever folded.
//
// is_delta follows the tensors on the wire, so the Scan keeps the figures
// of both readings (local weights, or a delta added to the global model in
// float32 as weights() does) and CheckStreamed picks the one the update
// declares. The sums run in the same order as weights()'s, so the norm is
// the same float64.

import (
	"fmt"
	"math"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Scan gathers, from an update's values as they stream in, what
// CheckStreamed needs. It implements updatestream.Sink. It belongs to the
// round that made it (NewScan), whose global model it measures against.
type Scan struct {
	r *Round
	// tensors is the number of tensors announced; seen counts each
	// tensor's values.
	tensors int
	seen    []int
	// shape is the first shape, dtype or length problem; nonFinite the
	// first NaN or infinity.
	shape, nonFinite string
	// Figures for the local-weights reading and for the delta reading.
	// The sums of squares run in weights()'s four lanes (sumSquares,
	// coordinate j of a tensor into lane j mod 4), so that the norm comes
	// out bit-identical to the whole path's.
	ssLocal, ssDelta   sumSquares
	maxLocal, maxDelta float64
	overflow           string // the delta reading overflows float32
}

// NewScan returns a Scan for one update of this round.
func (r *Round) NewScan() *Scan {
	return &Scan{r: r, seen: make([]int, len(r.e.Specs))}
}

// Tensor implements updatestream.Sink: it checks tensor i's header against
// the round's specs, as tensor.Decode does.
func (s *Scan) Tensor(i int, name string, shape []int64, dtype fdxv1.DType, dataBytes int) error {
	s.tensors = i + 1
	if s.shape != "" {
		return nil
	}
	specs := s.r.e.Specs
	if i >= len(specs) {
		s.shape = fmt.Sprintf("got more than %d tensors", len(specs))
		return nil
	}
	sp := specs[i]
	n := sp.Size()
	// The header's checks are the whole path's (tensor.CheckSpec); only
	// the length is checked from the announced byte count.
	if err := tensor.CheckSpec(i, &fdxv1.Tensor{Name: name, Shape: shape}, sp); err != nil {
		s.shape = err.Error()
		return nil
	}
	switch {
	case dtype == fdxv1.DType_DTYPE_FLOAT32 && dataBytes != 4*n,
		dtype == fdxv1.DType_DTYPE_FLOAT16 && dataBytes != 2*n,
		dtype == fdxv1.DType_DTYPE_INT8 && dataBytes != n:
		s.shape = fmt.Sprintf("tensor %q: %d data bytes for shape %v", sp.Name, dataBytes, shape)
	case dtype != fdxv1.DType_DTYPE_FLOAT32 && dtype != fdxv1.DType_DTYPE_FLOAT16 && dtype != fdxv1.DType_DTYPE_INT8:
		s.shape = fmt.Sprintf("tensor %q: unsupported dtype %v", sp.Name, dtype)
	}
	return nil
}

// Values implements updatestream.Sink.
func (s *Scan) Values(i, off int, vals []float32) error {
	if s.shape != "" || i >= len(s.seen) {
		return nil
	}
	if off != s.seen[i] {
		s.shape = fmt.Sprintf("tensor %d: values at %d, expected %d", i, off, s.seen[i])
		return nil
	}
	s.seen[i] += len(vals)
	if s.nonFinite == "" {
		s.measure(i, off, vals)
	}
	return nil
}

// measure adds vals, tensor i's from off, to the figures of both readings.
func (s *Scan) measure(i, off int, vals []float32) {
	g := s.r.e.Global[i][off : off+len(vals)]
	ssL, mxL, ssD, mxD := s.ssLocal, s.maxLocal, s.ssDelta, s.maxDelta
	for j, x := range vals {
		if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
			s.nonFinite = fmt.Sprintf("tensor %q: non-finite value %v at %d", s.r.e.Specs[i].Name, x, off+j)
			return
		}
		d := float64(x)
		d -= float64(g[j])
		lane := (off + j) % 4
		ssL[lane] += float64(d * d)
		mxL = max(mxL, math.Abs(float64(x)))
		if s.overflow == "" {
			v := x
			v += g[j]
			if f := float64(v); math.IsInf(f, 0) || math.IsNaN(f) {
				s.overflow = fmt.Sprintf("global plus delta overflows in %q", s.r.e.Specs[i].Name)
			}
			dd := float64(v)
			dd -= float64(g[j])
			ssD[lane] += float64(dd * dd)
			mxD = max(mxD, math.Abs(float64(v)))
		}
	}
	s.ssLocal, s.maxLocal, s.ssDelta, s.maxDelta = ssL, mxL, ssD, mxD
}

// Round returns the round the scan measures against.
func (s *Scan) Round() *Round { return s.r }

// CheckStreamed is Check for an update whose tensors s scanned: u carries
// the update's other fields (its Params are ignored). ok is false when s
// cannot decide (it belongs to another round, or the round is
// asynchronous): the caller must Check the whole update instead. Like
// Check, it does not mark the client as seen.
func (r *Round) CheckStreamed(u *fdxv1.Update, size int, s *Scan) (rej *rules.Rejection, ok bool) {
	if s == nil || s.r != r || r.e.Async != nil {
		return nil, false
	}
	if rej := r.CheckEnvelope(u, size); rej != nil {
		return rej, true
	}
	id := u.GetClientId()
	if r.e.Sample != nil && !r.e.Sample[id] {
		return rules.Reject(rules.NotSampled, "client %q is not in round %d's sample", id, r.e.Round), true
	}
	if rej := r.admissible(u, id); rej != nil {
		return rej, true
	}
	norm, rej := s.verdict(u)
	if rej == nil {
		r.checked[id] = norm
	}
	return rej, true
}

// verdict applies weights()'s rules, in its order, to the scanned figures.
func (s *Scan) verdict(u *fdxv1.Update) (float64, *rules.Rejection) {
	e := s.r.e
	shape := s.shape
	if shape == "" && s.tensors != len(e.Specs) {
		shape = fmt.Sprintf("got %d tensors, want %d", s.tensors, len(e.Specs))
	}
	for i := range s.seen {
		if shape == "" && s.seen[i] != e.Specs[i].Size() {
			shape = fmt.Sprintf("tensor %q: %d values, want %d", e.Specs[i].Name, s.seen[i], e.Specs[i].Size())
		}
	}
	switch {
	case shape != "":
		return 0, rules.Reject(rules.WrongShape, "%s", shape)
	case s.nonFinite != "":
		return 0, rules.Reject(rules.NonFinite, "%s", s.nonFinite)
	}
	ss, maxAbs := s.ssLocal, s.maxLocal
	if u.GetIsDelta() {
		if s.overflow != "" {
			return 0, rules.Reject(rules.NonFinite, "%s", s.overflow)
		}
		ss, maxAbs = s.ssDelta, s.maxDelta
	}
	return bounds(e, u.GetNumExamples(), &ss, maxAbs)
}

// Global is the round's global model, which the round does not copy: the
// caller must not change it.
func (r *Round) Global() [][]float32 { return r.e.Global }
