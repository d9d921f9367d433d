package round

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Hooks are what an Intake's owner does with its verdicts. Fold, Admitted
// and Rejected are required.
type Hooks struct {
	// Fold adds a validated update's values to the aggregate. The values
	// may be read in place from u (validate.Values): nothing writes them.
	Fold func(u *fdxv1.Update, vals *validate.Values) error
	// FoldStream reads a streamed update's values again, chunk by chunk,
	// into the aggregate (channel.Streamer's pass 2). Nil: the owner's
	// channel delivers no streams.
	FoldStream func(ctx context.Context, d channel.Delivery) error
	// Admitted records a folded update, before its sender hears that it
	// was accepted.
	Admitted func(d channel.Delivery)
	// Rejected records a refused delivery, before its sender hears why.
	Rejected func(d channel.Delivery, rej *rules.Rejection)
	// Evaluated records an accepted evaluate-only update that evaluated
	// examples held-out examples. Nil: evaluate-only updates are checked
	// as training updates, which refuses them.
	Evaluated func(d channel.Delivery, examples int64)
}

// Intake takes the deliveries of one open round: it validates each, has
// the channel accept it (make it durable), folds it, admits it and
// answers its sender, in that order, so that a sender never hears
// "accepted" for an update that is not both stored and counted, nor
// "rejected" for one that is. It is used by one goroutine.
//
// A round with no median norm from the round before (Job.SelfBound)
// has no NormFactor bound, and a client with a valid token could pull the
// model anywhere with one update. Such a round bounds updates by its own
// median instead, known fully only at its close:
//
//   - an update whose norm is within NormFactor times the median of the
//     round's norms so far (at least three, its own included) is folded at
//     once, as in any round;
//   - any other (the first two always) is accepted and held: it counts
//     towards the round's close, and Decide folds it if its norm is within
//     NormFactor times the median of all the round's norms, and refuses it
//     as norm_bound otherwise. Its sender hears the verdict then.
//
// Honest updates of one round differ in norm by a small factor, so after
// the first few nearly all fold at once, and what is held is the first two
// updates and the outliers: the memory the round holds is theirs, not
// every update's. A streamed update is held as its transfer's place in the
// log and read again when it is folded.
type Intake struct {
	check *validate.Round
	hooks Hooks
	// factor is the NormFactor of a self-bounded round, else 0.
	factor   float64
	held     []heldUpdate
	foldTime time.Duration
	log      *slog.Logger
}

// heldUpdate is an accepted update awaiting the round's median.
type heldUpdate struct {
	d    channel.Delivery
	vals *validate.Values // nil for a streamed update
}

// NewIntake returns the intake of the round check validates. selfBound is
// the NormFactor by which a round without a previous median bounds norms
// by its own (0: the round does not). log, which may be nil, hears of
// updates the channel failed to store.
func NewIntake(check *validate.Round, selfBound float64, h Hooks, log *slog.Logger) *Intake {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Intake{check: check, hooks: h, factor: selfBound, log: log}
}

// Check returns the round's validator: what it admitted, its norms.
func (in *Intake) Check() *validate.Round { return in.check }

// FoldTime is the time spent folding updates into the aggregate so far.
func (in *Intake) FoldTime() time.Duration { return in.foldTime }

// Held reports the number of updates awaiting Decide.
func (in *Intake) Held() int { return len(in.held) }

// Take validates, accepts, folds and admits one delivery, or rejects it.
// Only an aggregate refusing a validated update is an error: that is a
// bug, and the round must stop rather than publish a model without it.
func (in *Intake) Take(ctx context.Context, d channel.Delivery) error {
	if d.Err == nil && d.Update.GetEvaluateOnly() && in.hooks.Evaluated != nil {
		in.takeEvaluation(d)
		return nil
	}
	if d.Stream != nil && d.Rejection == nil && d.Err == nil && in.hooks.FoldStream != nil {
		return in.takeStreamed(ctx, d)
	}
	vals, rej := in.validate(d)
	return in.settle(ctx, d, vals, rej)
}

// settle ends Take on either path once validation has spoken (rej nil:
// valid; vals nil: streamed): it accepts the update, then holds it for the
// round's median or folds and admits it, and answers its sender, or it
// rejects the update.
func (in *Intake) settle(ctx context.Context, d channel.Delivery, vals *validate.Values, rej *rules.Rejection) error {
	if rej == nil {
		rej = in.accept(d)
	}
	if rej != nil {
		in.reject(d, rej)
		return nil
	}
	if in.hold(d, vals) {
		return nil
	}
	if err := in.fold(ctx, d, vals); err != nil {
		return err
	}
	in.check.Admit(d.Update)
	in.admitted(d)
	return nil
}

