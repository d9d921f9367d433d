package scaleout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Config is what workers and the leader of a job must agree on: the same
// fields as the single aggregator's (coordinator.Config) that validation
// and the round's closing depend on.
type Config struct {
	Job string
	// Strategy must be "fedavg" (or empty): see the package comment.
	Strategy       string
	NumRounds      int
	MinClients     int
	Train          *fdxv1.TrainConfig
	InDim, Classes int
	MaxNorm        float64
	NormFactor     float64
	MaxExamples    int64
	ExamplesOf     func(clientID string) (int64, error)
	MaxUpdateBytes int
	Allowed        map[string]bool
	// PartialKey authenticates partials: each worker appends a MAC
	// binding the job and its name to every partial, and the leader merges
	// only partials that verify. Workers and leader derive it from the
	// model key they share (trust.Signer.DeriveKey). Nil: partials carry
	// no MAC, and anyone who can write the partials topic can forge one.
	PartialKey []byte
}

// metricMedianNorm is the coordinator's metric of the same name: a round's
// median update norm, which bounds the next round's updates.
const metricMedianNorm = "update_norm_median"

// CheckStrategy refuses the strategies whose rounds are not exact sums.
func CheckStrategy(name string) error {
	if name == "" || name == "fedavg" {
		return nil
	}
	return fmt.Errorf("scale-out (--role) supports only fedavg, not %q: its partials must merge exactly", name)
}

func (c *Config) check() ([]tensor.Spec, error) {
	if err := CheckStrategy(c.Strategy); err != nil {
		return nil, err
	}
	switch {
	case c.Job == "":
		return nil, errors.New("no job id")
	case c.NumRounds < 1:
		return nil, fmt.Errorf("numrounds %d: want at least 1", c.NumRounds)
	case c.MinClients < 1:
		return nil, fmt.Errorf("minclients %d: want at least 1", c.MinClients)
	case c.Train == nil:
		return nil, errors.New("no train config")
	}
	return model.SpecsFor(c.Train.GetModel(), c.InDim, c.Classes)
}

// normBound is the coordinator's rule: MaxNorm, or NormFactor times the
// previous round's median, whichever is smaller.
func (c *Config) normBound(m *fdxv1.GlobalModel) float64 {
	b := c.MaxNorm
	if k := c.NormFactor * m.GetMetrics()[metricMedianNorm]; k > 0 && (b == 0 || k < b) {
		b = k
	}
	return b
}

// Worker folds its share of a job's updates into partials.
type Worker struct {
	cfg   Config
	name  string
	ch    WorkerTransport
	specs []tensor.Spec
	log   *slog.Logger
	// FlushEvery closes a batch after this many deliveries (0: 1024);
	// Idle closes it when no update came for this long (0: 20 ms; the
	// channel polls in 100 ms steps, so in practice 100 ms).
	FlushEvery int
	Idle       time.Duration
	// BeforeFlush, when set, runs before each partial is published
	// (fault injection).
	BeforeFlush func(round int64, count int)
}

// NewWorker returns a worker named name (unique in the job, stable across
// its restarts) on ch (kafkachan.NewWorker opens one).
func NewWorker(cfg Config, name string, ch WorkerTransport, log *slog.Logger) (*Worker, error) {
	specs, err := cfg.check()
	if err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Worker{cfg: cfg, name: name, ch: ch, specs: specs, log: log.With("job", cfg.Job, "worker", name)}, nil
}

// batch is what a worker holds of the open round since its last partial.
type batch struct {
	model *fdxv1.GlobalModel
	check *validate.Round
	// selfBound: the model carries no median to bound norms with (round
	// 1), so the round bounds them by the median of its own norms at this
	// worker; held are the updates waiting for that verdict, decided at
	// the next flush (see hold).
	selfBound bool
	held      []heldUpdate
	acc       *accumulator.Accumulator
	part      partial
	pending   int  // deliveries since the last partial
	normsAt   int  // norms of check already shipped
	final     bool // the model ends the job
}

