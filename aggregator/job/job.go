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
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
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
}

// WithDefaults returns s with its zero fields set to their defaults.
func (s Spec) WithDefaults() Spec {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
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
	}
	if _, err := UpdateDType(s.UpdateEncoding); err != nil {
		return err
	}
	if !model.Known(s.Model) {
		return fmt.Errorf("model %q: want one of %v", s.Model, model.Kinds())
	}
	if err := s.Partition.Validate(); err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	opt := model.TrainOptions{LearningRate: s.LearningRate, BatchSize: s.BatchSize, Epochs: s.LocalEpochs, ProximalMu: s.ProximalMu}
	if err := opt.Validate(); err != nil {
		return fmt.Errorf("training options: %w", err)
	}
	if _, err := strategy.New(s.Strategy); err != nil {
		return fmt.Errorf("strategy: %w", err)
	}
	return nil
}

// TrainConfig returns the train config that models of this job carry.
func (s Spec) TrainConfig() *fdxv1.TrainConfig {
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
		UpdateDtype:  must(UpdateDType(s.UpdateEncoding)),
	}
}

// UpdateDType maps an update encoding's name ("" is float32) to its dtype.
func UpdateDType(name string) (fdxv1.DType, error) {
	switch name {
	case "", "float32":
		return fdxv1.DType_DTYPE_FLOAT32, nil
	case "float16":
		return fdxv1.DType_DTYPE_FLOAT16, nil
	case "int8":
		return fdxv1.DType_DTYPE_INT8, nil
	}
	return 0, fmt.Errorf("update encoding %q: want float32, float16 or int8", name)
}

// must returns d; Validate has refused the encodings whose err is set.
func must(d fdxv1.DType, err error) fdxv1.DType {
	if err != nil {
		return fdxv1.DType_DTYPE_FLOAT32
	}
	return d
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
	strat, err := strategy.New(spec.Strategy)
	if err != nil {
		return nil, err
	}
	train := spec.TrainConfig()
	if p, ok := strat.(strategy.Proximal); ok && train.ProximalMu == 0 {
		// FedProx is FedAvg on the server; its term is the clients'.
		train.ProximalMu = p.ProximalMu()
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
		Job: spec.Job, NumRounds: spec.NumRounds, MinClients: spec.MinClients, TargetClients: spec.TargetClients,
		RoundTimeout: spec.RoundTimeout, OnShort: spec.OnShort, Train: train,
		InDim: trainSet.Dim, Classes: trainSet.Classes, MaxNorm: spec.MaxNorm, NormFactor: max(spec.NormFactor, 0),
		MaxExamples: int64(trainSet.Len()), MaxUpdateBytes: maxBytes, Allowed: spec.Allowed,
		ExamplesOf: shardSizes(data, spec),
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
// most examples it can have trained on. Sizes are cached per client id, up
// to a bound, so that ids an attacker makes up cannot grow memory.
func shardSizes(data *dataset.Catalog, spec Spec) func(string) (int64, error) {
	const maxCached = 1 << 17
	sizes := map[string]int64{}
	return func(id string) (int64, error) {
		if n, ok := sizes[id]; ok {
			return n, nil
		}
		set, err := data.ClientShard(spec.Dataset, dataset.SplitTrain, spec.Partition, id, spec.MaxExamples)
		if err != nil {
			return 0, err
		}
		n := int64(set.Len())
		if len(sizes) < maxCached {
			sizes[id] = n
		}
		return n, nil
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
	return res, err
}
