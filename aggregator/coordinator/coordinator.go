// Package coordinator runs a federated job: in synchronous rounds (publish
// the global model, collect validated updates until enough are in,
// aggregate with the configured strategy, evaluate, publish the next model)
// or asynchronously (FedBuff, async.go: fold each update as it arrives,
// publish a version every K). One goroutine owns all round state,
// whichever channel carries the messages, so the same seed and the same
// updates give the same model bit for bit.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
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

// Config describes a job: what every round of it shares (round.Job),
// and how the single aggregator closes its rounds.
type Config struct {
	round.Job
	// TargetClients closes a round at once when reached; until then a round
	// waits for its deadline. 0 means MinClients.
	TargetClients int
	OnShort       ShortRound
	// TargetAccuracy, when > 0, ends the job early: the first model whose
	// centralized accuracy reaches it is published as the final one.
	TargetAccuracy float64
	// Async, when set, runs the job asynchronously (FedBuff) instead of in
	// rounds; the strategy is then unused and may be nil.
	Async *Async
	// Sampling, when set, asks a sample of the clients to train and to
	// evaluate in each round (sampling.go).
	Sampling *Sampling
	// HoldUpdates turns off streaming chunked updates (stream.go): each
	// is then held whole, as on channels that cannot stream.
	HoldUpdates bool
}

// validate checks what round.NewJob does not.
func (c *Config) validate() error {
	switch {
	case c.TargetClients != 0 && c.TargetClients < c.MinClients:
		return fmt.Errorf("target clients %d below minclients %d", c.TargetClients, c.MinClients)
	case c.OnShort != "" && c.OnShort != Wait && c.OnShort != Fail:
		return fmt.Errorf("on-short %q: want %q or %q", c.OnShort, Wait, Fail)
	case c.TargetAccuracy < 0 || c.TargetAccuracy > 1:
		return fmt.Errorf("target accuracy %v outside [0, 1]", c.TargetAccuracy)
	}
	if c.Async != nil {
		return c.Async.Validate()
	}
	return c.Sampling.validate(c.MinClients)
}

// DefaultNormFactor is the NormFactor jobs run with unless told otherwise.
// Within a round, honest clients (same learning rate and local epochs)
// produce deltas whose norms differ by a small factor: shard sizes and
// label skew spread them, and from round to round they shrink as the
// model converges. Ten times the median leaves honest clients, non-IID
// ones included, far inside the bound while capping how far one update
// may pull the model at an order of magnitude of an honest step, instead
// of anywhere at all.
const DefaultNormFactor = 10

// Observer is told what happens, for metrics. Methods must not block.
type Observer interface {
	RoundStarted(round int64)
	UpdateAccepted(clientID string, bytes int)
	UpdateRejected(reason rules.Reason, clientID string, bytes int)
	RoundClosed(r RoundRecord)
}

// NopObserver observes nothing.
type NopObserver struct{}

func (NopObserver) RoundStarted(int64)                       {}
func (NopObserver) UpdateAccepted(string, int)               {}
func (NopObserver) UpdateRejected(rules.Reason, string, int) {}
func (NopObserver) RoundClosed(RoundRecord)                  {}

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
	DurationMs float64 `json:"duration_ms"`
	// AggregateMs is the strategy's time: folding every update in and
	// finishing the round.
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
	// Sampled is the round's training sample, when it had one.
	Sampled []string `json:"sampled,omitempty"`
	// FitMetrics aggregates the contributors' own training metrics
	// ("loss", "accuracy" on their shards), weighted by examples.
	FitMetrics map[string]float64 `json:"fit_metrics,omitempty"`
	// Federated is the sampled clients' evaluation of the round's starting
	// model; Accuracy and Loss above are the centralized evaluation of
	// the round's aggregate.
	Federated *Federated `json:"federated,omitempty"`
	// Strategy is what the strategy reports of the round, e.g. DP-FedAvg's
	// clip norm, noise multiplier and (ε, δ) spent so far.
	Strategy map[string]float64 `json:"strategy,omitempty"`
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
	// medianNorm is the last closed round's median update norm.
	medianNorm float64
	cfg        Config
	ch         channel.Server
	strat      strategy.Strategy
	// policy is the strategy's, or the default in async mode.
	policy strategy.Policy
	eval   strategy.Evaluator
	obs    Observer
	log    *slog.Logger
	// warn rate-limits the lines about rejected updates: a client (or
	// anyone, without tokens) can send thousands a second.
	warn       *logging.Limited
	job        *round.Job
	rejections map[string]int64

	// lastBase is async mode's duplicate guard (validate.Async.LastBase).
	lastBase map[string]int64
	plan     *roundPlan // the last round planned
}

