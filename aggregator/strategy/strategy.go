// Package strategy implements the server-side aggregation strategies of a
// federated round, modelled on Flower's Strategy abstraction and known by
// Flower's names (see Names and STRATEGIES.md): FedAvg and FedProx, the
// server optimizers FedAvgM, FedAdam, FedYogi and FedAdagrad, the robust
// rules coordinate-wise median, trimmed mean, Krum, Multi-Krum and Bulyan,
// and DP-FedAvg with fixed or adaptive clipping (its privacy accounting is
// in the subpackage privacy).
//
// Every strategy returns a bit-identical model whatever order the updates of
// a round arrive in, because the Kafka and the gRPC channel deliver clients
// in different, random orders and must yield the same model. The averaging
// strategies stream: they fold each update into an exact fixed-point
// accumulator (see accumulator.Accumulator) and hold O(model) memory however many
// clients report. An update the validator passed (Update.Checked) is
// folded from the message's own bytes, or decoded a block at a time, never
// copied whole and never checked twice (accumulator.Accumulator.AddChecked). The robust
// strategies must see all updates at once; they hold copies and sort them
// by client id, or per coordinate by value, before computing anything.
//
// Server optimizer state (momentum, Adam moments) survives a restart through
// Strategy.State and Strategy.Restore, so an aggregator resumed from its
// checkpoint continues bit-identically.
package strategy

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/validate"
)

// Errors a Round wraps. A Round trusts its updates (package validate
// checked them), so its Add fails only on misuse. The first five are the
// accumulator's (an accumulator.Accumulator, a primitive usable on its own, checks
// what it is given), named here too so that callers of a Round need not
// know which layer refused.
var (
	ErrShape       = accumulator.ErrShape
	ErrNumExamples = accumulator.ErrNumExamples
	ErrNonFinite   = accumulator.ErrNonFinite
	ErrOverflow    = accumulator.ErrOverflow
	ErrNoUpdates   = accumulator.ErrNoUpdates
	// ErrTooFewUpdates: a robust strategy needs more updates than it has
	// (Krum needs more than 2f+2); the round stays open for more.
	ErrTooFewUpdates = errors.New("too few updates")
	// ErrRoundFinished: the round was already finished (a bug in the caller;
	// unrelated to channel.ErrRoundClosed, which a client gets for an
	// update to a superseded round).
	ErrRoundFinished = errors.New("round already finished")
	// ErrStaleRound: the strategy's optimizer state moved on (another round
	// finished, or state was restored) after this round began; finishing it
	// would apply a step to the wrong state.
	ErrStaleRound = errors.New("optimizer state changed since the round began")
)

// Reporter is implemented by strategies with per-round figures worth
// printing, such as the DP strategies' noise multiplier, clip norm and
// (ε, δ). Report describes the last round that finished (or the state
// before the first one); the keys are stable snake_case names. A caller
// type-asserts a Strategy to Reporter.
type Reporter interface {
	Report() map[string]float64
}

// Update is one client's contribution to a round: its full local weights
// (not a delta from the global model) and the number of examples it trained
// on, which weighs it in the averaging strategies. Updates come from
// package validate: one per client and round, with the round's shapes,
// finite values, 1 ≤ NumExamples ≤ rules.MaxWeight and every
// |NumExamples × value| below 2^rules.MaxTermLog2. A strategy relies on
// that and does not check it again.
type Update struct {
	ClientID    string
	NumExamples int64
	Params      [][]float32
	// Checked, when set, holds the values as package validate passed
	// them, and is read instead of Params, which may be nil. The averaging strategies then fold
	// from it without checking the values again, a block at a time: full
	// float32 weights straight from the message's bytes, a delta or a
	// float16 or int8 update decoded block by block, never copied whole.
	// The other strategies take Checked.Params(). Only the validator
	// makes a *validate.Values, so holding one is proof of its checks.
	Checked *validate.Values
}

