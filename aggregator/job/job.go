// Package job wires one federated job together: the channel server (Kafka,
// optionally on an embedded broker, or gRPC), the strategy, the centralized
// evaluation and the round coordinator. The aggregator binary, its tests and
// the evaluation harness all start jobs through it.
package job

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/participant"
)

// Options are the aggregator's settings; the binary's flags map onto them.
type Options struct {
	// Broker is the Kafka bootstrap list, or with GRPC the listen address.
	Broker     string
	GRPC       bool
	Embedded   bool
	Job        string
	MinClients int
	// TargetClients closes a round early when reached (0 = MinClients).
	TargetClients int
	NumRounds     int
	RoundTimeout  time.Duration
	OnShort       coordinator.ShortRound

	Model        string
	Dataset      string
	Partition    string
	Partitions   int
	Alpha        float64
	ShardsPer    int
	MaxExamples  int
	LearningRate float64
	BatchSize    int
	LocalEpochs  int
	ProximalMu   float64
	Seed         uint64

	Strategy strategy.Config
	MaxNorm  float64
	// UpdatePartitions of the Kafka updates topic.
	UpdatePartitions int
	KafkaProperties  map[string]string
	// BeforeCommit is the Kafka channel's fault-injection point (see
	// kafkachan.ServerOptions.BeforeCommit).
	BeforeCommit func(round int64)
	// StateFile makes the gRPC channel durable.
	StateFile string
	// Allowed, when non-nil, is the set of client ids that may contribute;
	// others are rejected as unknown_client.
	Allowed map[string]bool
	// GRPCTLS and GRPCTokens secure the gRPC channel (see grpcchan).
	GRPCTLS    *tls.Config
	GRPCTokens map[string]string
	// EvalExamples caps the test set used per round (0 = all).
	EvalExamples int
	Data         *dataset.Catalog
	// Metrics, when set, observes the rounds and exports the channel's
	// traffic; it turns ready once clients may connect.
	Metrics *metrics.Metrics
	// Ready, when set, receives the channel's address once clients may
	// connect (for the embedded broker and gRPC port 0).
	Ready func(addr string)
}

// Result adds transport figures to the coordinator's result.
type Result struct {
	*coordinator.Result
	Channel  string        `json:"channel"`
	Model    string        `json:"model"`
	Stats    channel.Stats `json:"aggregator_traffic"`
	Duration float64       `json:"total_ms"`
}

// TrainConfig returns the train config that models of this job carry.
func (o *Options) TrainConfig() *fdxv1.TrainConfig {
	return &fdxv1.TrainConfig{
		Model:        o.Model,
		LearningRate: o.LearningRate,
		BatchSize:    int32(o.BatchSize),
		LocalEpochs:  int32(o.LocalEpochs),
		Seed:         o.Seed,
		Dataset:      o.Dataset,
		MaxExamples:  int32(o.MaxExamples),
		ProximalMu:   o.ProximalMu,
		Partition: &fdxv1.PartitionSpec{
			Scheme:          o.Partition,
			NumPartitions:   int32(o.Partitions),
			Seed:            o.Seed,
			Alpha:           o.Alpha,
			ShardsPerClient: int32(o.ShardsPer),
		},
	}
}

func (o *Options) defaults() {
	if o.Job == "" {
		o.Job = "mnist"
	}
	if o.Model == "" {
		o.Model = "logreg"
	}
	if o.Dataset == "" {
		o.Dataset = "mnist"
	}
	if o.Partition == "" {
		o.Partition = "iid"
	}
	if o.Partitions == 0 {
		o.Partitions = max(o.MinClients, o.TargetClients, 1)
	}
	if o.LearningRate == 0 {
		o.LearningRate = 0.05
	}
	if o.BatchSize == 0 {
		o.BatchSize = 10
	}
	if o.LocalEpochs == 0 {
		o.LocalEpochs = 1
	}
	if o.Strategy.Name == "" {
		o.Strategy.Name = "fedavg"
	}
	if o.UpdatePartitions == 0 {
		o.UpdatePartitions = 4
	}
	if o.Data == nil {
		o.Data = dataset.NewCatalog()
	}
}

// Validate reports the first bad option, naming its flag.
func (o *Options) Validate() error {
	o.defaults()
	if strings.TrimSpace(o.Broker) == "" {
		return errors.New("--broker: empty")
	}
	if err := kafkachan.ValidateJob(o.Job); err != nil {
		return fmt.Errorf("--job: %w", err)
	}
	if o.MinClients < 1 {
		return fmt.Errorf("--minclients %d: want at least 1", o.MinClients)
	}
	if o.NumRounds < 1 {
		return fmt.Errorf("--numrounds %d: want at least 1", o.NumRounds)
	}
	if o.TargetClients != 0 && o.TargetClients < o.MinClients {
		return fmt.Errorf("--target-clients %d is below --minclients %d", o.TargetClients, o.MinClients)
	}
	if o.GRPC && o.Embedded {
		return errors.New("--embedded starts a Kafka broker; it does not go with --grpc")
	}
	if _, err := model.SpecsFor(o.Model, 784, 10); err != nil {
		return fmt.Errorf("--model: %w", err)
	}
	tc := o.TrainConfig()
	if err := participant.PartitionSpec(tc.GetPartition()).Validate(); err != nil {
		return fmt.Errorf("--partition: %w", err)
	}
	opt := model.TrainOptions{LearningRate: o.LearningRate, BatchSize: o.BatchSize, Epochs: o.LocalEpochs, ProximalMu: o.ProximalMu}
	if err := opt.Validate(); err != nil {
		return fmt.Errorf("training options: %w", err)
	}
	if _, err := strategy.New(o.Strategy); err != nil {
		return fmt.Errorf("--strategy: %w", err)
	}
	return nil
}

