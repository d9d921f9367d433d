package scaleout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/logging"
)

// Leader merges the workers' partials into models.
type Leader struct {
	cfg Config
	ch  LeaderTransport
	job *round.Job
	log *slog.Logger
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
	job, err := cfg.job()
	if err != nil {
		return nil, fmt.Errorf("leader config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("job", cfg.ID, "role", "leader")
	if cfg.PartialKey == nil {
		log.Warn("partials are not authenticated (no model key): anyone who can write the partials topic can add to a round")
	}
	return &Leader{cfg: cfg, ch: ch, job: job, log: log, warn: logging.NewLimited(log, 0)}, nil
}

// Run publishes the first model (or resumes from the newest one) and
// closes rounds until the final model is committed; it returns the final
// model and the rounds it closed.
func (l *Leader) Run(ctx context.Context) (*fdxv1.GlobalModel, []RoundRecord, error) {
	cur, err := l.ch.Latest(ctx, l.job.Restorable)
	if err != nil {
		return nil, nil, err
	}
	if cur == nil {
		params, err := l.job.Initial()
		if err != nil {
			return nil, nil, err
		}
		cur = l.job.Record(1, params, nil, nil, nil)
		if err := round.Publish(ctx, l.ch, cur); err != nil {
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
	acc, err := accumulator.New(l.job.Sizes())
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
		p, part, reason, err := l.open(rp, r, seen)
		switch {
		case reason == "late":
			rec.Late++
			l.warn.Warn(ctx, "late", "late partial ignored", "round", r, "partial_round", p.Round, "worker", rp.Worker, "updates", p.Count)
			continue
		case reason != "":
			skip(rp, reason, err)
			continue
		case err != nil:
			return nil, rec, err
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
	if err := l.job.Snap(mean); err != nil {
		return nil, rec, err
	}
	slices.Sort(contributors)
	nm := l.job.Record(r+1, mean, contributors, map[string]float64{round.MetricMedianNorm: validate.Median(norms)}, nil)
	if err := round.Publish(ctx, l.ch, nm); err != nil {
		return nil, rec, err
	}
	rec.Clients = len(contributors)
	rec.Merge = time.Since(start)
	l.log.Info("round closed", "round", r, "clients", rec.Clients, "partials", rec.Partials, "late", rec.Late, "skipped", rec.Skipped, "merge_ms", rec.Merge.Milliseconds())
	return nm, rec, nil
}

// open opens a partial of the open round r and readies it for merging:
// its sums (nil for a partial without updates). A partial that cannot be
// merged comes with the reason it is skipped and why: it does not
// authenticate (bad_mac) or decode (malformed), belongs to a closed round
// (late: its updates arrived after the close and count nowhere, as stale
// updates would) or to one not opened yet (future_round), or holds a
// client already merged (duplicate). Only an error without a reason is
// the leader's own.
func (l *Leader) open(rp channel.Partial, r int64, seen map[string]bool) (*partial, *accumulator.Accumulator, string, error) {
	p, err := openPartial(l.cfg.PartialKey, l.cfg.ID, rp.Worker, rp.Value)
	switch {
	case errors.Is(err, errPartialMAC):
		return nil, nil, "bad_mac", err
	case err != nil:
		return nil, nil, "malformed", err
	case p.Round < r:
		return p, nil, "late", nil
	case p.Round > r:
		return nil, nil, "future_round", fmt.Errorf("partial for round %d, the open round is %d", p.Round, r)
	}
	for _, c := range p.Contributors {
		if seen[c] {
			// Its sum cannot be taken apart: a partial holding a client
			// already merged is a replay (an update's offset commits
			// with the one partial that folded it), and merging it
			// would count that client twice.
			return nil, nil, "duplicate", fmt.Errorf("client %q is already merged in round %d", c, r)
		}
	}
	if p.Count == 0 {
		return p, nil, "", nil
	}
	part, err := accumulator.New(l.job.Sizes())
	if err != nil {
		return nil, nil, "", err
	}
	if err := part.UnmarshalBinary(p.Acc); err != nil {
		return nil, nil, "malformed", err
	}
	return p, part, "", nil
}