// Strategy turns the updates of a round into the next global model
// (Begin, Flower's aggregate_fit), and decides the rest of the round as
// its Policy. Rounds run one at a time: a stateful strategy refuses to
// finish a round begun before another round finished (ErrStaleRound).
type Strategy interface {
	Policy
	// Name returns the name New knows the strategy by.
	Name() string
	// Begin starts a round from the current global parameters, which fix
	// the shapes every update must have. The strategy keeps its own copy
	// where it needs the values.
	Begin(global [][]float32) (Round, error)
	// State serializes the server-side optimizer state (momentum, Adam
	// moments, round counter) so that an aggregator restarted from a
	// checkpoint continues bit-identically. Stateless strategies return nil.
	State() ([]byte, error)
	// Restore replaces the optimizer state with one State returned. A
	// stateless strategy accepts only an empty state.
	Restore(state []byte) error
}

// Round collects the updates of one round. It is used by one goroutine,
// the coordinator's round loop.
type Round interface {
	// Add adds a validated update (see Update). Streaming strategies fold
	// the parameters in at once, the others copy them: the caller may reuse
	// u.Params.
	Add(u Update) error
	// Count returns the number of updates accepted so far.
	Count() int
	// Finish returns the new global parameters and commits the optimizer
	// state. It fails with ErrNoUpdates if no update was added; on any
	// error the round stays open (except ErrStaleRound, which is final).
	// After a successful Finish the round accepts nothing more.
	Finish() ([][]float32, error)
}

// Config selects and parameterizes a strategy. A zero field means the
// strategy's default; fields a strategy does not use are ignored, so one
// Config can carry every flag of a command line. The defaults are Flower's
// where Flower has one:
//
//	fedprox           ProximalMu 0.01 (Flower requires it; see below)
//	fedavgm           ServerLR 1, Momentum 0.9 (Flower's 0 would be plain FedAvg)
//	fedadam           ServerLR 0.1,  Beta1 0.9, Beta2 0.99, Tau 1e-9
//	fedyogi           ServerLR 0.01, Beta1 0.9, Beta2 0.99, Tau 1e-3
//	fedadagrad        ServerLR 0.1,  Beta1 0 (no momentum), Tau 1e-9
//	fedtrimmedavg     TrimFraction 0.2
//	krum, bulyan      ByzantineF 0
//	multikrum         ByzantineF 0, MultiKrumM n − f
//	dpfedavg-fixed    ClipNorm 1, NoiseMultiplier 1, SamplingRate 1, Delta 1e-5, Seed 0
//	dpfedavg-adaptive ClipNorm 0.1 (initial), NoiseMultiplier 1,
//	                  TargetQuantile 0.5, ClipLR 0.2, ClippedCountStddev n/20,
//	                  SamplingRate 1, Delta 1e-5, Seed 0
//
// Flower requires a clip norm and a noise multiplier for its DP wrappers and
// μ for FedProx; here they have defaults so that every name constructs from
// its name alone, but a real run should set them. μ's default 0.01 is the
// middle of the grid {0.001, 0.01, 0.1, 1} of Li et al. 2020.
//
// Since zero means default, a zero Momentum, Beta1 (for FedAdam and FedYogi),
// Beta2, ProximalMu, NoiseMultiplier or TargetQuantile cannot be requested;
// FedAvgM without momentum and with a server rate of 1 is FedAvg, FedProx
// with μ = 0 is FedAvg, and DP without noise is not DP.
type Config struct {
	// Name is one of Names(); empty means "fedavg".
	Name string
	// ServerLR is the server learning rate: η in FedAdam, FedYogi and
	// FedAdagrad, the SGD step of FedAvgM.
	ServerLR float64
	// Momentum is FedAvgM's server momentum β, in (0, 1).
	Momentum float64
	// Beta1 and Beta2 are the first and second moment decays of FedAdam and
	// FedYogi (FedAdagrad uses Beta1 only), in (0, 1).
	Beta1, Beta2 float64
	// Tau is the adaptivity constant τ added to √v, > 0.
	Tau float64
	// TrimFraction is the fraction cut from each end per coordinate by
	// "trimmedmean" (Flower's beta), in (0, 0.5).
	TrimFraction float64
	// ByzantineF is the number f of Byzantine clients Krum tolerates, ≥ 0.
	ByzantineF int
	// MultiKrumM is the number of updates "multikrum" averages; 0 means
	// n − f, the most its guarantee allows.
	MultiKrumM int

	// ProximalMu is FedProx's μ ≥ 0 (> 0 for "fedprox"). Only "fedprox"
	// reads it, and only to hand it back through Proximal: the proximal
	// term is computed by the clients.
	ProximalMu float64

	// Seed seeds the DP strategies' Gaussian noise. With the round counter
	// it determines every noise value, so a run (and a resumed run) is
	// reproducible bit for bit. Anyone who knows it can remove the noise:
	// see dp.go.
	Seed uint64
	// ClipNorm is the L2 bound S on each client's update delta (the fixed
	// bound of "dpfedavg-fixed", the initial one of "dpfedavg-adaptive"),
	// in (0, 2^64].
	ClipNorm float64
	// NoiseMultiplier is z: the noise on the sum of clipped deltas has
	// standard deviation z·S. For "dpfedavg-adaptive" it is the effective
	// multiplier of the whole mechanism (Andrew et al.), which the
	// accountant uses; the delta noise is a little larger.
	NoiseMultiplier float64
	// TargetQuantile is γ of adaptive clipping: the fraction of updates
	// the clip norm should leave unclipped, in (0, 1).
	TargetQuantile float64
	// ClipLR is η_C of adaptive clipping, the geometric step of the clip
	// norm: S ← S·exp(−η_C·(b̃ − γ)), b̃ the noised unclipped fraction.
	ClipLR float64
	// ClippedCountStddev is σ_b of adaptive clipping, the standard
	// deviation of the noise on the count of unclipped updates; 0 means
	// n/20 for a round of n updates (Flower's and Andrew et al.'s default).
	// It must exceed NoiseMultiplier/2.
	ClippedCountStddev float64
	// SamplingRate is the probability q with which each client takes part
	// in a round (Flower's fraction-fit), in (0, 1]; the accountant uses it.
	SamplingRate float64
	// Delta is the δ of the reported (ε, δ), in (0, 1).
	Delta float64
}

