package scaleout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Config is what workers and the leader of a job must agree on: what
// every round of the job shares, as for the single aggregator
// (round.Job), and how partials are made.
type Config struct {
	round.Job
	// Strategy must be "fedavg" (or empty): see the package comment.
	Strategy string
	// PartialKey authenticates partials: each worker appends a MAC
	// binding the job and its name to every partial, and the leader merges
	// only partials that verify. Workers and leader derive it from the
	// model key they share (trust.Signer.DeriveKey). Nil: partials carry
	// no MAC, and anyone who can write the partials topic can forge one.
	PartialKey []byte
}

// CheckStrategy refuses the strategies whose rounds are not exact sums.
func CheckStrategy(name string) error {
	if name == "" || name == "fedavg" {
		return nil
	}
	return fmt.Errorf("scale-out (--role) supports only fedavg, not %q: its partials must merge exactly", name)
}

// job checks c and returns the job's rounds.
func (c *Config) job() (*round.Job, error) {
	if err := CheckStrategy(c.Strategy); err != nil {
		return nil, err
	}
	return round.NewJob(c.Job)
}

// Worker folds its share of a job's updates into partials.
type Worker struct {
	cfg  Config
	name string
	ch   WorkerTransport
	job  *round.Job
	log  *slog.Logger
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
	job, err := cfg.job()
	if err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Worker{cfg: cfg, name: name, ch: ch, job: job, log: log.With("job", cfg.ID, "worker", name)}, nil
}

// batch is what a worker holds of the open round since its last partial.
type batch struct {
	model *fdxv1.GlobalModel
	// in takes the round's updates. When the model carries no median to
	// bound norms with (round 1), the round bounds them by the median of
	// its own norms at this worker: the updates held for that verdict are
	// decided at the next flush (see flush).
	in      *round.Intake
	acc     *accumulator.Accumulator
	part    partial
	pending int  // deliveries since the last partial
	normsAt int  // admitted norms already shipped
	final   bool // the model ends the job
}

func (w *Worker) newBatch(m *fdxv1.GlobalModel) (*batch, error) {
	global, err := w.job.Decode(m)
	if err != nil {
		return nil, err
	}
	acc, err := accumulator.New(w.job.Sizes())
	if err != nil {
		return nil, err
	}
	median := round.MedianOf(m)
	b := &batch{model: m, acc: acc, final: m.GetFinal(),
		part: partial{Round: m.GetRound(), Rejected: map[string]int64{}}}
	b.in = round.NewIntake(validate.NewRound(w.job.Expect(m.GetRound(), global, median)), w.job.SelfBound(median), round.Hooks{
		Fold: func(u *fdxv1.Update, vals *validate.Values) error { return b.acc.AddChecked(u.GetNumExamples(), vals) },
		Admitted: func(d channel.Delivery) {
			u := d.Update
			b.part.Count++
			b.part.Weight += u.GetNumExamples()
			b.part.Contributors = append(b.part.Contributors, u.GetClientId())
		},
		Rejected: func(d channel.Delivery, rej *rules.Rejection) {
			b.part.Rejected[string(rej.Reason)]++
			w.log.Debug("update rejected", "round", b.part.Round, "client_id", d.ClientID(), "reason", rej.Reason, "detail", rej.Detail)
		},
	}, w.log)
	return b, nil
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
			} else if m, err := w.ch.Latest(ctx, w.job.Restorable); err == nil && m != nil && m.GetRound() > b.model.GetRound() {
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
			m, err := w.ch.Latest(ctx, w.job.Restorable)
			if err != nil {
				return err
			}
			if m != nil && m.GetRound() > b.model.GetRound() {
				if b, err = w.newBatch(m); err != nil {
					return err
				}
			}
		}
		b.pending++
		if err := b.in.Take(ctx, d); err != nil {
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

// flush publishes the batch as a partial with its offsets and empties it.
func (w *Worker) flush(ctx context.Context, b *batch) error {
	// Held updates must be decided by the flush that commits their
	// offsets, so with fewer than three norms they go through: the bound
	// is weaker than the single aggregator's when a worker's batches are
	// small.
	if err := b.in.Decide(ctx, len(b.in.Check().Norms()) >= 3); err != nil {
		return err
	}
	norms := b.in.Check().AdmittedNorms()
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
	if err := w.ch.PublishPartial(ctx, b.part.Round, w.name, b.part.seal(w.cfg.PartialKey, w.cfg.ID, w.name)); err != nil {
		return err
	}
	w.log.Debug("partial published", "round", b.part.Round, "updates", b.part.Count, "deliveries", b.pending)
	b.normsAt = len(norms)
	b.acc.Reset()
	b.part = partial{Round: b.part.Round, Rejected: map[string]int64{}}
	b.pending = 0
	return nil
}

// await returns the newest model once its round is at least round.
func (w *Worker) await(ctx context.Context, round int64) (*fdxv1.GlobalModel, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		m, err := w.ch.Latest(ctx, w.job.Restorable)
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