func (w *Worker) newBatch(m *fdxv1.GlobalModel) (*batch, error) {
	global, err := tensor.Decode(m.GetParams(), w.specs)
	if err != nil {
		return nil, fmt.Errorf("model round %d: %w", m.GetRound(), err)
	}
	sizes := make([]int, len(w.specs))
	for i, s := range w.specs {
		sizes[i] = s.Size()
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, err
	}
	c := w.cfg
	return &batch{model: m, acc: acc, final: m.GetFinal(),
		selfBound: c.NormFactor > 0 && m.GetMetrics()[metricMedianNorm] == 0,
		part:      partial{Round: m.GetRound(), Rejected: map[string]int64{}},
		check: validate.NewRound(validate.Expect{
			Job: c.Job, Round: m.GetRound(), Specs: w.specs, Global: global,
			MaxNorm: c.normBound(m), MaxExamples: c.MaxExamples, MaxBytes: c.MaxUpdateBytes,
			Allowed: c.Allowed, ExamplesOf: c.ExamplesOf,
		})}, nil
}

// Run folds updates until ctx ends or the job's final model appears.
func (w *Worker) Run(ctx context.Context) error {
	m, err := w.await(ctx, 1)
	if err != nil {
		return err
	}
	b, err := w.newBatch(m)
	if err != nil {
		return err
	}
	flushEvery, idle := w.FlushEvery, w.Idle
	if flushEvery <= 0 {
		flushEvery = 1024
	}
	if idle <= 0 {
		idle = 20 * time.Millisecond
	}
	revs := w.ch.Revocations()
	for !b.final {
		wait, cancel := context.WithTimeout(ctx, idle)
		d, err := w.ch.Next(wait)
		cancel()
		if n := w.ch.Revocations(); n != revs {
			// Uncommitted records are read again from the committed
			// offsets: drop what this batch folded of them.
			revs = n
			if b.pending > 0 {
				w.log.Info("partitions revoked; dropping the uncommitted batch", "round", b.part.Round, "deliveries", b.pending)
			}
			nb, berr := w.newBatch(b.model)
			if berr != nil {
				return berr
			}
			b = nb
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if b.pending > 0 {
				if err := w.flush(ctx, b); err != nil {
					return err
				}
			} else if m, err := w.ch.Latest(ctx, w.restorable); err == nil && m != nil && m.GetRound() > b.model.GetRound() {
				if b, err = w.newBatch(m); err != nil {
					return err
				}
			}
			continue
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		}
		if r := d.Update.GetBaseRound(); d.Update != nil && r > b.model.GetRound() {
			// The leader closed the round: ship what this round holds
			// (late, the leader will count it as such) and move on.
			if b.pending > 0 {
				if err := w.flush(ctx, b); err != nil {
					return err
				}
			}
			// A client trains only on a published model, so a newer
			// model is on the topic already; when there is none, the
			// update claims a round that does not exist and is refused
			// as any future update is, rather than stall this worker.
			m, err := w.ch.Latest(ctx, w.restorable)
			if err != nil {
				return err
			}
			if m != nil && m.GetRound() > b.model.GetRound() {
				if b, err = w.newBatch(m); err != nil {
					return err
				}
			}
		}
		if err := w.take(b, d); err != nil {
			return err
		}
		if b.pending >= flushEvery {
			if err := w.flush(ctx, b); err != nil {
				return err
			}
		}
	}
	w.log.Info("final model seen; worker done")
	return nil
}

// take validates and folds one delivery, as coordinator.take does.
func (w *Worker) take(b *batch, d channel.Delivery) error {
	b.pending++
	var vals *validate.Values
	rej := d.Rejection
	switch {
	case rej != nil:
	case d.Err != nil || d.Update == nil:
		rej = rules.Reject(rules.Undecodable, "%v", d.Err)
	default:
		vals, rej = b.check.CheckValues(d.Update, d.Size)
	}
	if rej != nil {
		b.part.Rejected[string(rej.Reason)]++
		w.log.Debug("update rejected", "round", b.part.Round, "client_id", d.ClientID(), "reason", rej.Reason, "detail", rej.Detail)
		d.Reply(rej)
		return nil
	}
	if w.hold(b, d, vals) {
		return nil
	}
	b.check.Admit(d.Update)
	return w.fold(b, d, vals)
}