// Defaults, chosen to match Flower's (flwr.server.strategy) where Flower
// has a sensible one, so that results compare with the tool most users know.
const (
	defaultAvgMLR       = 1.0
	defaultAvgMMomentum = 0.9 // Hsu et al.; Flower's 0.0 would make FedAvgM plain FedAvg
	defaultAdamLR       = 1e-1
	defaultAdamTau      = 1e-9
	defaultYogiLR       = 1e-2
	defaultYogiTau      = 1e-3
	defaultAdagradLR    = 1e-1
	defaultAdagradTau   = 1e-9
	defaultBeta1        = 0.9
	defaultBeta2        = 0.99
	defaultTrimFraction = 0.2
	defaultStrategyName = "fedavg"
	defaultProximalMu   = 0.01 // middle of Li et al.'s grid; Flower has no default
)

// Names returns the strategy names New accepts, in a fixed order: Flower's
// names, then the short aliases "median" (= "fedmedian") and "trimmedmean"
// (= "fedtrimmedavg"). "fedbuff" is not a strategy of rounds but the
// asynchronous mode; it is not among them.
func Names() []string {
	return []string{
		"fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi",
		"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
		"dpfedavg-fixed", "dpfedavg-adaptive",
		"median", "trimmedmean",
	}
}

// New returns the strategy cfg names, with cfg's zero fields replaced by
// defaults. Names are matched case-insensitively.
func New(cfg Config) (Strategy, error) {
	name := strings.ToLower(strings.TrimSpace(cfg.Name))
	if name == "" {
		name = defaultStrategyName
	}
	switch name {
	case "fedavg":
		return fedAvg{}, nil
	case "fedprox":
		mu, err := positive("ProximalMu", cfg.ProximalMu, defaultProximalMu)
		if err != nil {
			return nil, wrapConfig(name, err)
		}
		return fedProx{mu: mu}, nil
	case "fedavgm":
		lr, err := positive("ServerLR", cfg.ServerLR, defaultAvgMLR)
		if err != nil {
			return nil, wrapConfig(name, err)
		}
		mom, err := unitInterval("Momentum", cfg.Momentum, defaultAvgMMomentum)
		if err != nil {
			return nil, wrapConfig(name, err)
		}
		return newFedOpt(name, kindAvgM, optParams{lr: lr, momentum: mom}), nil
	case "fedadam", "fedyogi", "fedadagrad":
		return newAdaptive(name, cfg)
	case "median", "fedmedian":
		return &robust{name: name, kind: kindMedian}, nil
	case "trimmedmean", "fedtrimmedavg":
		trim := cfg.TrimFraction
		if trim == 0 {
			trim = defaultTrimFraction
		}
		if !(trim > 0 && trim < 0.5) {
			return nil, wrapConfig(name, fmt.Errorf("TrimFraction %v outside (0, 0.5)", cfg.TrimFraction))
		}
		return &robust{name: name, kind: kindTrimmedMean, trim: trim}, nil
	case "krum", "multikrum", "bulyan":
		if cfg.ByzantineF < 0 {
			return nil, wrapConfig(name, fmt.Errorf("ByzantineF %d is negative", cfg.ByzantineF))
		}
		if name == "bulyan" {
			return &robust{name: name, kind: kindBulyan, f: cfg.ByzantineF}, nil
		}
		r := &robust{name: name, kind: kindKrum, f: cfg.ByzantineF, m: 1}
		if name == "multikrum" {
			if cfg.MultiKrumM < 0 {
				return nil, wrapConfig(name, fmt.Errorf("MultiKrumM %d is negative", cfg.MultiKrumM))
			}
			r.m = cfg.MultiKrumM
		}
		return r, nil
	case "dpfedavg-fixed", "dpfedavg-adaptive":
		return newDPFedAvg(name, cfg)
	case "fedbuff":
		return nil, fmt.Errorf("strategy: fedbuff is the asynchronous mode, not a strategy of rounds (valid strategies: %s)", strings.Join(Names(), ", "))
	default:
		return nil, fmt.Errorf("strategy: unknown strategy %q (valid: %s)", cfg.Name, strings.Join(Names(), ", "))
	}
}

