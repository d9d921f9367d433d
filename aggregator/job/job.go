// Package job wires one federated job together: its Spec (what to train
// and how rounds close), the channel server it runs on (OpenChannel: Kafka,
// optionally on an embedded broker, or gRPC), the strategy, the centralized
// evaluation and the round coordinator. The aggregator binary, its tests and
// the evaluation harness all start jobs through it.
package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Spec describes a job independently of the channel it runs on. Zero
// fields take the defaults WithDefaults fills in.
type Spec struct {
	Job        string
	NumRounds  int
	MinClients int
	// TargetClients closes a round early when reached (0: MinClients).
	TargetClients int
	RoundTimeout  time.Duration
	OnShort       coordinator.ShortRound

	Model   string
	Dataset string
	// Partition splits the data set into client shards; its Seed is the
	// job's Seed, and NumPartitions defaults to the most clients a round
	// waits for.
	Partition    dataset.PartitionSpec
	MaxExamples  int
	LearningRate float64
	BatchSize    int
	LocalEpochs  int
	ProximalMu   float64
	Seed         uint64
	// UpdateEncoding is how clients encode their updates: "float32" (the
	// default: local weights), "float16" or "int8" (the delta from the
	// global model, int8 with a per-tensor scale).
	UpdateEncoding string
	// ModelEncoding is how the aggregator publishes models: "float32" (the
	// default) or "float16", which halves every download and keeps the
	// global model on the float16 grid (TrainConfig.model_dtype).
	ModelEncoding string

	Strategy strategy.Config
	MaxNorm  float64
	// NormFactor bounds each update's ||local - global|| by this many
	// times the previous round's median: 0 means
	// coordinator.DefaultNormFactor, a negative value turns it off.
	NormFactor float64
	// Allowed, when non-nil, is the set of client ids that may contribute;
	// others are rejected as unknown_client.
	Allowed map[string]bool
	// EvalExamples caps the test set used per round (0: all).
	EvalExamples int

	// Client sampling and federated evaluation, as Flower's flags mean
	// them (sampling.go): FractionFit of the population trains in each
	// round, at least MinClients (min-fit-clients); FractionEvaluate of it
	// (at least MinEvaluateClients) evaluates the round's model on the
	// Holdout fraction of its shard. MinAvailableClients is the population
	// size N, the ids "0".."N-1", unless Allowed names the clients.
	FractionFit         float64
	FractionEvaluate    float64
	MinEvaluateClients  int
	MinAvailableClients int
	Holdout             float64
	// TargetAccuracy, when > 0, ends the job once a model's centralized
	// accuracy reaches it; that model is published as the final one.
	TargetAccuracy float64

	// Mode is ModeSync (rounds) or ModeAsync (FedBuff: see
	// coordinator.Async). Strategy "fedbuff" implies ModeAsync, and
	// ModeAsync aggregates with FedBuff whatever the strategy's name,
	// which must be "fedbuff" or the default "fedavg". NumRounds counts
	// versions.
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

// The modes of a job.
const (
	ModeSync  = "sync"
	ModeAsync = "async"
)

// Async reports whether the spec describes an asynchronous job.
func (s Spec) Async() bool {
	return s.Mode == ModeAsync || strings.EqualFold(strings.TrimSpace(s.Strategy.Name), "fedbuff")
}

// WithDefaults returns s with its zero fields set to their defaults.
func (s Spec) WithDefaults() Spec {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	if s.Async() {
		s.Mode = ModeAsync
		if n := strings.ToLower(strings.TrimSpace(s.Strategy.Name)); n == "" || n == "fedavg" {
			s.Strategy.Name = "fedbuff"
		}
		if s.BufferSize == 0 {
			s.BufferSize = s.MinClients
		}
	}
	def(&s.Mode, ModeSync)
	def(&s.Job, "mnist")
	def(&s.Model, model.KindLogReg)
	def(&s.Dataset, "mnist")
	def(&s.Partition.Scheme, dataset.SchemeIID)
	def(&s.Strategy.Name, "fedavg")
	if s.OnShort == "" {
		s.OnShort = coordinator.Wait
	}
	if s.Partition.NumPartitions == 0 {
		s.Partition.NumPartitions = max(s.MinClients, s.TargetClients, 1)
	}
	s.Partition.Seed = s.Seed
	if s.LearningRate == 0 {
		s.LearningRate = 0.05
	}
	if s.BatchSize == 0 {
		s.BatchSize = 10
	}
	if s.LocalEpochs == 0 {
		s.LocalEpochs = 1
	}
	if s.NormFactor == 0 {
		s.NormFactor = coordinator.DefaultNormFactor
	}
	s.withSamplingDefaults()
	return s
}

// Validate reports the first bad field of a spec that WithDefaults filled.
func (s Spec) Validate() error {
	if err := rules.ValidateJob(s.Job); err != nil {
		return fmt.Errorf("job: %w", err)
	}
	switch {
	case s.MinClients < 1:
		return fmt.Errorf("min clients %d: want at least 1", s.MinClients)
	case s.NumRounds < 1:
		return fmt.Errorf("rounds %d: want at least 1", s.NumRounds)
	case s.TargetClients != 0 && s.TargetClients < s.MinClients:
		return fmt.Errorf("target clients %d is below min clients %d", s.TargetClients, s.MinClients)
	case s.RoundTimeout < 0:
		return fmt.Errorf("round timeout %v is negative", s.RoundTimeout)
	case s.OnShort != coordinator.Wait && s.OnShort != coordinator.Fail:
		return fmt.Errorf("on short round %q: want %q or %q", s.OnShort, coordinator.Wait, coordinator.Fail)
	case s.MaxNorm < 0:
		return fmt.Errorf("max norm %v is negative", s.MaxNorm)
	case s.EvalExamples < 0:
		return fmt.Errorf("eval examples %d is negative", s.EvalExamples)
	case s.TargetAccuracy < 0 || s.TargetAccuracy > 1:
		return fmt.Errorf("target accuracy %v outside [0, 1]", s.TargetAccuracy)
	case s.Mode != ModeSync && s.Mode != ModeAsync:
		return fmt.Errorf("mode %q: want %q or %q", s.Mode, ModeSync, ModeAsync)
	}
	if s.Mode == ModeAsync {
		if err := s.validateAsync(); err != nil {
			return fmt.Errorf("async mode: %w", err)
		}
	}
	if _, err := UpdateDType(s.UpdateEncoding); err != nil {
		return err
	}
	if _, err := ModelDType(s.ModelEncoding); err != nil {
		return err
	}
	if !model.Known(s.Model) {
		return fmt.Errorf("model %q: want one of %v, %s (trained by Python clients) or %s<MB>", s.Model, model.Kinds(), model.KindCNN, model.KindSyntheticPrefix)
	}
	if err := s.Partition.Validate(); err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	opt := model.TrainOptions{LearningRate: s.LearningRate, BatchSize: s.BatchSize, Epochs: s.LocalEpochs, ProximalMu: s.ProximalMu}
	if err := opt.Validate(); err != nil {
		return fmt.Errorf("training options: %w", err)
	}
	if s.Mode == ModeSync {
		if _, err := strategy.New(s.Strategy); err != nil {
			return fmt.Errorf("strategy: %w", err)
		}
	}
	return s.validateSampling()
}

func (s Spec) validateAsync() error {
	switch {
	case !strings.EqualFold(strings.TrimSpace(s.Strategy.Name), "fedbuff"):
		return fmt.Errorf("strategy %q: async mode aggregates with fedbuff", s.Strategy.Name)
	case s.BufferSize < 1:
		return fmt.Errorf("buffer size %d: want at least 1", s.BufferSize)
	case s.MaxStaleness < 0:
		return fmt.Errorf("max staleness %d is negative", s.MaxStaleness)
	case s.RoundTimeout != 0:
		return errors.New("a round timeout has no meaning without rounds")
	case s.TargetClients != 0:
		return errors.New("target clients has no meaning without rounds; set the buffer size")
	}
	return (&coordinator.Async{BufferSize: s.BufferSize, Exponent: s.StalenessExponent,
		MaxStaleness: int64(s.MaxStaleness), ServerLR: s.Strategy.ServerLR}).Validate()
}

// TrainConfig returns the train config that models of this job carry, or
// an error for an encoding name Validate would refuse.
func (s Spec) TrainConfig() (*fdxv1.TrainConfig, error) {
	update, err := UpdateDType(s.UpdateEncoding)
	if err != nil {
		return nil, err
	}
	model, err := ModelDType(s.ModelEncoding)
	if err != nil {
		return nil, err
	}
	return &fdxv1.TrainConfig{
		Model:        s.Model,
		LearningRate: s.LearningRate,
		BatchSize:    int32(s.BatchSize),
		LocalEpochs:  int32(s.LocalEpochs),
		Seed:         s.Seed,
		Dataset:      s.Dataset,
		MaxExamples:  int32(s.MaxExamples),
		ProximalMu:   s.ProximalMu,
		Partition:    rules.ProtoPartitionSpec(s.Partition),
		Async:        s.Mode == ModeAsync,
		// Federated evaluation needs examples no client trained on.
		HoldoutFraction: s.Holdout,
		UpdateDtype:     update,
		ModelDtype:      model,
		TopkFraction:    topKFraction(s.UpdateEncoding),
	}, nil
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

// Shapes returns the tensor specs of the job's model, sized from its data
// set, and the largest record the job's channel must carry.
func (s Spec) Shapes(data *dataset.Catalog) ([]tensor.Spec, int, error) {
	s = s.WithDefaults()
	train, err := data.Load(s.Dataset, dataset.SplitTrain)
	if err != nil {
		return nil, 0, err
	}
	specs, err := model.SpecsFor(s.Model, train.Dim, train.Classes)
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for _, sp := range specs {
		n += sp.Size()
	}
	return specs, kafkachan.MessageBytesFor(n), nil
}

// Env is what a job runs with besides its spec and channel. Every field may
// be zero.
type Env struct {
	Log *slog.Logger
	// Metrics, when set, observes the rounds and exports the channel's
	// traffic; it turns ready while the job runs.
	Metrics *metrics.Metrics
	// Data caches data sets; nil makes a new catalog.
	Data *dataset.Catalog
	// ChannelName labels the result ("kafka", "grpc").
	ChannelName string
}

// Result adds transport figures to the coordinator's result.
type Result struct {
	*coordinator.Result
	Channel  string        `json:"channel"`
	Model    string        `json:"model"`
	Stats    channel.Stats `json:"aggregator_traffic"`
	Duration float64       `json:"total_ms"`
}

// Run runs the job spec describes (after WithDefaults) on srv to its end,
// resuming from srv's newest model if the job was started before.
func Run(ctx context.Context, spec Spec, srv channel.Server, env Env) (*Result, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	data := env.Data
	if data == nil {
		data = dataset.NewCatalog()
	}
	start := time.Now()
	trainSet, err := data.Load(spec.Dataset, dataset.SplitTrain)
	if err != nil {
		return nil, err
	}
	test, err := data.Load(spec.Dataset, dataset.SplitTest)
	if err != nil {
		return nil, err
	}
	if spec.EvalExamples > 0 && spec.EvalExamples < test.Len() {
		idx := make([]int, spec.EvalExamples)
		for i := range idx {
			idx[i] = i
		}
		if test, err = test.Subset(idx); err != nil {
			return nil, err
		}
	}
	_, maxBytes, err := spec.Shapes(data)
	if err != nil {
		return nil, err
	}
	var obs coordinator.Observer
	if m := env.Metrics; m != nil {
		obs = m
		m.TrafficFunc(func() (int64, int64, int64, int64) {
			st := srv.Stats()
			return st.MessagesSent, st.MessagesReceived, st.BytesSent, st.BytesReceived
		})
		m.SetReady(true)
		defer m.SetReady(false)
	}
	var strat strategy.Strategy
	var async *coordinator.Async
	minClients := spec.MinClients
	if spec.Mode == ModeAsync {
		async = &coordinator.Async{BufferSize: spec.BufferSize, Exponent: spec.StalenessExponent,
			MaxStaleness: int64(spec.MaxStaleness), ServerLR: spec.Strategy.ServerLR}
		minClients = spec.BufferSize
	} else if strat, err = strategy.New(spec.Strategy); err != nil {
		return nil, err
	}
	train, err := spec.TrainConfig()
	if err != nil {
		return nil, err
	}
	evalNet, err := model.New(spec.Model, trainSet.Dim, trainSet.Classes, spec.Seed)
	if err != nil {
		return nil, err
	}
	eval := func(params [][]float32) (model.Metrics, error) {
		if err := evalNet.SetParams(params); err != nil {
			return model.Metrics{}, err
		}
		return evalNet.Evaluate(test)
	}
	coord, err := coordinator.New(coordinator.Config{
		Job: round.Job{ID: spec.Job, NumRounds: spec.NumRounds, MinClients: minClients,
			RoundTimeout: spec.RoundTimeout, Train: train,
			InDim: trainSet.Dim, Classes: trainSet.Classes, MaxNorm: spec.MaxNorm, NormFactor: max(spec.NormFactor, 0),
			MaxExamples: int64(trainSet.Len()), MaxUpdateBytes: maxBytes, Allowed: spec.Allowed,
			ExamplesOf: shardSizes(data, spec)},
		TargetClients: spec.TargetClients, OnShort: spec.OnShort,
		TargetAccuracy: spec.TargetAccuracy, Async: async, Sampling: spec.sampling(),
	}, srv, strat, eval, obs, log)
	if err != nil {
		return nil, err
	}
	res, err := coord.Run(ctx)
	out := &Result{Result: res, Channel: env.ChannelName, Model: spec.Model, Stats: srv.Stats(),
		Duration: float64(time.Since(start).Microseconds()) / 1000}
	return out, err
}

// shardSizes returns each client's shard size under spec's partition: the
// most examples it can have trained on. The catalog counts it from its
// cached partition, so nothing is kept per client id: a cache by id grew
// with the clients of a job (about 5 MB at 100,000), and ids an attacker
// makes up cost nothing either.
func shardSizes(data *dataset.Catalog, spec Spec) func(string) (int64, error) {
	return func(id string) (int64, error) {
		n, err := data.ShardSize(spec.Dataset, dataset.SplitTrain, spec.Partition, id, spec.MaxExamples)
		return int64(n), err
	}
}

// RunOn opens the channel cc describes, calls ready with the address
// clients connect to (may be nil), runs the job on it and closes it.
func RunOn(ctx context.Context, spec Spec, cc ChannelConfig, env Env, ready func(addr string)) (*Result, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if env.Data == nil {
		env.Data = dataset.NewCatalog()
	}
	_, maxBytes, err := spec.Shapes(env.Data)
	if err != nil {
		return nil, err
	}
	if spec.Mode == ModeAsync {
		if cc, err = asyncChannel(cc); err != nil {
			return nil, err
		}
	}
	ch, err := OpenChannel(ctx, cc, spec.Job, maxBytes, env.Log)
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	if env.ChannelName == "" {
		env.ChannelName = ch.Name
	}
	if ready != nil {
		ready(ch.Addr)
	}
	res, err := Run(ctx, spec, ch, env)
	if res == nil && err == nil {
		err = errors.New("job ended without a result")
	}
	// Closing lets calls in flight finish (the final model's downloads on
	// gRPC): count the traffic once they have.
	ch.Close()
	if res != nil {
		res.Stats = ch.Stats()
	}
	return res, err
}

// asyncChannel checks that cc can carry an asynchronous job and gives it
// a single-partition updates topic by default. A version is made of the
// updates the loop reads next, so a restart reproduces it only if it reads
// them in the same order: one partition is one total order, whereas
// several are interleaved differently from one consumer session to the
// next.
func asyncChannel(cc ChannelConfig) (ChannelConfig, error) {
	switch {
	case cc.Transport != GRPC && cc.UpdatePartitions == 0:
		cc.UpdatePartitions = 1
	case cc.Transport != GRPC && cc.UpdatePartitions > 1:
		return cc, fmt.Errorf("async mode needs one updates partition (a total order, for exact restarts), not %d", cc.UpdatePartitions)
	case cc.Transport == GRPC && cc.StateFile != "":
		// The update log replays the open round's updates by base round;
		// an async version holds updates of many base rounds.
		return cc, errors.New("async mode over gRPC has no durable state file yet; run it without --state-file or over Kafka")
	}
	return cc, nil
}
