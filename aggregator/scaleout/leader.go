package scaleout

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Leader merges the workers' partials into models.
type Leader struct {
	cfg   Config
	ch    *kafkachan.Server
	specs []tensor.Spec
	sizes []int
	log   *slog.Logger
}

// RoundRecord is what the leader saw of one round.
type RoundRecord struct {
	Round    int64
	Clients  int
	Partials int
	// Late counts partials of rounds already closed (their updates arrived
	// after the close and count nowhere, as stale updates would).
	Late     int
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

// NewLeader returns the leader on ch, which kafkachan.NewLeader opened.
func NewLeader(cfg Config, ch *kafkachan.Server, log *slog.Logger) (*Leader, error) {
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
	return &Leader{cfg: cfg, ch: ch, specs: specs, sizes: sizes, log: log.With("job", cfg.Job, "role", "leader")}, nil
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
	rec := RoundRecord{Round: r, Rejected: map[string]int64{}, Workers: map[string]int{}}
	acc, err := accumulator.New(l.sizes)
	if err != nil {
		return nil, rec, err
	}
	seen := map[string]bool{}
	var contributors []string
	var norms []float64
	for len(contributors) < l.cfg.MinClients {
		rp, err := l.ch.NextPartial(ctx)
		if err != nil {
			return nil, rec, err
		}
		p, err := unmarshalPartial(rp.Value)
		if err != nil {
			return nil, rec, fmt.Errorf("partial of %q at offset %d: %w", rp.Key, rp.Offset, err)
		}
		switch {
		case p.Round < r:
			rec.Late++
			l.log.Warn("late partial ignored", "round", r, "partial_round", p.Round, "worker", rp.Key, "updates", p.Count)
			continue
		case p.Round > r:
			return nil, rec, fmt.Errorf("partial of %q is for round %d, ahead of the leader", rp.Key, p.Round)
		}
		for _, c := range p.Contributors {
			if seen[c] {
				// Its sum is already folded and cannot be taken out:
				// stop rather than publish a model counting it twice.
				return nil, rec, fmt.Errorf("client %q is in two partials of round %d", c, r)
			}
		}
		rec.Partials++
		rec.Workers[rp.Key] += int(p.Count)
		for k, v := range p.Rejected {
			rec.Rejected[k] += v
		}
		if p.Count == 0 {
			continue
		}
		part, err := accumulator.New(l.sizes)
		if err != nil {
			return nil, rec, err
		}
		if err := part.UnmarshalBinary(p.Acc); err != nil {
			return nil, rec, fmt.Errorf("partial of %q: %w", rp.Key, err)
		}
		if err := acc.Merge(part); err != nil {
			return nil, rec, fmt.Errorf("merge partial of %q: %w", rp.Key, err)
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
	l.log.Info("round closed", "round", r, "clients", rec.Clients, "partials", rec.Partials, "late", rec.Late, "merge_ms", rec.Merge.Milliseconds())
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