// Run runs the job to its end.
func Run(ctx context.Context, o Options, log *slog.Logger) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	train, err := o.Data.Load(o.Dataset, "train")
	if err != nil {
		return nil, err
	}
	test, err := o.Data.Load(o.Dataset, "test")
	if err != nil {
		return nil, err
	}
	if o.EvalExamples > 0 && o.EvalExamples < test.Len() {
		idx := make([]int, o.EvalExamples)
		for i := range idx {
			idx[i] = i
		}
		if test, err = test.Subset(idx); err != nil {
			return nil, err
		}
	}
	specs, err := model.SpecsFor(o.Model, train.Dim, train.Classes)
	if err != nil {
		return nil, err
	}
	numParams := 0
	for _, s := range specs {
		numParams += s.Size()
	}
	maxBytes := kafkachan.MessageBytesFor(numParams)

	srv, addr, cleanup, err := o.open(ctx, maxBytes, log)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var obs coordinator.Observer
	if o.Metrics != nil {
		obs = o.Metrics
		o.Metrics.TrafficFunc(func() (int64, int64, int64, int64) {
			st := srv.Stats()
			return st.MessagesSent, st.MessagesReceived, st.BytesSent, st.BytesReceived
		})
		o.Metrics.SetReady(true)
		defer o.Metrics.SetReady(false)
	}
	if o.Ready != nil {
		o.Ready(addr)
	}
	strat, err := strategy.New(o.Strategy)
	if err != nil {
		return nil, err
	}
	evalNet, err := model.New(o.Model, train.Dim, train.Classes, o.Seed)
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
		Job: o.Job, NumRounds: o.NumRounds, MinClients: o.MinClients, TargetClients: o.TargetClients,
		RoundTimeout: o.RoundTimeout, OnShort: o.OnShort, Train: o.TrainConfig(),
		InDim: train.Dim, Classes: train.Classes, MaxNorm: o.MaxNorm,
		MaxExamples: int64(train.Len()), MaxUpdateBytes: maxBytes, Allowed: o.Allowed,
	}, srv, strat, eval, obs, log)
	if err != nil {
		return nil, err
	}
	res, err := coord.Run(ctx)
	out := &Result{Result: res, Channel: o.channelName(), Model: o.Model, Stats: srv.Stats(),
		Duration: float64(time.Since(start).Microseconds()) / 1000}
	return out, err
}

func (o *Options) channelName() string {
	if o.GRPC {
		return "grpc"
	}
	return "kafka"
}

// open starts the channel server (and the embedded broker).
func (o *Options) open(ctx context.Context, maxBytes int, log *slog.Logger) (channel.Server, string, func(), error) {
	if o.GRPC {
		s, err := grpcchan.NewServer(grpcchan.ServerOptions{
			Addr: o.Broker, Job: o.Job, MaxMessageBytes: maxBytes, StateFile: o.StateFile, Logger: log,
			TLS: o.GRPCTLS, Tokens: o.GRPCTokens,
		})
		if err != nil {
			return nil, "", nil, err
		}
		log.Info("gRPC aggregator listening", "addr", s.Addr())
		return s, s.Addr(), func() { s.Close() }, nil
	}
	brokers := o.Broker
	stopBroker := func() {}
	if o.Embedded {
		b, err := embedded.Start(embedded.Options{Addr: o.Broker})
		if err != nil {
			return nil, "", nil, err
		}
		brokers = b.Addr()
		stopBroker = b.Close
		log.Info("embedded Kafka broker started (in memory)", "addr", brokers)
	}
	s, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{
		Options: kafkachan.Options{Brokers: brokers, Job: o.Job, Properties: o.KafkaProperties, Logger: log},
		TopicOptions: kafkachan.TopicOptions{
			UpdatePartitions: o.UpdatePartitions, MaxMessageBytes: maxBytes,
		},
		BeforeCommit: o.BeforeCommit,
	})
	if err != nil {
		stopBroker()
		return nil, "", nil, err
	}
	log.Info("Kafka channel ready", "brokers", brokers, "model_topic", kafkachan.ModelTopic(o.Job),
		"updates_topic", kafkachan.UpdatesTopic(o.Job), "max_message_bytes", maxBytes)
	return s, brokers, func() { s.Close(); stopBroker() }, nil
}