// fold adds an admitted update to the batch and answers its sender.
func (w *Worker) fold(b *batch, d channel.Delivery, vals *validate.Values) error {
	u := d.Update
	if err := b.acc.AddChecked(u.GetNumExamples(), vals); err != nil {
		return fmt.Errorf("fold the validated update of %q: %w", u.GetClientId(), err)
	}
	b.part.Count++
	b.part.Weight += u.GetNumExamples()
	b.part.Contributors = append(b.part.Contributors, u.GetClientId())
	d.Reply(nil)
	return nil
}

// heldUpdate is a valid update waiting for the round's median.
type heldUpdate struct {
	d    channel.Delivery
	vals *validate.Values
}

// hold is the coordinator's rule for a round without a median from the
// round before, on this worker's share: an update within NormFactor times
// the median of the round's norms so far (three or more, its own
// included) folds at once, any other is held and decided at the next
// flush against the median of every norm this worker saw in the round.
// Held updates must be decided by the flush that commits their offsets,
// so a flush with fewer than three norms lets them through: the bound is
// weaker than the single aggregator's when a worker's batches are small.
func (w *Worker) hold(b *batch, d channel.Delivery, vals *validate.Values) bool {
	if !b.selfBound {
		return false
	}
	if !b.check.HoldOutlier(d.Update, w.cfg.NormFactor) {
		return false
	}
	b.held = append(b.held, heldUpdate{d: d, vals: vals})
	return true
}

// resolveHeld folds or refuses the held updates of the batch.
func (w *Worker) resolveHeld(b *batch) error {
	// With fewer than three norms the flush lets its held updates through
	// (see hold).
	decide := len(b.check.Norms()) >= 3
	bound := b.check.OutlierBound(w.cfg.NormFactor)
	held := b.held
	b.held = nil
	for _, h := range held {
		id := h.d.Update.GetClientId()
		if decide {
			if rej := b.check.RefuseOutlier(id, w.cfg.NormFactor, bound); rej != nil {
				b.part.Rejected[string(rej.Reason)]++
				h.d.Reply(rej)
				continue
			}
		}
		b.check.Release(id)
		if err := w.fold(b, h.d, h.vals); err != nil {
			return err
		}
	}
	return nil
}

// flush publishes the batch as a partial with its offsets and empties it.
func (w *Worker) flush(ctx context.Context, b *batch) error {
	if err := w.resolveHeld(b); err != nil {
		return err
	}
	norms := b.check.AdmittedNorms()
	b.part.Norms = norms[b.normsAt:]
	b.part.Acc = nil
	if b.part.Count > 0 {
		acc, err := b.acc.MarshalBinary()
		if err != nil {
			return fmt.Errorf("partial round %d: %w", b.part.Round, err)
		}
		b.part.Acc = acc
	}
	if w.BeforeFlush != nil {
		w.BeforeFlush(b.part.Round, int(b.part.Count))
	}
	if err := w.ch.PublishPartial(ctx, b.part.Round, w.name, b.part.seal(w.cfg.PartialKey, w.cfg.Job, w.name)); err != nil {
		return err
	}
	w.log.Debug("partial published", "round", b.part.Round, "updates", b.part.Count, "deliveries", b.pending)
	b.normsAt = len(norms)
	b.acc.Reset()
	b.part = partial{Round: b.part.Round, Rejected: map[string]int64{}}
	b.pending = 0
	return nil
}

// restorable accepts this job's models with its shapes.
func (w *Worker) restorable(m *fdxv1.GlobalModel) error {
	if err := rules.CheckModel(m, w.cfg.Job); err != nil {
		return err
	}
	_, err := tensor.Decode(m.GetParams(), w.specs)
	return err
}

// await returns the newest model once its round is at least round.
func (w *Worker) await(ctx context.Context, round int64) (*fdxv1.GlobalModel, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		m, err := w.ch.Latest(ctx, w.restorable)
		if err != nil {
			return nil, err
		}
		if m != nil && m.GetRound() >= round {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}