// New checks cfg and returns a coordinator. eval and obs may be nil.
func New(cfg Config, ch channel.Server, strat strategy.Strategy, eval strategy.Evaluator, obs Observer, log *slog.Logger) (*Coordinator, error) {
	job, err := round.NewJob(cfg.Job)
	if err != nil {
		return nil, fmt.Errorf("job config: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("job config: %w", err)
	}
	if cfg.OnShort == "" {
		cfg.OnShort = Wait
	}
	if cfg.TargetClients == 0 {
		cfg.TargetClients = cfg.MinClients
	}
	if cfg.Async == nil && strat == nil {
		return nil, errors.New("job config: no strategy")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if obs == nil {
		obs = NopObserver{}
	}
	var policy strategy.Policy = strategy.Default{}
	if strat != nil {
		policy = strat
	}
	return &Coordinator{cfg: cfg, ch: ch, strat: strat, policy: policy, eval: eval, obs: obs,
		log: log.With("job", cfg.ID), warn: logging.NewLimited(log.With("job", cfg.ID), 0), job: job, rejections: map[string]int64{}}, nil
}

// Run runs the job to its final model, resuming from the channel's newest
// model if the job was started before.
func (c *Coordinator) Run(ctx context.Context) (*Result, error) {
	res := &Result{Job: c.cfg.ID, Rejected: c.rejections}
	cur, params, err := c.start(ctx, res)
	if err != nil {
		return res, err
	}
	step := c.round
	if c.cfg.Async != nil {
		step = c.version
	}
	for !cur.GetFinal() {
		next, nextParams, rec, err := step(ctx, cur, params)
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
	latest, err := c.ch.Latest(ctx, c.job.Restorable)
	if err != nil {
		return nil, nil, err
	}
	if latest != nil {
		params, err := c.job.Decode(latest)
		if err != nil {
			return nil, nil, fmt.Errorf("restore: %w", err)
		}
		if err := c.restoreState(latest.GetStrategyState()); err != nil {
			return nil, nil, fmt.Errorf("restore round %d strategy state: %w", latest.GetRound(), err)
		}
		res.Resumed = latest.GetRound()
		c.medianNorm = round.MedianOf(latest)
		c.log.Info("resumed from checkpoint", "round", latest.GetRound(), "final", latest.GetFinal(),
			"contributors", latest.GetNumContributors())
		return latest, params, nil
	}
	params, err := c.job.Initial()
	if err != nil {
		return nil, nil, err
	}
	metrics := map[string]float64{}
	em, ok, err := c.evaluate(0, params)
	if err != nil {
		return nil, nil, fmt.Errorf("evaluate initial model: %w", err)
	}
	if ok {
		res.Initial = em
		metrics = map[string]float64{"accuracy": em.Accuracy, "loss": em.Loss}
	}
	state, err := c.state()
	if err != nil {
		return nil, nil, fmt.Errorf("strategy state: %w", err)
	}
	m := c.job.Record(1, params, nil, metrics, state)
	if err := c.configure(m); err != nil {
		return nil, nil, err
	}
	if err := round.Publish(ctx, c.ch, m); err != nil {
		return nil, nil, err
	}
	c.log.Info("job started", "model", c.cfg.Train.GetModel(), "params", c.job.NumParams(),
		"rounds", c.cfg.NumRounds, "minclients", c.cfg.MinClients, "async", c.cfg.Async != nil, "accuracy", metrics["accuracy"])
	return m, params, nil
}

// evaluate is the policy's centralized evaluation of the model that closes
// round (0: the initial model), when the job has a test set.
func (c *Coordinator) evaluate(round int64, params [][]float32) (model.Metrics, bool, error) {
	if c.eval == nil {
		return model.Metrics{}, false, nil
	}
	return c.policy.Evaluate(round, params, c.eval)
}

// reached reports whether a model with these metrics meets the job's
// target accuracy, which ends the job.
func (c *Coordinator) reached(metrics map[string]float64) bool {
	acc, ok := metrics["accuracy"]
	return c.cfg.TargetAccuracy > 0 && ok && acc >= c.cfg.TargetAccuracy
}

// state is what the next model record carries to resume exactly: the
// strategy's state, or in async mode the coordinator's own.
func (c *Coordinator) state() ([]byte, error) {
	if c.cfg.Async != nil {
		return c.asyncState()
	}
	return c.strat.State()
}

func (c *Coordinator) restoreState(b []byte) error {
	if c.cfg.Async != nil {
		return c.restoreAsync(b)
	}
	return c.strat.Restore(b)
}

// roundState is one open round: what the loop has collected so far.
type roundState struct {
	rec       RoundRecord
	agg       strategy.Round
	in        *round.Intake
	published time.Time
	deadline  time.Time // zero: none
	// pastDeadline: the deadline passed, so the round closes with
	// MinClients updates instead of TargetClients, and waits without one.
	pastDeadline bool
	// needMore is the count a strategy asked for (Krum needs more than
	// 2f+2 updates) after refusing to finish with fewer.
	needMore    int
	propagation time.Duration
	finish      time.Duration // the strategy's Finish; folding is in's

	plan    *roundPlan
	metrics roundMetrics
}

// target is the number of updates that closes the round now.
func (st *roundState) target(cfg Config) int {
	t := st.plan.fitTarget(cfg)
	if st.pastDeadline {
		t = cfg.MinClients
	}
	return max(t, st.needMore)
}

// round collects updates for cur's round and publishes the next model.
func (c *Coordinator) round(ctx context.Context, cur *fdxv1.GlobalModel, params [][]float32) (*fdxv1.GlobalModel, [][]float32, RoundRecord, error) {
	r := cur.GetRound()
	c.obs.RoundStarted(r)
	agg, err := c.strat.Begin(params)
	if err != nil {
		return nil, nil, RoundRecord{Round: r}, fmt.Errorf("round %d: %w", r, err)
	}
	plan, err := c.planFor(r)
	if err != nil {
		return nil, nil, RoundRecord{Round: r}, err
	}
	st := &roundState{
		rec:       RoundRecord{Round: r, Rejected: map[string]int64{}},
		agg:       agg,
		published: cur.GetPublishedAt().AsTime(),
		plan:      plan,
	}
	c.openIntake(st, validate.NewRound(c.expect(r, params, plan)), c.job.SelfBound(c.medianNorm),
		func(u *fdxv1.Update, vals *validate.Values) error {
			return agg.Add(strategy.Update{ClientID: u.GetClientId(), NumExamples: u.GetNumExamples(), Checked: vals})
		})
	if c.cfg.RoundTimeout > 0 {
		st.deadline = st.published.Add(c.cfg.RoundTimeout)
	}
	c.streamUpdates(st)
	next, err := c.collect(ctx, st)
	if err != nil {
		return nil, nil, st.rec, fmt.Errorf("round %d: %w", r, err)
	}
	nm, err := c.close(ctx, st, next)
	if err != nil {
		return nil, nil, st.rec, fmt.Errorf("round %d: %w", r, err)
	}
	return nm, next, st.rec, nil
}

// collect takes updates until the round may close and returns the
// strategy's aggregate.
func (c *Coordinator) collect(ctx context.Context, st *roundState) ([][]float32, error) {
	for {
		for {
			if st.in.Held() > 0 && st.in.Check().Count() >= st.target(c.cfg) {
				// Decide the held updates now: their evaluations may be
				// what the round still waits for, and refusals reopen it.
				if err := st.in.Decide(ctx, true); err != nil {
					return nil, err
				}
			}
			if st.in.Check().Count() >= st.target(c.cfg) && !c.evaluationsDue(st) {
				break
			}
			d, err := c.receive(ctx, st)
			switch {
			case err == nil:
				if err := st.in.Take(ctx, d); err != nil {
					return nil, err
				}
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, context.DeadlineExceeded):
				if err := c.deadlinePassed(st); err != nil {
					return nil, err
				}
			default:
				return nil, fmt.Errorf("receive: %w", err)
			}
		}
		start := time.Now()
		next, err := st.agg.Finish()
		st.finish += time.Since(start)
		if errors.Is(err, strategy.ErrTooFewUpdates) {
			// A robust strategy needs more updates than it has to tolerate
			// its assumed attackers: keep collecting, past any deadline.
			st.needMore = st.in.Check().Count() + 1
			c.log.Warn("strategy needs more updates; round stays open", "round", st.rec.Round, "clients", st.in.Check().Count(), "err", err)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("aggregate: %w", err)
		}
		return next, nil
	}
}

// receive waits for the next delivery until the round's deadline, if it
// has one still ahead.
func (c *Coordinator) receive(ctx context.Context, st *roundState) (channel.Delivery, error) {
	if st.deadline.IsZero() || st.pastDeadline {
		return c.ch.Next(ctx)
	}
	wait, cancel := context.WithDeadline(ctx, st.deadline)
	defer cancel()
	return c.ch.Next(wait)
}

// deadlinePassed decides what a passed deadline means for the round: close
// with what it has, fail the job, or wait for the minimum.
func (c *Coordinator) deadlinePassed(st *roundState) error {
	st.pastDeadline = true
	n := st.in.Check().Count()
	switch {
	case n >= c.cfg.MinClients:
		c.log.Info("round deadline passed", "round", st.rec.Round, "clients", n)
	case c.cfg.OnShort == Fail:
		return fmt.Errorf("deadline passed with %d of %d required updates", n, c.cfg.MinClients)
	default:
		c.log.Warn("round deadline passed with too few updates; waiting", "round", st.rec.Round, "clients", n, "minclients", c.cfg.MinClients)
	}
	return nil
}

// expect is what a valid update to round r, which starts from params,
// looks like.
func (c *Coordinator) expect(r int64, params [][]float32, plan *roundPlan) validate.Expect {
	e := c.job.Expect(r, params, c.medianNorm)
	e.Sample, e.EvalSample = plan.fit, plan.eval
	return e
}

// openIntake gives st the intake of its updates, checked by check and
// folded by fold, the round bounding norms by its own median times
// selfBound (0: not; round.NewIntake).
func (c *Coordinator) openIntake(st *roundState, check *validate.Round, selfBound float64, fold func(*fdxv1.Update, *validate.Values) error) {
	st.in = round.NewIntake(check, selfBound, round.Hooks{
		Fold: fold,
		FoldStream: func(ctx context.Context, d channel.Delivery) error {
			sr, ok := st.agg.(strategy.StreamRound)
			if !ok {
				return errors.New("the round's strategy does not stream")
			}
			return c.foldStreamed(ctx, st, sr, d)
		},
		Admitted: func(d channel.Delivery) { c.counted(st, d) },
		Rejected: func(d channel.Delivery, rej *rules.Rejection) { c.rejected(st, d, rej) },
		Evaluated: func(d channel.Delivery, n int64) {
			c.noteEval(st, d.Update.GetClientId(), n, d.Update.GetMetrics())
			c.obs.UpdateAccepted(d.Update.GetClientId(), d.Size)
		},
	}, c.log)
}

// counted records an admitted update in the round's record.
func (c *Coordinator) counted(st *roundState, d channel.Delivery) {
	u := d.Update
	st.rec.Examples += u.GetNumExamples()
	if t := u.GetTimings().GetModelReceived(); t != nil && u.GetBaseRound() == st.rec.Round {
		st.propagation = max(st.propagation, t.AsTime().Sub(st.published))
	}
	c.noteFit(st, u)
	c.obs.UpdateAccepted(u.GetClientId(), d.Size)
}

// rejected counts and logs a refused delivery.
func (c *Coordinator) rejected(st *roundState, d channel.Delivery, rej *rules.Rejection) {
	st.rec.Rejected[string(rej.Reason)]++
	c.rejections[string(rej.Reason)]++
	// One line per reason and claimed client per interval: every
	// client's first rejection is seen, a flood of one is not.
	c.warn.Warn(context.Background(), string(rej.Reason)+"\x00"+d.ClientID(), "update rejected",
		"round", st.rec.Round, "client_id", d.ClientID(), "reason", rej.Reason, "detail", rej.Detail)
	c.obs.UpdateRejected(rej.Reason, d.ClientID(), d.Size)
}

// close evaluates the aggregate and publishes it as the next model.
func (c *Coordinator) close(ctx context.Context, st *roundState, next [][]float32) (*fdxv1.GlobalModel, error) {
	rec := &st.rec
	r := rec.Round
	rec.AggregateMs = ms(st.finish + st.in.FoldTime())
	rec.Contributors = st.in.Check().Admitted()
	rec.Clients = len(rec.Contributors)
	rec.PropagationMs = ms(st.propagation)
	c.summarize(st)
	metrics := map[string]float64{}
	c.medianNorm = st.in.Check().MedianNorm()
	if err := c.job.Snap(next); err != nil {
		return nil, fmt.Errorf("round %d's model: %w", r, err)
	}
	m, ok, err := c.evaluate(r, next)
	if err != nil {
		return nil, fmt.Errorf("evaluate: %w", err)
	}
	if ok {
		rec.Accuracy, rec.Loss = m.Accuracy, m.Loss
		metrics = map[string]float64{"accuracy": m.Accuracy, "loss": m.Loss}
	}
	metrics[round.MetricMedianNorm] = c.medianNorm
	if c.cfg.Async != nil {
		c.lastBase = c.prune(st.in.Check().LastBase(), r+1)
	}
	state, err := c.state()
	if err != nil {
		return nil, fmt.Errorf("strategy state: %w", err)
	}
	if rep, ok := c.strat.(strategy.Reporter); ok && c.cfg.Async == nil {
		rec.Strategy = rep.Report()
		c.log.Info("strategy report", "round", r, "report", rec.Strategy)
	}
	nm := c.job.Record(r+1, next, rec.Contributors, metrics, state)
	if err := c.configure(nm); err != nil {
		return nil, err
	}
	if !nm.Final && c.reached(metrics) {
		// The target is met: this model ends the job, which ran r rounds.
		nm.Final, nm.NumRounds, nm.Deadline = true, r, nil
		c.log.Info("target accuracy reached", "round", r, "accuracy", rec.Accuracy, "target", c.cfg.TargetAccuracy)
	}
	pubStart := time.Now()
	if err := round.Publish(ctx, c.ch, nm); err != nil {
		return nil, err
	}
	rec.PublishMs = ms(time.Since(pubStart))
	rec.DurationMs = ms(time.Since(st.published))
	c.log.Info("round closed", "round", r, "clients", rec.Clients, "examples", rec.Examples,
		"accuracy", rec.Accuracy, "loss", rec.Loss, "duration_ms", rec.DurationMs,
		"aggregate_ms", rec.AggregateMs, "final", nm.GetFinal())
	c.obs.RoundClosed(*rec)
	return nm, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
