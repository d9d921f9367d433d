// Package coordinator runs a federated job's synchronous rounds: publish the
// global model, collect validated updates until enough are in, aggregate
// with the configured strategy, evaluate, publish the next model. One
// goroutine owns all round state, whichever channel carries the messages, so
// the same seed and the same updates give the same model bit for bit.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// ShortRound says what to do when a round's deadline passes with fewer than
// MinClients valid updates.
type ShortRound string

const (
	// Wait keeps the round open until MinClients updates arrive.
	Wait ShortRound = "wait"
	// Fail ends the job with an error.
	Fail ShortRound = "fail"
)

// Config describes a job.
type Config struct {
	Job       string
	NumRounds int
	// MinClients valid updates are needed to close a round.
	MinClients int
	// TargetClients closes a round at once when reached; until then a round
	// waits for its deadline. 0 means MinClients.
	TargetClients int
	// RoundTimeout is each round's deadline; 0 means none.
	RoundTimeout time.Duration
	OnShort      ShortRound
	// Train is sent with every model; its Model, Dataset and Seed also
	// define the initial parameters.
	Train *fdxv1.TrainConfig
	// InDim and Classes size the network.
	InDim, Classes int
	MaxNorm        float64
	MaxExamples    int64
	MaxUpdateBytes int
	// Allowed, when non-nil, restricts which client ids may contribute.
	Allowed map[string]bool
}

func (c *Config) validate() error {
	switch {
	case c.Job == "":
		return errors.New("no job id")
	case c.NumRounds < 1:
		return fmt.Errorf("numrounds %d: want at least 1", c.NumRounds)
	case c.MinClients < 1:
		return fmt.Errorf("minclients %d: want at least 1", c.MinClients)
	case c.TargetClients != 0 && c.TargetClients < c.MinClients:
		return fmt.Errorf("target clients %d below minclients %d", c.TargetClients, c.MinClients)
	case c.Train == nil:
		return errors.New("no train config")
	case c.OnShort != "" && c.OnShort != Wait && c.OnShort != Fail:
		return fmt.Errorf("on-short %q: want %q or %q", c.OnShort, Wait, Fail)
	}
	return nil
}

// Evaluator scores global parameters on held-out data.
type Evaluator func(params [][]float32) (model.Metrics, error)

// Observer is told what happens, for metrics. Methods must not block.
type Observer interface {
	RoundStarted(round int64)
	UpdateAccepted(clientID string, bytes int)
	UpdateRejected(reason validate.Reason, clientID string, bytes int)
	RoundClosed(r RoundRecord)
}

// RoundRecord is the history of one closed round.
type RoundRecord struct {
	Round        int64    `json:"round"`
	Clients      int      `json:"clients"`
	Contributors []string `json:"contributors"`
	Examples     int64    `json:"examples"`
	Accuracy     float64  `json:"accuracy"`
	Loss         float64  `json:"loss"`
	// DurationMs runs from publishing the round's model to publishing the
	// next one.
	DurationMs  float64 `json:"duration_ms"`
	AggregateMs float64 `json:"aggregate_ms"`
	// PublishMs is closing the round on the channel: on Kafka the round
	// transaction (model record, offsets, commit), on gRPC storing the
	// model (and the state file). Fan-out to clients is not in it.
	PublishMs float64 `json:"publish_ms"`
	// PropagationMs is the longest time a contributor took to receive the
	// round's model after it was published (client clocks; same machine
	// in the evaluation).
	PropagationMs float64          `json:"propagation_ms"`
	Rejected      map[string]int64 `json:"rejected,omitempty"`
}

// Result is what a finished job reports.
type Result struct {
	Job     string        `json:"job"`
	Rounds  []RoundRecord `json:"rounds"`
	Initial model.Metrics `json:"initial"`
	// Rejected counts rejections by reason over the whole run.
	Rejected map[string]int64   `json:"rejected"`
	Final    *fdxv1.GlobalModel `json:"-"`
	// Resumed is the round the run resumed at, 0 for a fresh job.
	Resumed int64 `json:"resumed_from_round"`
}

