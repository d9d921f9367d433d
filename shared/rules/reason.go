package rules

import (
	"fmt"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// Reason labels why an update was rejected. The label is stable: logs, the
// result JSON and the metric label "reason" show it, and on the wire it
// travels as the fdx.v1.RejectReason enum (see Proto).
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
	// aggregator's exact accumulator (MaxTermLog2).
	OutOfRange Reason = "out_of_range"
	// NotStored: the aggregator could not make the update durable, so it
	// did not count it; the client may send it again.
	NotStored Reason = "not_stored"
	// Unauthenticated: the update's credentials do not verify.
	Unauthenticated Reason = "unauthenticated"
	// NotSampled: the client is not in the round's sample.
	NotSampled Reason = "not_sampled"
	// Incomplete: a chunked transfer lacks chunks (its sender died
	// mid-transfer, or sent a newer one first).
	Incomplete Reason = "incomplete"
	// Checksum: a chunk or the reassembled whole does not match its
	// manifest.
	Checksum Reason = "checksum"
)

var wire = map[Reason]fdxv1.RejectReason{
	Undecodable:     fdxv1.RejectReason_REJECT_REASON_UNDECODABLE,
	WrongJob:        fdxv1.RejectReason_REJECT_REASON_WRONG_JOB,
	BadClientID:     fdxv1.RejectReason_REJECT_REASON_BAD_CLIENT_ID,
	UnknownClient:   fdxv1.RejectReason_REJECT_REASON_UNKNOWN_CLIENT,
	StaleRound:      fdxv1.RejectReason_REJECT_REASON_STALE_ROUND,
	FutureRound:     fdxv1.RejectReason_REJECT_REASON_FUTURE_ROUND,
	Duplicate:       fdxv1.RejectReason_REJECT_REASON_DUPLICATE,
	BadNumExamples:  fdxv1.RejectReason_REJECT_REASON_BAD_NUM_EXAMPLES,
	WrongShape:      fdxv1.RejectReason_REJECT_REASON_WRONG_SHAPE,
	NonFinite:       fdxv1.RejectReason_REJECT_REASON_NON_FINITE,
	NormBound:       fdxv1.RejectReason_REJECT_REASON_NORM_BOUND,
	Oversize:        fdxv1.RejectReason_REJECT_REASON_OVERSIZE,
	OutOfRange:      fdxv1.RejectReason_REJECT_REASON_OUT_OF_RANGE,
	NotStored:       fdxv1.RejectReason_REJECT_REASON_NOT_STORED,
	Unauthenticated: fdxv1.RejectReason_REJECT_REASON_UNAUTHENTICATED,
	NotSampled:      fdxv1.RejectReason_REJECT_REASON_NOT_SAMPLED,
	Incomplete:      fdxv1.RejectReason_REJECT_REASON_INCOMPLETE,
	Checksum:        fdxv1.RejectReason_REJECT_REASON_CHECKSUM,
}

// Reasons lists every reason in a fixed order (the wire enum's), for metrics
// initialisation and for printing counts in a stable order.
func Reasons() []Reason {
	out := make([]Reason, 0, len(wire))
	for p := fdxv1.RejectReason(1); ; p++ {
		r := ReasonOf(p)
		if r == "" {
			return out
		}
		out = append(out, r)
	}
}

// Proto returns the wire enum of r, UNSPECIFIED for an unknown label.
func (r Reason) Proto() fdxv1.RejectReason { return wire[r] }

// ReasonOf returns the label of a wire enum, "" for UNSPECIFIED or a value
// this build does not know.
func ReasonOf(p fdxv1.RejectReason) Reason {
	for r, w := range wire {
		if w == p {
			return r
		}
	}
	return ""
}

// Rejection is an update refused for a reason.
type Rejection struct {
	Reason Reason
	Detail string
}

// Reject returns a Rejection with a formatted detail.
func Reject(r Reason, format string, args ...any) *Rejection {
	return &Rejection{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

func (e *Rejection) Error() string { return string(e.Reason) + ": " + e.Detail }
