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

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
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
	// NormFactor k bounds every update's ||local - global|| by k times the
	// previous round's median (0: off); with MaxNorm too, the smaller
	// bound holds. See DefaultNormFactor.
	NormFactor  float64
	MaxExamples int64
	// ExamplesOf, when set, is each client's shard size: no client may
	// claim to have trained on more.
	ExamplesOf     func(clientID string) (int64, error)
	MaxUpdateBytes int
	// Allowed, when non-nil, restricts which client ids may contribute.
	Allowed map[string]bool
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
	case c.TargetAccuracy < 0 || c.TargetAccuracy > 1:
		return fmt.Errorf("target accuracy %v outside [0, 1]", c.TargetAccuracy)
	}
	switch d := c.Train.GetModelDtype(); d {
	case fdxv1.DType_DTYPE_UNSPECIFIED, fdxv1.DType_DTYPE_FLOAT32, fdxv1.DType_DTYPE_FLOAT16:
	default:
		// An int8 model would put the global weights themselves on a
		// 255-level grid per tensor; int8 is for updates (deltas).
		return fmt.Errorf("model encoding %v: want float32 or float16", d)
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

// metricMedianNorm carries a round's median update norm in the next
// model's metrics, so that a restarted aggregator keeps the norm bound.
const metricMedianNorm = "update_norm_median"

// Evaluator scores global parameters on held-out data.
type Evaluator func(params [][]float32) (model.Metrics, error)

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
	eval       Evaluator
	obs        Observer
	log        *slog.Logger
	specs      []tensor.Spec
	rejected   map[string]int64

	// lastBase is async mode's duplicate guard (validate.Async.LastBase).
	lastBase map[string]int64
	plan     *roundPlan // the last round planned
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
	if cfg.Async == nil && strat == nil {
		return nil, errors.New("job config: no strategy")
	}
	specs, err := model.SpecsFor(cfg.Train.GetModel(), cfg.InDim, cfg.Classes)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if obs == nil {
		obs = NopObserver{}
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
	latest, err := c.ch.Latest(ctx, c.restorable)
	if err != nil {
		return nil, nil, err
	}
	if latest != nil {
		params, err := tensor.Decode(latest.GetParams(), c.specs)
		if err != nil {
			return nil, nil, fmt.Errorf("restore round %d: %w", latest.GetRound(), err)
		}
		if err := c.restoreState(latest.GetStrategyState()); err != nil {
			return nil, nil, fmt.Errorf("restore round %d strategy state: %w", latest.GetRound(), err)
		}
		res.Resumed = latest.GetRound()
		c.medianNorm = latest.GetMetrics()[metricMedianNorm]
		c.log.Info("resumed from checkpoint", "round", latest.GetRound(), "final", latest.GetFinal(),
			"contributors", latest.GetNumContributors())
		return latest, params, nil
	}
	net, err := model.New(c.cfg.Train.GetModel(), c.cfg.InDim, c.cfg.Classes, c.cfg.Train.GetSeed())
	if err != nil {
		return nil, nil, err
	}
	params := net.Params()
	if err := c.snap(params); err != nil {
		return nil, nil, fmt.Errorf("initial model: %w", err)
	}
	metrics := map[string]float64{}
	if c.eval != nil {
		m, err := c.eval(params)
		if err != nil {
			return nil, nil, fmt.Errorf("evaluate initial model: %w", err)
		}
		res.Initial = m
		metrics = map[string]float64{"accuracy": m.Accuracy, "loss": m.Loss}
	}
	state, err := c.state()
	if err != nil {
		return nil, nil, fmt.Errorf("strategy state: %w", err)
	}
	m := c.model(1, params, nil, metrics, state)
	if err := c.configure(m); err != nil {
		return nil, nil, err
	}
	if err := c.publish(ctx, m); err != nil {
		return nil, nil, err
	}
	c.log.Info("job started", "model", c.cfg.Train.GetModel(), "params", net.NumParams(),
		"rounds", c.cfg.NumRounds, "minclients", c.cfg.MinClients, "async", c.cfg.Async != nil, "accuracy", metrics["accuracy"])
	return m, params, nil
}

// normBound is the open round's bound on ||local - global||: MaxNorm, or
// NormFactor times the last round's median, whichever is smaller; 0 for
// none (the first round, without MaxNorm).
func (c *Coordinator) normBound() float64 {
	b := c.cfg.MaxNorm
	if k := c.cfg.NormFactor * c.medianNorm; k > 0 && (b == 0 || k < b) {
		b = k
	}
	return b
}

// restorable accepts a checkpoint this job can resume from: its own, with
// a round inside the job and the job's tensor shapes. The channel walks
// back past records that fail (a forged or damaged model on the topic).
func (c *Coordinator) restorable(m *fdxv1.GlobalModel) error {
	if err := rules.CheckModel(m, c.cfg.Job); err != nil {
		return err
	}
	if r := m.GetRound(); r > int64(c.cfg.NumRounds)+1 {
		return fmt.Errorf("model round %d is past this job's final round %d", r, c.cfg.NumRounds+1)
	}
	if _, err := tensor.Decode(m.GetParams(), c.specs); err != nil {
		return fmt.Errorf("model round %d: %w", m.GetRound(), err)
	}
	return nil
}

// snap puts a new global model on the grid of the job's model encoding,
// before it is evaluated, published or used as the next round's global:
// the model clients decode is then the aggregator's own, value for value
// (see TrainConfig.model_dtype).
func (c *Coordinator) snap(params [][]float32) error {
	if c.cfg.Train.GetModelDtype() != fdxv1.DType_DTYPE_FLOAT16 {
		return nil
	}
	if err := tensor.SnapHalf(params); err != nil {
		return fmt.Errorf("float16 model encoding: %w", err)
	}
	return nil
}

// model builds the record of a model that snap has put on its grid.
func (c *Coordinator) model(round int64, params [][]float32, contributors []string, metrics map[string]float64, state []byte) *fdxv1.GlobalModel {
	now := time.Now()
	ts := tensor.Encode(params, c.specs)
	if c.cfg.Train.GetModelDtype() == fdxv1.DType_DTYPE_FLOAT16 {
		// Validate admitted only float32 and float16.
		ts, _ = tensor.EncodeAs(params, c.specs, fdxv1.DType_DTYPE_FLOAT16)
	}
	m := &fdxv1.GlobalModel{
		Job:           c.cfg.Job,
		Round:         round,
		Params:        ts,
		TrainConfig:   c.cfg.Train,
		Final:         round > int64(c.cfg.NumRounds),
		PublishedAt:   timestamppb.New(now),
		Metrics:       metrics,
		StrategyState: state,
		NumRounds:     int64(c.cfg.NumRounds),
		MinClients:    int32(c.cfg.MinClients),
	}
	rules.SetContributors(m, contributors)
	if c.cfg.RoundTimeout > 0 && !m.Final {
		m.Deadline = timestamppb.New(now.Add(c.cfg.RoundTimeout))
	}
	return m
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
	check     *validate.Round
	published time.Time
	deadline  time.Time // zero: none
	// pastDeadline: the deadline passed, so the round closes with
	// MinClients updates instead of TargetClients, and waits without one.
	pastDeadline bool
	// needMore is the count a strategy asked for (Krum needs more than
	// 2f+2 updates) after refusing to finish with fewer.
	needMore    int
	propagation time.Duration
	aggregate   time.Duration // folding and finishing

	// fold adds a validated update's values to the aggregate. The values
	// may be read in place from u (validate.Values): nothing writes them.
	fold    func(u *fdxv1.Update, vals *validate.Values) error
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
		rec: RoundRecord{Round: r, Rejected: map[string]int64{}},
		agg: agg,
		fold: func(u *fdxv1.Update, vals *validate.Values) error {
			return agg.Add(strategy.Update{ClientID: u.GetClientId(), NumExamples: u.GetNumExamples(), Checked: vals})
		},
		check: validate.NewRound(validate.Expect{
			Job: c.cfg.Job, Round: r, Specs: c.specs, Global: params,
			MaxNorm: c.normBound(), MaxExamples: c.cfg.MaxExamples, MaxBytes: c.cfg.MaxUpdateBytes,
			Allowed: c.cfg.Allowed, ExamplesOf: c.cfg.ExamplesOf, Sample: plan.fit, EvalSample: plan.eval,
		}),
		published: cur.GetPublishedAt().AsTime(),
		plan:      plan,
	}
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
		for st.check.Count() < st.target(c.cfg) || c.evaluationsDue(st) {
			d, err := c.receive(ctx, st)
			switch {
			case err == nil:
				if err := c.take(ctx, st, d); err != nil {
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
		st.aggregate += time.Since(start)
		if errors.Is(err, strategy.ErrTooFewUpdates) {
			// A robust strategy needs more updates than it has to tolerate
			// its assumed attackers: keep collecting, past any deadline.
			st.needMore = st.check.Count() + 1
			c.log.Warn("strategy needs more updates; round stays open", "round", st.rec.Round, "clients", st.check.Count(), "err", err)
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
	n := st.check.Count()
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

// take validates a delivery, has the channel accept it, and folds it. Only
// a strategy refusing a validated update is an error: that is a bug, and
// the job stops rather than publish a model without it.
func (c *Coordinator) take(ctx context.Context, st *roundState, d channel.Delivery) error {
	if d.Err == nil && d.Update.GetEvaluateOnly() {
		c.takeEvaluation(st, d)
		return nil
	}
	if d.Stream != nil && d.Rejection == nil && d.Err == nil {
		return c.takeStreamed(ctx, st, d)
	}
	vals, rej := c.validate(st, d)
	if rej == nil {
		rej = c.accept(st, d)
	}
	if rej != nil {
		c.reject(st, d, rej)
		return nil
	}
	u := d.Update
	start := time.Now()
	err := st.fold(u, vals)
	st.aggregate += time.Since(start)
	if err != nil {
		return fmt.Errorf("aggregate the validated update of %q: %w", u.GetClientId(), err)
	}
	c.admitted(st, d)
	return nil
}

// admitted counts a folded update in the round and answers its sender.
func (c *Coordinator) admitted(st *roundState, d channel.Delivery) {
	u := d.Update
	st.check.Admit(u)
	st.rec.Examples += u.GetNumExamples()
	if t := u.GetTimings().GetModelReceived(); t != nil && u.GetBaseRound() == st.rec.Round {
		st.propagation = max(st.propagation, t.AsTime().Sub(st.published))
	}
	c.noteFit(st, u)
	c.obs.UpdateAccepted(u.GetClientId(), d.Size)
	d.Reply(nil)
}

// accept makes a validated delivery durable (channel.Delivery.Accept), or
// says why it could not: an update is folded only once accepted.
func (c *Coordinator) accept(st *roundState, d channel.Delivery) *rules.Rejection {
	if err := d.Accept(); err != nil {
		c.log.Error("update could not be stored", "round", st.rec.Round, "client_id", d.ClientID(), "err", err)
		return rules.Reject(rules.NotStored, "%v", err)
	}
	return nil
}

// reject counts, logs and answers a refused delivery.
func (c *Coordinator) reject(st *roundState, d channel.Delivery, rej *rules.Rejection) {
	st.rec.Rejected[string(rej.Reason)]++
	c.rejected[string(rej.Reason)]++
	c.log.Warn("update rejected", "round", st.rec.Round, "client_id", d.ClientID(), "reason", rej.Reason, "detail", rej.Detail)
	c.obs.UpdateRejected(rej.Reason, d.ClientID(), d.Size)
	d.Reply(rej)
}

func (c *Coordinator) validate(st *roundState, d channel.Delivery) (*validate.Values, *rules.Rejection) {
	if d.Rejection != nil {
		// The transport's own verdict, with or without an update (a
		// chunked transfer it dropped has none).
		return nil, d.Rejection
	}
	if d.Err != nil || d.Update == nil {
		return nil, rules.Reject(rules.Undecodable, "%v", d.Err)
	}
	return st.check.CheckValues(d.Update, d.Size)
}

// close evaluates the aggregate and publishes it as the next model.
func (c *Coordinator) close(ctx context.Context, st *roundState, next [][]float32) (*fdxv1.GlobalModel, error) {
	rec := &st.rec
	r := rec.Round
	rec.AggregateMs = ms(st.aggregate)
	rec.Contributors = st.check.Admitted()
	rec.Clients = len(rec.Contributors)
	rec.PropagationMs = ms(st.propagation)
	c.summarize(st)
	metrics := map[string]float64{}
	c.medianNorm = st.check.MedianNorm()
	if err := c.snap(next); err != nil {
		return nil, fmt.Errorf("round %d's model: %w", r, err)
	}
	if c.eval != nil {
		m, err := c.eval(next)
		if err != nil {
			return nil, fmt.Errorf("evaluate: %w", err)
		}
		rec.Accuracy, rec.Loss = m.Accuracy, m.Loss
		metrics = map[string]float64{"accuracy": m.Accuracy, "loss": m.Loss}
	}
	metrics[metricMedianNorm] = c.medianNorm
	if c.cfg.Async != nil {
		c.lastBase = c.prune(st.check.LastBase(), r+1)
	}
	state, err := c.state()
	if err != nil {
		return nil, fmt.Errorf("strategy state: %w", err)
	}
	if rep, ok := c.strat.(strategy.Reporter); ok && c.cfg.Async == nil {
		rec.Strategy = rep.Report()
		c.log.Info("strategy report", "round", r, "report", rec.Strategy)
	}
	nm := c.model(r+1, next, rec.Contributors, metrics, state)
	if err := c.configure(nm); err != nil {
		return nil, err
	}
	if !nm.Final && c.reached(metrics) {
		// The target is met: this model ends the job, which ran r rounds.
		nm.Final, nm.NumRounds, nm.Deadline = true, r, nil
		c.log.Info("target accuracy reached", "round", r, "accuracy", rec.Accuracy, "target", c.cfg.TargetAccuracy)
	}
	pubStart := time.Now()
	if err := c.publish(ctx, nm); err != nil {
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

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