// Coordinator runs one job over one channel.
type Coordinator struct {
	cfg      Config
	ch       channel.Server
	strat    strategy.Strategy
	eval     Evaluator
	obs      Observer
	log      *slog.Logger
	specs    []tensor.Spec
	rejected map[string]int64
}

// New checks cfg and returns a coordinator. eval and obs may be nil.
func New(cfg Config, ch channel.Server, strat strategy.Strategy, eval Evaluator, obs Observer, log *slog.Logger) (*Coordinator, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("job config: %w", err)
	}
	if cfg.OnShort == "" {
		cfg.OnShort = Wait
	}
	if cfg.TargetClients == 0 {
		cfg.TargetClients = cfg.MinClients
	}
	specs, err := model.SpecsFor(cfg.Train.GetModel(), cfg.InDim, cfg.Classes)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Coordinator{cfg: cfg, ch: ch, strat: strat, eval: eval, obs: obs,
		log: log.With("job", cfg.Job), specs: specs, rejected: map[string]int64{}}, nil
}

// Run runs the job to its final model, resuming from the channel's newest
// model if the job was started before.
func (c *Coordinator) Run(ctx context.Context) (*Result, error) {
	res := &Result{Job: c.cfg.Job, Rejected: c.rejected}
	cur, params, err := c.start(ctx, res)
	if err != nil {
		return res, err
	}
	for !cur.GetFinal() {
		next, nextParams, rec, err := c.round(ctx, cur, params)
		if err != nil {
			return res, err
		}
		res.Rounds = append(res.Rounds, rec)
		cur, params = next, nextParams
	}
	res.Final = cur
	return res, nil
}

// start publishes the initial model, or restores the newest published one.
func (c *Coordinator) start(ctx context.Context, res *Result) (*fdxv1.GlobalModel, [][]float32, error) {
	latest, err := c.ch.Latest(ctx)
	if err != nil {
		return nil, nil, err
	}
	if latest != nil {
		params, err := tensor.Decode(latest.GetParams(), c.specs)
		if err != nil {
			return nil, nil, fmt.Errorf("restore round %d: %w", latest.GetRound(), err)
		}
		if err := c.strat.Restore(latest.GetStrategyState()); err != nil {
			return nil, nil, fmt.Errorf("restore round %d strategy state: %w", latest.GetRound(), err)
		}
		res.Resumed = latest.GetRound()
		c.log.Info("resumed from checkpoint", "round", latest.GetRound(), "final", latest.GetFinal(),
			"contributors", len(latest.GetContributors()))
		return latest, params, nil
	}
	net, err := model.New(c.cfg.Train.GetModel(), c.cfg.InDim, c.cfg.Classes, c.cfg.Train.GetSeed())
	if err != nil {
		return nil, nil, err
	}
	params := net.Params()
	metrics := map[string]float64{}
	if c.eval != nil {
		m, err := c.eval(params)
		if err != nil {
			return nil, nil, fmt.Errorf("evaluate initial model: %w", err)
		}
		res.Initial = m
		metrics = map[string]float64{"accuracy": m.Accuracy, "loss": m.Loss}
	}
	state, err := c.strat.State()
	if err != nil {
		return nil, nil, fmt.Errorf("strategy state: %w", err)
	}
	m := c.model(1, params, nil, metrics, state)
	if err := c.publish(ctx, m); err != nil {
		return nil, nil, err
	}
	c.log.Info("job started", "model", c.cfg.Train.GetModel(), "params", net.NumParams(),
		"rounds", c.cfg.NumRounds, "minclients", c.cfg.MinClients, "accuracy", metrics["accuracy"])
	return m, params, nil
}