// fold adds an accepted update to the aggregate: its checked values, or
// with vals nil its stream, read again chunk by chunk.
func (in *Intake) fold(ctx context.Context, d channel.Delivery, vals *validate.Values) error {
	start := time.Now()
	defer func() { in.foldTime += time.Since(start) }()
	u := d.Update
	if vals != nil {
		if err := in.hooks.Fold(u, vals); err != nil {
			return fmt.Errorf("aggregate the validated update of %q: %w", u.GetClientId(), err)
		}
		return nil
	}
	if err := in.hooks.FoldStream(ctx, d); err != nil {
		return fmt.Errorf("fold the validated update of %q chunk by chunk (round %d is not published; a restart rebuilds it from the last committed round): %w",
			u.GetClientId(), in.check.Round(), err)
	}
	return nil
}

func (in *Intake) validate(d channel.Delivery) (*validate.Values, *rules.Rejection) {
	if d.Rejection != nil {
		// The transport's own verdict, with or without an update (a
		// chunked transfer it dropped has none).
		return nil, d.Rejection
	}
	if d.Err != nil || d.Update == nil {
		return nil, rules.Reject(rules.Undecodable, "%v", d.Err)
	}
	return in.check.CheckValues(d.Update, d.Size)
}

// takeStreamed is Take for an update delivered as a stream: pass 1 ran in
// the channel as its chunks arrived (a validate.Scan of this round), and
// only an accepted update is read again, into the fold.
func (in *Intake) takeStreamed(ctx context.Context, d channel.Delivery) error {
	scan, _ := d.Stream.Sink.(*validate.Scan)
	rej, decided := in.check.CheckStreamed(d.Update, d.Size, scan)
	if !decided {
		// The scan measured another round's model (the transfer began
		// before this round): read the update again whole.
		u, err := d.Stream.Whole(ctx)
		if err != nil {
			in.reject(d, rules.Reject(rules.Incomplete, "reading the update again: %v", err))
			return nil
		}
		d.Update, d.Stream = u, nil
		return in.Take(ctx, d)
	}
	return in.settle(ctx, d, nil, rej)
}

// takeEvaluation takes an evaluate-only update: validate checks it, and
// the owner keeps its figures. It never touches the model.
func (in *Intake) takeEvaluation(d channel.Delivery) {
	rej := d.Rejection
	var n int64
	if rej == nil {
		n, rej = in.check.CheckEvaluation(d.Update, d.Size)
	}
	if rej == nil {
		rej = in.accept(d)
	}
	if rej != nil {
		in.reject(d, rej)
		return
	}
	in.hooks.Evaluated(d, n)
	d.Reply(nil)
}

// accept makes a validated delivery durable (channel.Delivery.Accept), or
// says why it could not: an update is folded only once accepted.
func (in *Intake) accept(d channel.Delivery) *rules.Rejection {
	if err := d.Accept(); err != nil {
		in.log.Error("update could not be stored", "round", in.check.Round(), "client_id", d.ClientID(), "err", err)
		return rules.Reject(rules.NotStored, "%v", err)
	}
	return nil
}

func (in *Intake) reject(d channel.Delivery, rej *rules.Rejection) {
	in.hooks.Rejected(d, rej)
	d.Reply(rej)
}

func (in *Intake) admitted(d channel.Delivery) {
	in.hooks.Admitted(d)
	d.Reply(nil)
}

// hold decides whether an accepted update with values vals (nil: streamed)
// waits for the round's median; if so it is held, and hold returns true.
func (in *Intake) hold(d channel.Delivery, vals *validate.Values) bool {
	if in.factor == 0 || !in.check.HoldOutlier(d.Update, in.factor) {
		return false
	}
	in.held = append(in.held, heldUpdate{d: d, vals: vals})
	return true
}

// Decide folds or refuses the held updates against the median of the
// round's norms, in the order they arrived. With refuse false every held
// update is folded: a scale-out worker must decide its held updates in the
// flush that commits their offsets, and with fewer than three norms there
// is no median worth the name.
func (in *Intake) Decide(ctx context.Context, refuse bool) error {
	bound := in.check.OutlierBound(in.factor)
	held := in.held
	in.held = nil
	for _, h := range held {
		id := h.d.Update.GetClientId()
		if refuse {
			if rej := in.check.RefuseOutlier(id, in.factor, bound); rej != nil {
				in.reject(h.d, rej)
				continue
			}
		}
		if err := in.fold(ctx, h.d, h.vals); err != nil {
			return fmt.Errorf("held update: %w", err)
		}
		in.check.Release(id)
		in.admitted(h.d)
	}
	return nil
}