func newAdaptive(name string, cfg Config) (Strategy, error) {
	kind, lr, tau, beta1 := kindAdam, defaultAdamLR, defaultAdamTau, defaultBeta1
	switch name {
	case "fedyogi":
		kind, lr, tau = kindYogi, defaultYogiLR, defaultYogiTau
	case "fedadagrad":
		// Flower's FedAdagrad has no momentum (beta_1 = 0); Beta1 > 0 adds it
		// as in Reddi et al.'s Algorithm 2.
		kind, lr, tau, beta1 = kindAdagrad, defaultAdagradLR, defaultAdagradTau, 0
	}
	var p optParams
	var err error
	if p.lr, err = positive("ServerLR", cfg.ServerLR, lr); err != nil {
		return nil, wrapConfig(name, err)
	}
	if p.tau, err = positive("Tau", cfg.Tau, tau); err != nil {
		return nil, wrapConfig(name, err)
	}
	if p.beta1, err = unitInterval("Beta1", cfg.Beta1, beta1); err != nil {
		return nil, wrapConfig(name, err)
	}
	if kind != kindAdagrad {
		if p.beta2, err = unitInterval("Beta2", cfg.Beta2, defaultBeta2); err != nil {
			return nil, wrapConfig(name, err)
		}
	}
	return newFedOpt(name, kind, p), nil
}

func wrapConfig(name string, err error) error {
	return fmt.Errorf("strategy %s: config: %w", name, err)
}

// positive returns v, or def if v is zero, and requires a finite v > 0.
func positive(field string, v, def float64) (float64, error) {
	if v == 0 {
		return def, nil
	}
	if !(v > 0) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%s %v must be positive and finite", field, v)
	}
	return v, nil
}

// unitInterval returns v, or def if v is zero, and requires v in (0, 1).
func unitInterval(field string, v, def float64) (float64, error) {
	if v == 0 {
		return def, nil
	}
	if !(v > 0 && v < 1) {
		return 0, fmt.Errorf("%s %v outside (0, 1)", field, v)
	}
	return v, nil
}

// roundImpl is what a strategy adds to the bookkeeping every round shares.
type roundImpl interface {
	// add takes a validated update.
	add(u Update) error
	// finish aggregates; it is called with at least one update.
	finish() ([][]float32, error)
}

// round does the bookkeeping common to all strategies. It checks nothing
// about an update: package validate is the one boundary that does, and the
// coordinator keeps the one set of clients seen in a round.
type round struct {
	name  string
	count int
	done  bool
	impl  roundImpl
}

