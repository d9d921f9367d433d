package coordinator

import (
	"context"
	"fmt"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// A round with no median from the round before (the first, or a restart
// from a model without one) has no NormFactor bound, and a client with a
// valid token could pull the model anywhere with one update. Such a round
// bounds updates by its own median instead, known fully only at its close:
//
//   - an update whose norm is within NormFactor times the median of the
//     round's norms so far (at least three, its own included) is folded at
//     once, as in any round;
//   - any other (the first two always) is accepted and held: it counts
//     towards the round's close, and at the close it is folded if its norm
//     is within NormFactor times the median of all the round's norms, and
//     refused as norm_bound otherwise. Its sender hears the verdict then.
//
// Honest updates of one round differ in norm by a small factor (see
// DefaultNormFactor), so after the first few nearly all fold at once, and
// what is held is the first two updates and the outliers: the memory the
// round holds is theirs, not every update's. A streamed update is held as
// its transfer's place in the log and read again when it is folded. If
// refusals leave the round short of its target, it goes on collecting.

// heldUpdate is an accepted update awaiting the round's median.
type heldUpdate struct {
	d    channel.Delivery
	vals *validate.Values // nil for a streamed update
}

// selfBounded reports whether the round st bounds norms by its own median.
func (c *Coordinator) selfBounded() bool {
	return c.cfg.NormFactor > 0 && c.medianNorm == 0 && c.cfg.Async == nil
}

// hold decides whether an accepted update with values vals (nil: streamed)
// waits for the round's median; if so it is held, and hold returns true.
func (c *Coordinator) hold(st *roundState, d channel.Delivery, vals *validate.Values) bool {
	if !st.selfBound {
		return false
	}
	if !st.check.HoldOutlier(d.Update, c.cfg.NormFactor) {
		return false
	}
	st.held = append(st.held, heldUpdate{d: d, vals: vals})
	return true
}

// resolveHeld folds or refuses the held updates against the round's
// median, in the order they arrived.
func (c *Coordinator) resolveHeld(ctx context.Context, st *roundState) error {
	bound := st.check.OutlierBound(c.cfg.NormFactor)
	held := st.held
	st.held = nil
	for _, h := range held {
		u := h.d.Update
		id := u.GetClientId()
		if rej := st.check.RefuseOutlier(id, c.cfg.NormFactor, bound); rej != nil {
			c.reject(st, h.d, rej)
			continue
		}
		start := time.Now()
		var err error
		if h.vals != nil {
			err = st.fold(u, h.vals)
		} else if sr, ok := st.agg.(strategy.StreamRound); !ok {
			err = fmt.Errorf("the round's strategy does not stream")
		} else {
			err = c.foldStreamed(ctx, st, sr, h.d)
		}
		st.aggregate += time.Since(start)
		if err != nil {
			return fmt.Errorf("aggregate the held update of %q: %w", id, err)
		}
		st.check.Release(id)
		c.counted(st, h.d)
	}
	return nil
}
