package job

import (
	"errors"
	"slices"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/scaleout"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Resolved is a job ready to run: its spec with the defaults applied and
// checked, its strategy, the train config its models carry and the shapes
// of its model. Spec.Resolve makes one; Run, RunOn and RunRole run it.
//
// A Resolved runs one job: its strategy holds the job's server state
// (momentum, moments, the DP accountant), which a second job must not
// start from. Resolve the spec again to run it again.
type Resolved struct {
	spec Spec
	data *dataset.Catalog
	// strategy is nil in async mode, where the coordinator folds with
	// FedBuff itself.
	strategy strategy.Strategy
	// async is nil in sync mode.
	async *coordinator.Async
	// train is the job's train config; each round's model carries it as
	// the strategy's Policy configures it (FedProx adds μ).
	train *fdxv1.TrainConfig
	// inDim, classes and trainExamples describe the training split.
	inDim, classes, trainExamples int
	shapes                        []tensor.Spec
	maxBytes                      int
	// ran is set by the first run, which takes the strategy.
	ran atomic.Bool
}

// Resolve applies the defaults to s, checks it, builds its strategy and
// its train config, and sizes its model from the training split of its
// data set, which it loads into data (nil: a new catalog). The job's runs
// read the data set, its test split and the clients' shards from the same
// catalog. A spec Resolve refuses gives a *SpecError.
func (s Spec) Resolve(data *dataset.Catalog) (*Resolved, error) {
	if data == nil {
		data = dataset.NewCatalog()
	}
	s = s.withDefaults()
	strat, err := s.validate()
	if err != nil {
		return nil, err
	}
	train, err := s.trainConfig()
	if err != nil {
		return nil, err
	}
	trainSet, err := data.Load(s.Data.Dataset, dataset.SplitTrain)
	if err != nil {
		return nil, err
	}
	shapes, err := model.SpecsFor(s.Training.Model, trainSet.Dim, trainSet.Classes)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, sp := range shapes {
		n += sp.Size()
	}
	r := &Resolved{
		spec: s, data: data, strategy: strat, train: train,
		inDim: trainSet.Dim, classes: trainSet.Classes, trainExamples: trainSet.Len(),
		shapes: shapes, maxBytes: kafkachan.MessageBytesFor(n),
	}
	if s.Rounds.Mode == ModeAsync {
		r.async = s.asyncConfig()
	}
	return r, nil
}

// trainConfig returns the train config that models of the job carry, or
// an error for an encoding name validate would refuse.
func (s Spec) trainConfig() (*fdxv1.TrainConfig, error) {
	t := s.Training
	update, err := UpdateDType(t.UpdateEncoding)
	if err != nil {
		return nil, err
	}
	model, err := ModelDType(t.ModelEncoding)
	if err != nil {
		return nil, err
	}
	return &fdxv1.TrainConfig{
		Model:        t.Model,
		LearningRate: t.LearningRate,
		BatchSize:    int32(t.BatchSize),
		LocalEpochs:  int32(t.LocalEpochs),
		Seed:         s.Seed,
		Dataset:      s.Data.Dataset,
		MaxExamples:  int32(s.Data.MaxExamples),
		ProximalMu:   t.ProximalMu,
		Partition:    rules.ProtoPartitionSpec(s.Data.Partition),
		Async:        s.Rounds.Mode == ModeAsync,
		// Federated evaluation needs examples no client trained on.
		HoldoutFraction: s.Data.Holdout,
		UpdateDtype:     update,
		ModelDtype:      model,
		TopkFraction:    topKFraction(t.UpdateEncoding),
	}, nil
}

// Spec returns the spec with its defaults applied.
func (r *Resolved) Spec() Spec { return r.spec }

// Data returns the catalog the job reads its data set from.
func (r *Resolved) Data() *dataset.Catalog { return r.data }

// TrainConfig returns a copy of the train config the job's models carry.
func (r *Resolved) TrainConfig() *fdxv1.TrainConfig { return proto.CloneOf(r.train) }

// Shapes returns the tensor specs of the job's model.
func (r *Resolved) Shapes() []tensor.Spec { return slices.Clone(r.shapes) }

// MaxMessageBytes returns the largest record the job's channel must carry.
func (r *Resolved) MaxMessageBytes() int { return r.maxBytes }

// CoordinatorConfig returns the round coordinator's configuration of the
// job. In async mode a version closes on the buffer, so MinClients is the
// buffer size.
func (r *Resolved) CoordinatorConfig() coordinator.Config {
	s := r.spec
	cfg := coordinator.Config{
		Job:           r.roundJob(),
		TargetClients: s.Rounds.TargetClients, OnShort: s.Rounds.OnShort,
		TargetAccuracy: s.Rounds.TargetAccuracy, Sampling: s.sampling(),
	}
	if r.async != nil {
		a := *r.async
		cfg.Async, cfg.MinClients = &a, a.BufferSize
	}
	return cfg
}

// ScaleoutConfig returns the scale-out workers' and leader's
// configuration of the job, without a PartialKey: that comes from the
// channel's model key.
func (r *Resolved) ScaleoutConfig() scaleout.Config {
	return scaleout.Config{Job: r.roundJob(), Strategy: r.spec.Strategy.Name}
}

// roundJob is what every round of the job shares, whichever way it runs.
func (r *Resolved) roundJob() round.Job {
	s := r.spec
	return round.Job{
		ID: s.Job, NumRounds: s.Rounds.NumRounds, MinClients: s.Rounds.MinClients,
		Train: r.train, InDim: r.inDim, Classes: r.classes, RoundTimeout: s.Rounds.RoundTimeout,
		MaxNorm: s.Security.MaxNorm, NormFactor: max(s.Security.NormFactor, 0),
		MaxExamples: int64(r.trainExamples), ExamplesOf: r.shardSizes(),
		MaxUpdateBytes: r.maxBytes, Allowed: s.Security.Allowed,
	}
}

// takeStrategy marks r as run and returns its strategy, or an error if r
// ran before.
func (r *Resolved) takeStrategy() (strategy.Strategy, error) {
	if r.ran.Swap(true) {
		return nil, errors.New("job already ran: a Resolved runs one job (resolve the spec again)")
	}
	return r.strategy, nil
}

// shardSizes returns each client's shard size under the job's partition:
// the most examples it can have trained on. The catalog counts it from its
// cached partition, so nothing is kept per client id: a cache by id grew
// with the clients of a job (about 5 MB at 100,000), and ids an attacker
// makes up cost nothing either.
func (r *Resolved) shardSizes() func(string) (int64, error) {
	d := r.spec.Data
	return func(id string) (int64, error) {
		n, err := r.data.ShardSize(d.Dataset, dataset.SplitTrain, d.Partition, id, d.MaxExamples)
		return int64(n), err
	}
}