func newRound(name string, _ []int, impl roundImpl) *round {
	return &round{name: name, impl: impl}
}

func (r *round) Add(u Update) error {
	if r.done {
		return fmt.Errorf("strategy %s: update from %q: %w", r.name, u.ClientID, ErrRoundFinished)
	}
	if err := r.impl.add(u); err != nil {
		return fmt.Errorf("strategy %s: update from %q: %w", r.name, u.ClientID, err)
	}
	r.count++
	return nil
}

func (r *round) Count() int { return r.count }

func (r *round) Finish() ([][]float32, error) {
	if r.done {
		return nil, fmt.Errorf("strategy %s: finish: %w", r.name, ErrRoundFinished)
	}
	if r.count == 0 {
		return nil, fmt.Errorf("strategy %s: finish: %w", r.name, ErrNoUpdates)
	}
	out, err := r.impl.finish()
	if err != nil {
		return nil, fmt.Errorf("strategy %s: finish with %d updates: %w", r.name, r.count, err)
	}
	r.done = true
	r.impl = nil // release what the round held
	return out, nil
}

// checkGlobal validates the parameters a round begins from and returns
// their tensor sizes.
func checkGlobal(name string, global [][]float32) ([]int, error) {
	if len(global) == 0 {
		return nil, fmt.Errorf("strategy %s: begin: global model has no tensors", name)
	}
	if err := accumulator.CheckFinite(global); err != nil {
		return nil, fmt.Errorf("strategy %s: begin: global model: %w", name, err)
	}
	sizes := make([]int, len(global))
	for i, t := range global {
		sizes[i] = len(t)
	}
	return sizes, nil
}

// flatten copies params, whose shapes were checked, into one slice.
func flatten(params [][]float32, total int) []float32 {
	out := make([]float32, 0, total)
	for _, t := range params {
		out = append(out, t...)
	}
	return out
}

func sum(sizes []int) int {
	n := 0
	for _, s := range sizes {
		n += s
	}
	return n
}

// fedAvg is FedAvg (McMahan et al. 2017): the example-weighted mean of the
// clients' weights, computed exactly by an accumulator.Accumulator.
type fedAvg struct{ Default }

func (fedAvg) Name() string { return "fedavg" }

func (fedAvg) Begin(global [][]float32) (Round, error) { return beginMean("fedavg", global) }

func beginMean(name string, global [][]float32) (Round, error) {
	sizes, err := checkGlobal(name, global)
	if err != nil {
		return nil, err
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, fmt.Errorf("strategy %s: begin: %w", name, err)
	}
	return newRound(name, sizes, meanRound{acc}), nil
}

func (fedAvg) State() ([]byte, error) { return nil, nil }

func (fedAvg) Restore(state []byte) error { return restoreStateless("fedavg", state) }

// fedProx is FedProx (Li et al. 2020, "Federated Optimization in
// Heterogeneous Networks"). Its server step is FedAvg's; what differs is the
// clients' objective, which adds μ/2·‖w − w_global‖². As in Flower, the
// strategy only carries μ to the train config (see Proximal).
type fedProx struct {
	Default
	mu float64
}

func (fedProx) Name() string { return "fedprox" }

func (fedProx) Begin(global [][]float32) (Round, error) { return beginMean("fedprox", global) }

func (fedProx) State() ([]byte, error) { return nil, nil }

func (fedProx) Restore(state []byte) error { return restoreStateless("fedprox", state) }

// ConfigureFit adds the proximal term's μ to the clients' training
// settings, unless the job set its own.
func (p fedProx) ConfigureFit(_ int64, job Plan) Plan {
	if job.ProximalMu == 0 {
		job.ProximalMu = p.mu
	}
	return job
}

func restoreStateless(name string, state []byte) error {
	if len(state) != 0 {
		return fmt.Errorf("strategy %s: restore: stateless strategy given %d bytes of state", name, len(state))
	}
	return nil
}

// meanRound streams updates into an accumulator.Accumulator and returns their mean.
type meanRound struct{ acc *accumulator.Accumulator }

func (m meanRound) add(u Update) error { return addTo(m.acc, u) }

func (m meanRound) finish() ([][]float32, error) { return m.acc.Mean() }