func (c *Coordinator) model(round int64, params [][]float32, contributors []string, metrics map[string]float64, state []byte) *fdxv1.GlobalModel {
	now := time.Now()
	m := &fdxv1.GlobalModel{
		Job:           c.cfg.Job,
		Round:         round,
		Params:        tensor.Encode(params, c.specs),
		TrainConfig:   c.cfg.Train,
		Final:         round > int64(c.cfg.NumRounds),
		PublishedAt:   timestamppb.New(now),
		Contributors:  contributors,
		Metrics:       metrics,
		StrategyState: state,
		NumRounds:     int64(c.cfg.NumRounds),
		MinClients:    int32(c.cfg.MinClients),
	}
	if c.cfg.RoundTimeout > 0 && !m.Final {
		m.Deadline = timestamppb.New(now.Add(c.cfg.RoundTimeout))
	}
	return m
}

// round collects updates for cur's round and publishes the next model.
func (c *Coordinator) round(ctx context.Context, cur *fdxv1.GlobalModel, params [][]float32) (*fdxv1.GlobalModel, [][]float32, RoundRecord, error) {
	r := cur.GetRound()
	rec := RoundRecord{Round: r, Rejected: map[string]int64{}}
	if c.obs != nil {
		c.obs.RoundStarted(r)
	}
	agg, err := c.strat.Begin(params)
	if err != nil {
		return nil, nil, rec, fmt.Errorf("round %d: %w", r, err)
	}
	expect := validate.Expect{
		Job: c.cfg.Job, Round: r, Specs: c.specs, Global: params,
		MaxNorm: c.cfg.MaxNorm, MaxExamples: c.cfg.MaxExamples, MaxBytes: c.cfg.MaxUpdateBytes,
		Allowed: c.cfg.Allowed,
	}
	seen := map[string]bool{}
	published := cur.GetPublishedAt().AsTime()
	var deadline time.Time
	if c.cfg.RoundTimeout > 0 {
		deadline = published.Add(c.cfg.RoundTimeout)
	}
	var propagation time.Duration
	target := c.cfg.TargetClients
	var next [][]float32
	var aggStart time.Time
	for {
		for len(seen) < target {
			wait := ctx
			cancel := context.CancelFunc(func() {})
			if !deadline.IsZero() {
				wait, cancel = context.WithDeadline(ctx, deadline)
			}
			d, err := c.ch.Next(wait)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil, nil, rec, fmt.Errorf("round %d: %w", r, ctx.Err())
				}
				if errors.Is(err, context.DeadlineExceeded) {
					if len(seen) >= c.cfg.MinClients {
						c.log.Info("round deadline passed", "round", r, "clients", len(seen))
						break
					}
					if c.cfg.OnShort == Fail {
						return nil, nil, rec, fmt.Errorf("round %d: deadline passed with %d of %d required updates", r, len(seen), c.cfg.MinClients)
					}
					c.log.Warn("round deadline passed with too few updates; waiting", "round", r, "clients", len(seen), "minclients", c.cfg.MinClients)
					// Past the deadline the round closes as soon as it has
					// the minimum, not the target.
					deadline = time.Time{}
					target = c.cfg.MinClients
					continue
				}
				return nil, nil, rec, fmt.Errorf("round %d: receive: %w", r, err)
			}
			vals, rej := c.check(d, expect, seen)
			if rej == nil {
				u := d.Update
				err := agg.Add(strategy.Update{ClientID: u.GetClientId(), NumExamples: u.GetNumExamples(), Params: vals})
				switch {
				case errors.Is(err, strategy.ErrRoundClosed), errors.Is(err, strategy.ErrStaleRound):
					return nil, nil, rec, fmt.Errorf("round %d: aggregate update of %q: %w", r, u.GetClientId(), err)
				case err != nil:
					// The strategy refuses it (e.g. beyond its exact range)
					// and leaves the round unchanged: reject this update only.
					rej = &validate.Error{Reason: validate.OutOfRange, Detail: err.Error()}
				}
			}
			if rej != nil {
				rec.Rejected[string(rej.Reason)]++
				c.rejected[string(rej.Reason)]++
				c.log.Warn("update rejected", "round", r, "client_id", clientOf(d), "reason", rej.Reason, "detail", rej.Detail)
				if c.obs != nil {
					c.obs.UpdateRejected(rej.Reason, clientOf(d), d.Size)
				}
				d.Reply(false, rej.Error())
				continue
			}
			u := d.Update
			seen[u.GetClientId()] = true
			rec.Examples += u.GetNumExamples()
			if t := u.GetTimings().GetModelReceived(); t != nil {
				propagation = max(propagation, t.AsTime().Sub(published))
			}
			if c.obs != nil {
				c.obs.UpdateAccepted(u.GetClientId(), d.Size)
			}
			d.Reply(true, "")
		}
		var err error
		aggStart = time.Now()
		next, err = agg.Finish()
		if errors.Is(err, strategy.ErrTooFewUpdates) {
			// A robust strategy (Krum) needs more updates than minclients
			// to tolerate its assumed attackers: keep collecting.
			target = len(seen) + 1
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				deadline = time.Time{} // an expired deadline would spin Next
			}
			c.log.Warn("strategy needs more updates; round stays open", "round", r, "clients", len(seen), "err", err)
			continue
		}
		if err != nil {
			return nil, nil, rec, fmt.Errorf("round %d: aggregate: %w", r, err)
		}
		break
	}
	rec.AggregateMs = msSince(aggStart)
	rec.Contributors = make([]string, 0, len(seen))
	for id := range seen {
		rec.Contributors = append(rec.Contributors, id)
	}
	slices.Sort(rec.Contributors)
	rec.Clients = len(rec.Contributors)
	rec.PropagationMs = float64(propagation.Microseconds()) / 1000
	metrics := map[string]float64{}
	if c.eval != nil {
		m, err := c.eval(next)
		if err != nil {
			return nil, nil, rec, fmt.Errorf("round %d: evaluate: %w", r, err)
		}
		rec.Accuracy, rec.Loss = m.Accuracy, m.Loss
		metrics = map[string]float64{"accuracy": m.Accuracy, "loss": m.Loss}
	}
	state, err := c.strat.State()
	if err != nil {
		return nil, nil, rec, fmt.Errorf("round %d: strategy state: %w", r, err)
	}
	nm := c.model(r+1, next, rec.Contributors, metrics, state)
	pubStart := time.Now()
	if err := c.publish(ctx, nm); err != nil {
		return nil, nil, rec, fmt.Errorf("round %d: %w", r, err)
	}
	rec.PublishMs = msSince(pubStart)
	rec.DurationMs = float64(time.Since(published).Microseconds()) / 1000
	c.log.Info("round closed", "round", r, "clients", rec.Clients, "examples", rec.Examples,
		"accuracy", rec.Accuracy, "loss", rec.Loss, "duration_ms", rec.DurationMs,
		"aggregate_ms", rec.AggregateMs, "final", nm.GetFinal())
	if c.obs != nil {
		c.obs.RoundClosed(rec)
	}
	return nm, next, rec, nil
}

