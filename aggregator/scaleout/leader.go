package scaleout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Leader merges the workers' partials into models.
type Leader struct {
	cfg   Config
	ch    LeaderTransport
	specs []tensor.Spec
	sizes []int
	log   *slog.Logger
	// warn rate-limits the lines about skipped partials: anyone who can
	// write the partials topic can cause them.
	warn *logging.Limited
}

// RoundRecord is what the leader saw of one round.
type RoundRecord struct {
	Round    int64
	Clients  int
	Partials int
	// Late counts partials of rounds already closed (their updates arrived
	// after the close and count nowhere, as stale updates would).
	Late int
	// Skipped counts partials refused per reason: they do not decode
	// (malformed), do not authenticate (bad_mac), claim a round the
	// leader has not opened (future_round), or hold a client already
	// merged this round (duplicate, a replay).
	Skipped  map[string]int
	Rejected map[string]int64
	// Workers counts the updates merged per worker.
	Workers map[string]int
	// Merge is the time from the partial that reached MinClients to the
	// model's commit.
	Merge time.Duration
}

// LeaderMessageBytes is what the leader's channel must reassemble
// (kafkachan.ServerOptions.MaxMessageBytes) for a job whose models encode in
// modelBytes: a partial holds 16 bytes per parameter (4 per encoded one),
// more for values outside their windows, and the batch's client ids.
func LeaderMessageBytes(modelBytes int) int { return 16*modelBytes + 64<<20 }

