package job

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Spec describes a job independently of the channel it runs on (that is
// ChannelConfig). Zero fields take the defaults Resolve fills in, which
// the field comments give.
type Spec struct {
	// Job is the job id; it names the job's topics. Default "mnist".
	Job string
	// Seed is the job's seed: it draws the initial model, the data
	// partition (Data.Partition.Seed is always this), the clients'
	// shuffles and the round samples.
	Seed uint64

	Rounds   RoundsSpec
	Data     DataSpec
	Training TrainingSpec
	// Strategy is the server-side aggregation (default "fedavg"; in async
	// mode "fedbuff").
	Strategy strategy.Config
	Security SecuritySpec
	Sampling SamplingSpec
}

// RoundsSpec says when a round, or in async mode a version, closes and
// when the job ends.
type RoundsSpec struct {
	// NumRounds is the number of rounds (async: versions) before the
	// final model. Must be at least 1.
	NumRounds int
	// MinClients valid updates are needed to close a round. Must be at
	// least 1.
	MinClients int
	// TargetClients closes a round early when reached (0: MinClients).
	TargetClients int
	// RoundTimeout is each round's deadline (0: none).
	RoundTimeout time.Duration
	// OnShort is what a deadline passed with fewer than MinClients
	// updates does: coordinator.Wait (the default) or coordinator.Fail.
	OnShort coordinator.ShortRound
	// TargetAccuracy, when > 0, ends the job once a model's centralized
	// accuracy reaches it; that model is published as the final one.
	TargetAccuracy float64

	// Mode is ModeSync (rounds, the default) or ModeAsync (FedBuff: see
	// coordinator.Async). Strategy "fedbuff" implies ModeAsync, and
	// ModeAsync aggregates with FedBuff whatever the strategy's name,
	// which must be "fedbuff" or the default "fedavg".
	Mode string
	// BufferSize is async mode's K: a new version every K valid updates
	// (0: MinClients).
	BufferSize int
	// StalenessExponent is a in FedBuff's s(τ) = 1/(1+τ)^a: 0 means 0.5,
	// a negative value means 0 (no discount).
	StalenessExponent float64
	// MaxStaleness refuses async updates trained more than this many
	// versions back (0: no limit).
	MaxStaleness int
}

// DataSpec is the data set, how it is split into client shards, and what
// the aggregator and the clients evaluate on.
type DataSpec struct {
	// Dataset is the data set's name: "mnist" (the default) or
	// "synthetic".
	Dataset string
	// Partition splits the data set into client shards (default scheme
	// IID); its Seed is the job's Seed, and NumPartitions defaults to the
	// most clients a round waits for.
	Partition dataset.PartitionSpec
	// MaxExamples caps each client's shard (0: the whole shard).
	MaxExamples int
	// EvalExamples caps the test set the aggregator evaluates each model
	// on (0: all of it).
	EvalExamples int
	// Holdout is the fraction of each client's shard held out of
	// training for federated evaluation (0: DefaultHoldout when
	// Sampling.FractionEvaluate > 0, else none).
	Holdout float64
}

// TrainingSpec is what the clients train and how: it becomes the
// TrainConfig every model carries.
type TrainingSpec struct {
	// Model is the model kind (default model.KindLogReg).
	Model string
	// LearningRate is the clients' learning rate (0: 0.05).
	LearningRate float64
	// BatchSize is the clients' minibatch size (0: 10).
	BatchSize int
	// LocalEpochs is the clients' epochs per round (0: 1).
	LocalEpochs int
	// ProximalMu is FedProx's proximal term μ (0: off, or the fedprox
	// strategy's μ when the strategy is fedprox).
	ProximalMu float64
	// UpdateEncoding is how clients encode their updates: "float32" (the
	// default: local weights), "float16", "int8" (with a per-tensor
	// scale) or "topk:<fraction>" (the largest entries); all but float32
	// send the delta from the global model.
	UpdateEncoding string
	// ModelEncoding is how the aggregator publishes models: "float32" (the
	// default) or "float16", which halves every download and keeps the
	// global model on the float16 grid (TrainConfig.model_dtype).
	ModelEncoding string
}

// SecuritySpec is what the aggregator refuses besides malformed updates:
// clients it does not know and updates that move the model too far.
type SecuritySpec struct {
	// MaxNorm rejects updates with ||local - global|| above it (0: no
	// fixed bound).
	MaxNorm float64
	// NormFactor bounds each update's ||local - global|| by this many
	// times the previous round's median: 0 means
	// coordinator.DefaultNormFactor, a negative value turns it off.
	NormFactor float64
	// Allowed, when non-nil, is the set of client ids that may contribute;
	// others are rejected as unknown_client. It is also the population
	// the rounds sample.
	Allowed map[string]bool
}

// SamplingSpec is client sampling and federated evaluation, as Flower's
// flags mean them (sampling.go): FractionFit of the population trains in
// each round, at least Rounds.MinClients (min-fit-clients); FractionEvaluate
// of it, at least MinEvaluateClients, evaluates the round's model on the
// Data.Holdout fraction of its shard.
type SamplingSpec struct {
	// FractionFit is the fraction of the population asked to train each
	// round, in (0, 1] (0: 1, everyone).
	FractionFit float64
	// FractionEvaluate is the fraction of the population asked to
	// evaluate each round's model, in [0, 1] (0: no federated
	// evaluation).
	FractionEvaluate float64
	// MinEvaluateClients is the fewest clients asked to evaluate.
	MinEvaluateClients int
	// MinAvailableClients is the population size N, the ids "0".."N-1",
	// unless Security.Allowed names the clients (0: one client per data
	// partition).
	MinAvailableClients int
}

// The modes of a job.
const (
	ModeSync  = "sync"
	ModeAsync = "async"
)

// Async reports whether the spec describes an asynchronous job. It holds
// before defaults are applied, so a command line can act on it.
func (s Spec) Async() bool {
	return s.Rounds.Mode == ModeAsync || strings.EqualFold(strings.TrimSpace(s.Strategy.Name), "fedbuff")
}

// SpecError is the error Resolve returns for a spec it refuses.
type SpecError struct {
	// Field is the refused field's Go path in Spec, e.g.
	// "Rounds.MinClients", or a group's name when the fault lies in how
	// its fields go together.
	Field string
	// Err says what is wrong, in the words of the command line's flags.
	Err error
}

// Error is Err's message: it already names the field as a user knows it.
func (e *SpecError) Error() string { return e.Err.Error() }

func (e *SpecError) Unwrap() error { return e.Err }

func specErrorf(field, format string, args ...any) *SpecError {
	return &SpecError{Field: field, Err: fmt.Errorf(format, args...)}
}

// withDefaults returns s with its zero fields set to their defaults.
func (s Spec) withDefaults() Spec {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	r, d, t := &s.Rounds, &s.Data, &s.Training
	if s.Async() {
		r.Mode = ModeAsync
		if n := strings.ToLower(strings.TrimSpace(s.Strategy.Name)); n == "" || n == "fedavg" {
			s.Strategy.Name = "fedbuff"
		}
		if r.BufferSize == 0 {
			r.BufferSize = r.MinClients
		}
	}
	def(&r.Mode, ModeSync)
	def(&s.Job, "mnist")
	def(&t.Model, model.KindLogReg)
	def(&d.Dataset, "mnist")
	def(&d.Partition.Scheme, dataset.SchemeIID)
	def(&s.Strategy.Name, "fedavg")
	if r.OnShort == "" {
		r.OnShort = coordinator.Wait
	}
	if d.Partition.NumPartitions == 0 {
		d.Partition.NumPartitions = max(r.MinClients, r.TargetClients, 1)
	}
	d.Partition.Seed = s.Seed
	if t.LearningRate == 0 {
		t.LearningRate = 0.05
	}
	if t.BatchSize == 0 {
		t.BatchSize = 10
	}
	if t.LocalEpochs == 0 {
		t.LocalEpochs = 1
	}
	if s.Security.NormFactor == 0 {
		s.Security.NormFactor = coordinator.DefaultNormFactor
	}
	s.withSamplingDefaults()
	return s
}

// validate reports the first bad field of a spec withDefaults filled, as a
// *SpecError. A synchronous job's strategy is built to be checked, and
// returned so that it is built once.
func (s Spec) validate() (strategy.Strategy, error) {
	if err := rules.ValidateJob(s.Job); err != nil {
		return nil, &SpecError{Field: "Job", Err: fmt.Errorf("job: %w", err)}
	}
	r, d, t := s.Rounds, s.Data, s.Training
	switch {
	case r.MinClients < 1:
		return nil, specErrorf("Rounds.MinClients", "min clients %d: want at least 1", r.MinClients)
	case r.NumRounds < 1:
		return nil, specErrorf("Rounds.NumRounds", "rounds %d: want at least 1", r.NumRounds)
	case r.TargetClients != 0 && r.TargetClients < r.MinClients:
		return nil, specErrorf("Rounds.TargetClients", "target clients %d is below min clients %d", r.TargetClients, r.MinClients)
	case r.RoundTimeout < 0:
		return nil, specErrorf("Rounds.RoundTimeout", "round timeout %v is negative", r.RoundTimeout)
	case r.OnShort != coordinator.Wait && r.OnShort != coordinator.Fail:
		return nil, specErrorf("Rounds.OnShort", "on short round %q: want %q or %q", r.OnShort, coordinator.Wait, coordinator.Fail)
	case s.Security.MaxNorm < 0:
		return nil, specErrorf("Security.MaxNorm", "max norm %v is negative", s.Security.MaxNorm)
	case d.EvalExamples < 0:
		return nil, specErrorf("Data.EvalExamples", "eval examples %d is negative", d.EvalExamples)
	case r.TargetAccuracy < 0 || r.TargetAccuracy > 1:
		return nil, specErrorf("Rounds.TargetAccuracy", "target accuracy %v outside [0, 1]", r.TargetAccuracy)
	case r.Mode != ModeSync && r.Mode != ModeAsync:
		return nil, specErrorf("Rounds.Mode", "mode %q: want %q or %q", r.Mode, ModeSync, ModeAsync)
	}
	if r.Mode == ModeAsync {
		if err := s.validateAsync(); err != nil {
			err.Err = fmt.Errorf("async mode: %w", err.Err)
			return nil, err
		}
	}
	if _, err := UpdateDType(t.UpdateEncoding); err != nil {
		return nil, &SpecError{Field: "Training.UpdateEncoding", Err: err}
	}
	if _, err := ModelDType(t.ModelEncoding); err != nil {
		return nil, &SpecError{Field: "Training.ModelEncoding", Err: err}
	}
	if !model.Known(t.Model) {
		return nil, specErrorf("Training.Model", "model %q: want one of %v, %s (trained by Python clients) or %s<MB>", t.Model, model.Kinds(), model.KindCNN, model.KindSyntheticPrefix)
	}
	if err := d.Partition.Validate(); err != nil {
		return nil, &SpecError{Field: "Data.Partition", Err: fmt.Errorf("partition: %w", err)}
	}
	opt := model.TrainOptions{LearningRate: t.LearningRate, BatchSize: t.BatchSize, Epochs: t.LocalEpochs, ProximalMu: t.ProximalMu}
	if err := opt.Validate(); err != nil {
		return nil, &SpecError{Field: "Training", Err: fmt.Errorf("training options: %w", err)}
	}
	var strat strategy.Strategy
	if r.Mode == ModeSync {
		var err error
		if strat, err = strategy.New(s.Strategy); err != nil {
			return nil, &SpecError{Field: "Strategy", Err: fmt.Errorf("strategy: %w", err)}
		}
	}
	if err := s.validateSampling(); err != nil {
		return nil, err
	}
	return strat, nil
}

func (s Spec) validateAsync() *SpecError {
	r := s.Rounds
	switch {
	case !strings.EqualFold(strings.TrimSpace(s.Strategy.Name), "fedbuff"):
		return specErrorf("Strategy.Name", "strategy %q: async mode aggregates with fedbuff", s.Strategy.Name)
	case r.BufferSize < 1:
		return specErrorf("Rounds.BufferSize", "buffer size %d: want at least 1", r.BufferSize)
	case r.MaxStaleness < 0:
		return specErrorf("Rounds.MaxStaleness", "max staleness %d is negative", r.MaxStaleness)
	case r.RoundTimeout != 0:
		return &SpecError{Field: "Rounds.RoundTimeout", Err: errors.New("a round timeout has no meaning without rounds")}
	case r.TargetClients != 0:
		return &SpecError{Field: "Rounds.TargetClients", Err: errors.New("target clients has no meaning without rounds; set the buffer size")}
	}
	if err := s.asyncConfig().Validate(); err != nil {
		// The staleness exponent or the server learning rate.
		return &SpecError{Field: "Rounds", Err: err}
	}
	return nil
}

// asyncConfig is the coordinator's FedBuff configuration for an async spec.
func (s Spec) asyncConfig() *coordinator.Async {
	return &coordinator.Async{BufferSize: s.Rounds.BufferSize, Exponent: s.Rounds.StalenessExponent,
		MaxStaleness: int64(s.Rounds.MaxStaleness), ServerLR: s.Strategy.ServerLR}
}

// ModelDType maps a model encoding's name ("" is float32) to its dtype.
// There is no int8 model: it would put the global weights themselves on a
// 255-level grid per tensor (int8 is for updates, which are deltas).
func ModelDType(name string) (fdxv1.DType, error) {
	switch name {
	case "", "float32":
		return fdxv1.DType_DTYPE_FLOAT32, nil
	case "float16":
		return fdxv1.DType_DTYPE_FLOAT16, nil
	}
	return 0, fmt.Errorf("model encoding %q: want float32 or float16", name)
}

// UpdateDType maps an update encoding's name ("" is float32) to its dtype:
// float32, float16, int8, or topk:<fraction>, the fraction in (0, 1] of
// each tensor's entries a client sends (SPARSE_FLOAT32).
func UpdateDType(name string) (fdxv1.DType, error) {
	switch name {
	case "", "float32":
		return fdxv1.DType_DTYPE_FLOAT32, nil
	case "float16":
		return fdxv1.DType_DTYPE_FLOAT16, nil
	case "int8":
		return fdxv1.DType_DTYPE_INT8, nil
	}
	if f, ok := strings.CutPrefix(name, "topk:"); ok {
		if v, err := strconv.ParseFloat(f, 64); err == nil && v > 0 && v <= 1 {
			return fdxv1.DType_DTYPE_SPARSE_FLOAT32, nil
		}
		return 0, fmt.Errorf("update encoding %q: the top-k fraction must be in (0, 1], e.g. topk:0.01", name)
	}
	return 0, fmt.Errorf("update encoding %q: want float32, float16, int8 or topk:<fraction>", name)
}

// topKFraction is the fraction of a valid topk:<fraction> encoding, else 0.
func topKFraction(name string) float64 {
	f, ok := strings.CutPrefix(name, "topk:")
	if !ok {
		return 0
	}
	v, _ := strconv.ParseFloat(f, 64)
	return v
}