// publishTimeout bounds closing a round once it has begun.
const publishTimeout = 2 * time.Minute

// publish closes a round. It ignores ctx's cancellation: a shutdown signal
// that arrives mid-transaction lets the transaction finish (bounded by
// publishTimeout) rather than leave it to the broker's timeout.
func (c *Coordinator) publish(ctx context.Context, m *fdxv1.GlobalModel) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	return c.ch.Publish(pctx, m)
}

// check validates a delivery against the open round.
func (c *Coordinator) check(d channel.Delivery, e validate.Expect, seen map[string]bool) ([][]float32, *validate.Error) {
	if d.Err != nil || d.Update == nil {
		return nil, &validate.Error{Reason: validate.Undecodable, Detail: fmt.Sprint(d.Err)}
	}
	vals, rej := validate.Update(d.Update, d.Size, e)
	if rej != nil {
		return nil, rej
	}
	if seen[d.Update.GetClientId()] {
		return nil, &validate.Error{Reason: validate.Duplicate, Detail: fmt.Sprintf("client %q already contributed to round %d", d.Update.GetClientId(), e.Round)}
	}
	return vals, nil
}

func clientOf(d channel.Delivery) string {
	if d.Update != nil {
		return d.Update.GetClientId()
	}
	return d.Key
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
