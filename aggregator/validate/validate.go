// Package validate checks a client's update before it may touch the global
// model. Every rejection has a stable reason label, counted per reason in
// metrics and in the job's result, so an operator can tell a buggy client
// from a hostile one.
package validate

import (
	"fmt"
	"math"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Reason labels why an update was rejected.
type Reason string

// The rejection reasons.
const (
	Undecodable    Reason = "undecodable"
	WrongJob       Reason = "wrong_job"
	BadClientID    Reason = "bad_client_id"
	UnknownClient  Reason = "unknown_client"
	StaleRound     Reason = "stale_round"
	FutureRound    Reason = "future_round"
	Duplicate      Reason = "duplicate"
	BadNumExamples Reason = "bad_num_examples"
	WrongShape     Reason = "wrong_shape"
	NonFinite      Reason = "non_finite"
	NormBound      Reason = "norm_bound"
	Oversize       Reason = "oversize"
	// OutOfRange: a value times the example count is too large for the
	// aggregator's exact accumulator (strategy.MaxTermLog2).
	OutOfRange Reason = "out_of_range"
)

// Reasons lists every reason, for metrics initialisation.
func Reasons() []Reason {
	return []Reason{Undecodable, WrongJob, BadClientID, UnknownClient, StaleRound, FutureRound,
		Duplicate, BadNumExamples, WrongShape, NonFinite, NormBound, Oversize, OutOfRange}
}

// Error is a rejection.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Detail }

func reject(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

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
	// strategy.MaxWeight, which 0 means.
	MaxExamples int64
	// MaxBytes bounds the encoded update; 0 disables the check.
	MaxBytes int
	// Allowed, when non-nil, is the set of known client ids.
	Allowed map[string]bool
}

// MaxClientIDLen bounds client ids (they become Kafka keys and log fields).
const MaxClientIDLen = 128

// Update checks u (of encoded size size) and returns the client's full
// local weights. It does not check duplicates: that is round state. An
// accepted update is one every strategy's Round.Add accepts, bar a
// duplicate client id.
func Update(u *fdxv1.Update, size int, e Expect) ([][]float32, *Error) {
	if e.MaxBytes > 0 && size > e.MaxBytes {
		return nil, reject(Oversize, "%d bytes over the limit %d", size, e.MaxBytes)
	}
	if u.GetJob() != e.Job {
		return nil, reject(WrongJob, "job %q, this aggregator runs %q", u.GetJob(), e.Job)
	}
	if id := u.GetClientId(); id == "" || len(id) > MaxClientIDLen {
		return nil, reject(BadClientID, "client id of %d bytes, want 1 to %d", len(id), MaxClientIDLen)
	}
	if e.Allowed != nil && !e.Allowed[u.GetClientId()] {
		return nil, reject(UnknownClient, "client %q is not in the job's client list", u.GetClientId())
	}
	switch r := u.GetBaseRound(); {
	case r < e.Round:
		return nil, reject(StaleRound, "trained on round %d, the open round is %d", r, e.Round)
	case r > e.Round:
		return nil, reject(FutureRound, "claims round %d, the open round is %d", r, e.Round)
	}
	maxExamples := int64(strategy.MaxWeight)
	if e.MaxExamples > 0 {
		maxExamples = min(maxExamples, e.MaxExamples)
	}
	if n := u.GetNumExamples(); n < 1 || n > maxExamples {
		return nil, reject(BadNumExamples, "num_examples %d, want 1 to %d", n, maxExamples)
	}
	vals, err := tensor.Decode(u.GetParams(), e.Specs)
	if err != nil {
		if isNonFinite(u.GetParams(), e.Specs) {
			return nil, reject(NonFinite, "%v", err)
		}
		return nil, reject(WrongShape, "%v", err)
	}
	if u.GetIsDelta() {
		for i := range vals {
			for j := range vals[i] {
				vals[i][j] += e.Global[i][j]
				if f := float64(vals[i][j]); math.IsInf(f, 0) || math.IsNaN(f) {
					return nil, reject(NonFinite, "global plus delta overflows in %q", e.Specs[i].Name)
				}
			}
		}
	}
	if e.MaxNorm > 0 {
		var s float64
		for i := range vals {
			for j, x := range vals[i] {
				d := float64(x) - float64(e.Global[i][j])
				s += d * d
			}
		}
		if n := math.Sqrt(s); n > e.MaxNorm {
			return nil, reject(NormBound, "update norm %.4g over the bound %.4g", n, e.MaxNorm)
		}
	}
	// The strategies sum num_examples × value exactly in a fixed range and
	// refuse a term outside it. The float64 product may round, but never
	// below 2^MaxTermLog2 when the exact one is not: this errs only towards
	// rejecting.
	var maxAbs float64
	for _, v := range vals {
		for _, x := range v {
			maxAbs = max(maxAbs, math.Abs(float64(x)))
		}
	}
	if t := float64(u.GetNumExamples()) * maxAbs; t >= math.Ldexp(1, strategy.MaxTermLog2) {
		return nil, reject(OutOfRange, "num_examples %d times |value| %.4g is not below 2^%d", u.GetNumExamples(), maxAbs, strategy.MaxTermLog2)
	}
	return vals, nil
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