// NewLeader returns the leader on ch (kafkachan.NewLeader opens one).
func NewLeader(cfg Config, ch LeaderTransport, log *slog.Logger) (*Leader, error) {
	specs, err := cfg.check()
	if err != nil {
		return nil, fmt.Errorf("leader config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sizes := make([]int, len(specs))
	for i, s := range specs {
		sizes[i] = s.Size()
	}
	log = log.With("job", cfg.Job, "role", "leader")
	if cfg.PartialKey == nil {
		log.Warn("partials are not authenticated (no model key): anyone who can write the partials topic can add to a round")
	}
	return &Leader{cfg: cfg, ch: ch, specs: specs, sizes: sizes, log: log, warn: logging.NewLimited(log, 0)}, nil
}

// Run publishes the first model (or resumes from the newest one) and
// closes rounds until the final model is committed; it returns the final
// model and the rounds it closed.
func (l *Leader) Run(ctx context.Context) (*fdxv1.GlobalModel, []RoundRecord, error) {
	cur, err := l.ch.Latest(ctx, l.restorable)
	if err != nil {
		return nil, nil, err
	}
	if cur == nil {
		net, err := model.New(l.cfg.Train.GetModel(), l.cfg.InDim, l.cfg.Classes, l.cfg.Train.GetSeed())
		if err != nil {
			return nil, nil, err
		}
		cur = l.model(1, net.Params(), nil, map[string]float64{})
		if err := l.ch.Publish(ctx, cur); err != nil {
			return nil, nil, err
		}
	}
	var recs []RoundRecord
	for !cur.GetFinal() {
		next, rec, err := l.round(ctx, cur.GetRound())
		if err != nil {
			return nil, recs, fmt.Errorf("round %d: %w", cur.GetRound(), err)
		}
		recs = append(recs, rec)
		cur = next
	}
	return cur, recs, nil
}

// round merges committed partials of round r until they hold MinClients
// valid updates, then commits model r+1 with the partials' offsets.
func (l *Leader) round(ctx context.Context, r int64) (*fdxv1.GlobalModel, RoundRecord, error) {
	rec := RoundRecord{Round: r, Rejected: map[string]int64{}, Workers: map[string]int{}, Skipped: map[string]int{}}
	acc, err := accumulator.New(l.sizes)
	if err != nil {
		return nil, rec, err
	}
	seen := map[string]bool{}
	var contributors []string
	var norms []float64
	// A partial the leader cannot use is skipped and counted, never a
	// reason to stop: whoever can write the topic could otherwise stop
	// every restart of the job with one record.
	skip := func(rp channel.Partial, reason string, err error) {
		rec.Skipped[reason]++
		l.warn.Warn(ctx, reason, "partial skipped", "round", r, "worker", rp.Worker, "at", rp.Where, "err", err)
	}
	for len(contributors) < l.cfg.MinClients {
		rp, err := l.ch.NextPartial(ctx)
		if err != nil {
			return nil, rec, err
		}
		p, err := openPartial(l.cfg.PartialKey, l.cfg.Job, rp.Worker, rp.Value)
		switch {
		case errors.Is(err, errPartialMAC):
			skip(rp, "bad_mac", err)
			continue
		case err != nil:
			skip(rp, "malformed", err)
			continue
		case p.Round < r:
			rec.Late++
			l.warn.Warn(ctx, "late", "late partial ignored", "round", r, "partial_round", p.Round, "worker", rp.Worker, "updates", p.Count)
			continue
		case p.Round > r:
			skip(rp, "future_round", fmt.Errorf("partial for round %d, the open round is %d", p.Round, r))
			continue
		}
		var dup string
		for _, c := range p.Contributors {
			if seen[c] {
				dup = c
				break
			}
		}
		if dup != "" {
			// Its sum cannot be taken apart: a partial holding a client
			// already merged is a replay (an update's offset commits
			// with the one partial that folded it), and merging it
			// would count that client twice.
			skip(rp, "duplicate", fmt.Errorf("client %q is already merged in round %d", dup, r))
			continue
		}
		var part *accumulator.Accumulator
		if p.Count > 0 {
			if part, err = accumulator.New(l.sizes); err != nil {
				return nil, rec, err
			}
			if err := part.UnmarshalBinary(p.Acc); err != nil {
				skip(rp, "malformed", err)
				continue
			}
		}
		if part != nil {
			if err := acc.Merge(part); err != nil {
				// Merge checks shapes and bounds before it adds anything.
				skip(rp, "malformed", fmt.Errorf("merge: %w", err))
				continue
			}
		}
		rec.Partials++
		rec.Workers[rp.Worker] += int(p.Count)
		for k, v := range p.Rejected {
			rec.Rejected[k] += v
		}
		if p.Count == 0 {
			continue
		}
		for _, c := range p.Contributors {
			seen[c] = true
		}
		contributors = append(contributors, p.Contributors...)
		norms = append(norms, p.Norms...)
	}
	start := time.Now()
	mean, err := acc.Mean()
	if err != nil {
		return nil, rec, err
	}
	slices.Sort(contributors)
	nm := l.model(r+1, mean, contributors, map[string]float64{metricMedianNorm: median(norms)})
	if err := l.ch.Publish(ctx, nm); err != nil {
		return nil, rec, err
	}
	rec.Clients = len(contributors)
	rec.Merge = time.Since(start)
	l.log.Info("round closed", "round", r, "clients", rec.Clients, "partials", rec.Partials, "late", rec.Late, "skipped", rec.Skipped, "merge_ms", rec.Merge.Milliseconds())
	return nm, rec, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if m := len(xs) / 2; len(xs)%2 == 1 {
		return xs[m]
	} else {
		return (xs[m-1] + xs[m]) / 2
	}
}

// model builds a model record as the coordinator does.
func (l *Leader) model(round int64, params [][]float32, contributors []string, metrics map[string]float64) *fdxv1.GlobalModel {
	m := &fdxv1.GlobalModel{
		Job:         l.cfg.Job,
		Round:       round,
		Params:      tensor.Encode(params, l.specs),
		TrainConfig: l.cfg.Train,
		Final:       round > int64(l.cfg.NumRounds),
		PublishedAt: timestamppb.Now(),
		Metrics:     metrics,
		NumRounds:   int64(l.cfg.NumRounds),
		MinClients:  int32(l.cfg.MinClients),
	}
	rules.SetContributors(m, contributors)
	return m
}

func (l *Leader) restorable(m *fdxv1.GlobalModel) error {
	if err := rules.CheckModel(m, l.cfg.Job); err != nil {
		return err
	}
	if r := m.GetRound(); r > int64(l.cfg.NumRounds)+1 {
		return fmt.Errorf("model round %d is past this job's final round %d", r, l.cfg.NumRounds+1)
	}
	_, err := tensor.Decode(m.GetParams(), l.specs)
	return err
}
