package job

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// TestResolveDefaults pins every default Resolve fills into a spec that
// sets only what it must, and what the resolved job hands on: the train
// config, the model's shapes and record size, and the coordinator's and
// the scale-out configuration.
func TestResolveDefaults(t *testing.T) {
	r, err := Spec{Seed: 7, Rounds: RoundsSpec{MinClients: 3, NumRounds: 2}}.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{
		Job:    "mnist",
		Seed:   7,
		Rounds: RoundsSpec{NumRounds: 2, MinClients: 3, OnShort: coordinator.Wait, Mode: ModeSync},
		Data: DataSpec{Dataset: "mnist",
			Partition: dataset.PartitionSpec{Scheme: dataset.SchemeIID, NumPartitions: 3, Seed: 7}},
		Training: TrainingSpec{Model: model.KindLogReg, LearningRate: 0.05, BatchSize: 10, LocalEpochs: 1},
		Strategy: strategy.Config{Name: "fedavg"},
		Security: SecuritySpec{NormFactor: coordinator.DefaultNormFactor},
		Sampling: SamplingSpec{FractionFit: 1, MinAvailableClients: 3},
	}
	if got := r.Spec(); !reflect.DeepEqual(got, want) {
		t.Errorf("resolved spec\n%+v\nwant\n%+v", got, want)
	}
	wantTrain := &fdxv1.TrainConfig{Model: model.KindLogReg, LearningRate: 0.05, BatchSize: 10, LocalEpochs: 1, Seed: 7,
		Dataset: "mnist", Partition: rules.ProtoPartitionSpec(want.Data.Partition),
		UpdateDtype: fdxv1.DType_DTYPE_FLOAT32, ModelDtype: fdxv1.DType_DTYPE_FLOAT32}
	if got := r.TrainConfig(); !proto.Equal(got, wantTrain) {
		t.Errorf("train config %v, want %v", got, wantTrain)
	}
	const params = 784*10 + 10 // MNIST logistic regression
	if n := len(r.Shapes()); n != 2 {
		t.Errorf("%d tensors, want logreg's weight and bias", n)
	}
	if got, want := r.MaxMessageBytes(), kafkachan.MessageBytesFor(params); got != want {
		t.Errorf("max message bytes %d, want %d", got, want)
	}
	cc := r.CoordinatorConfig()
	if cc.ID != "mnist" || cc.MinClients != 3 || cc.NumRounds != 2 || cc.NormFactor != coordinator.DefaultNormFactor ||
		cc.InDim != 784 || cc.Classes != 10 || cc.MaxExamples != 60000 || cc.MaxUpdateBytes != r.MaxMessageBytes() ||
		cc.Async != nil || cc.Sampling != nil || cc.ExamplesOf == nil || !proto.Equal(cc.Train, wantTrain) {
		t.Errorf("coordinator config %+v", cc)
	}
	if n, err := cc.ExamplesOf("2"); err != nil || n != 20000 {
		t.Errorf("shard size of client 2: %d, %v; want a third of 60,000", n, err)
	}
	sc := r.ScaleoutConfig()
	if sc.ID != "mnist" || sc.Strategy != "fedavg" || sc.MinClients != 3 || sc.NumRounds != 2 ||
		sc.NormFactor != coordinator.DefaultNormFactor || sc.MaxUpdateBytes != r.MaxMessageBytes() || !proto.Equal(sc.Train, wantTrain) {
		t.Errorf("scale-out config %+v", sc)
	}
}

// TestResolveDerived checks the defaults that depend on other fields: async
// mode from the strategy and its buffer, FedProx's μ in the train config,
// the sampling rate DP-FedAvg accounts with, and the holdout federated
// evaluation needs; and that a negative norm factor turns the bound off.
func TestResolveDerived(t *testing.T) {
	base := Spec{Rounds: RoundsSpec{MinClients: 4, NumRounds: 2}, Data: DataSpec{Dataset: "synthetic"}}

	async := base
	async.Strategy.Name = "fedbuff"
	r := resolve(t, async, nil)
	if s := r.Spec(); s.Rounds.Mode != ModeAsync || s.Rounds.BufferSize != 4 || s.Strategy.Name != "fedbuff" {
		t.Errorf("strategy fedbuff: mode %q, buffer %d, strategy %q; want async, 4, fedbuff", s.Rounds.Mode, s.Rounds.BufferSize, s.Strategy.Name)
	}
	if cc := r.CoordinatorConfig(); cc.Async == nil || cc.Async.BufferSize != 4 || cc.MinClients != 4 || !cc.Train.GetAsync() {
		t.Errorf("async coordinator config %+v", cc)
	}
	async = base
	async.Rounds.Mode, async.Rounds.BufferSize = ModeAsync, 2
	if s := resolve(t, async, nil).Spec(); s.Strategy.Name != "fedbuff" || s.Rounds.BufferSize != 2 {
		t.Errorf("async mode: strategy %q, buffer %d; want fedbuff, 2", s.Strategy.Name, s.Rounds.BufferSize)
	}

	prox := base
	prox.Strategy.Name = "fedprox"
	// μ reaches the clients through the strategy's Policy, applied to
	// each model's train config; the job's own carries only a μ it set.
	rp := resolve(t, prox, nil)
	if mu := rp.TrainConfig().GetProximalMu(); mu != 0 {
		t.Errorf("fedprox: job train config μ %v, want 0 (the policy adds it)", mu)
	}
	if mu := rp.strategy.ConfigureFit(1, strategy.Plan{ProximalMu: rp.TrainConfig().GetProximalMu()}).ProximalMu; mu != 0.01 {
		t.Errorf("fedprox: configured μ %v, want the strategy's default 0.01", mu)
	}
	prox.Training.ProximalMu = 0.5
	rp = resolve(t, prox, nil)
	if mu := rp.strategy.ConfigureFit(1, strategy.Plan{ProximalMu: rp.TrainConfig().GetProximalMu()}).ProximalMu; mu != 0.5 {
		t.Errorf("fedprox with μ 0.5 set: configured μ %v", mu)
	}

	sampled := base
	sampled.Data.Partition.NumPartitions = 10
	sampled.Sampling = SamplingSpec{FractionFit: 0.5, FractionEvaluate: 0.2}
	r = resolve(t, sampled, nil)
	s := r.Spec()
	if s.Sampling.MinAvailableClients != 10 || s.Strategy.SamplingRate != 0.5 || s.Data.Holdout != DefaultHoldout {
		t.Errorf("sampled: population %d, sampling rate %v, holdout %v; want 10, 0.5, %v",
			s.Sampling.MinAvailableClients, s.Strategy.SamplingRate, s.Data.Holdout, DefaultHoldout)
	}
	if sp := r.CoordinatorConfig().Sampling; sp == nil || len(sp.Population) != 10 || sp.FractionFit != 0.5 {
		t.Errorf("sampled: coordinator sampling %+v", sp)
	}

	off := base
	off.Security.NormFactor = -1
	if f := resolve(t, off, nil).CoordinatorConfig().NormFactor; f != 0 {
		t.Errorf("norm factor -1: the coordinator's is %v, want 0 (off)", f)
	}
}

// TestResolveRefuses checks that a bad field is refused with a *SpecError
// naming it, in words a user of the flags recognizes.
func TestResolveRefuses(t *testing.T) {
	for _, tc := range []struct {
		field, msg string
		edit       func(*Spec)
	}{
		{"Job", "job:", func(s *Spec) { s.Job = "a b" }},
		{"Rounds.MinClients", "min clients 0", func(s *Spec) { s.Rounds.MinClients = 0 }},
		{"Rounds.NumRounds", "rounds 0", func(s *Spec) { s.Rounds.NumRounds = 0 }},
		{"Rounds.TargetClients", "below min clients", func(s *Spec) { s.Rounds.TargetClients = 1 }},
		{"Rounds.RoundTimeout", "negative", func(s *Spec) { s.Rounds.RoundTimeout = -time.Second }},
		{"Rounds.OnShort", "on short round", func(s *Spec) { s.Rounds.OnShort = "maybe" }},
		{"Rounds.TargetAccuracy", "target accuracy", func(s *Spec) { s.Rounds.TargetAccuracy = 2 }},
		{"Rounds.Mode", "mode \"later\"", func(s *Spec) { s.Rounds.Mode = "later" }},
		{"Strategy.Name", "async mode: strategy \"krum\"", func(s *Spec) { s.Rounds.Mode, s.Strategy.Name = ModeAsync, "krum" }},
		{"Rounds.RoundTimeout", "async mode: a round timeout", func(s *Spec) { s.Rounds.Mode, s.Rounds.RoundTimeout = ModeAsync, time.Second }},
		{"Rounds.MaxStaleness", "max staleness", func(s *Spec) { s.Rounds.Mode, s.Rounds.MaxStaleness = ModeAsync, -1 }},
		{"Security.MaxNorm", "max norm", func(s *Spec) { s.Security.MaxNorm = -1 }},
		{"Data.EvalExamples", "eval examples", func(s *Spec) { s.Data.EvalExamples = -1 }},
		{"Data.Partition", "partition:", func(s *Spec) { s.Data.Partition.Scheme = "weird" }},
		{"Data.Holdout", "holdout", func(s *Spec) { s.Data.Holdout = 1 }},
		{"Training.Model", "model \"resnet\"", func(s *Spec) { s.Training.Model = "resnet" }},
		{"Training.UpdateEncoding", "update encoding", func(s *Spec) { s.Training.UpdateEncoding = "int4" }},
		{"Training.ModelEncoding", "model encoding", func(s *Spec) { s.Training.ModelEncoding = "int8" }},
		{"Training", "training options", func(s *Spec) { s.Training.LearningRate = -1 }},
		{"Strategy", "strategy:", func(s *Spec) { s.Strategy.Name = "fedfoo" }},
		{"Sampling.FractionFit", "fraction-fit", func(s *Spec) { s.Sampling.FractionFit = 2 }},
		{"Sampling.FractionEvaluate", "fraction-evaluate", func(s *Spec) { s.Sampling.FractionEvaluate = -1 }},
		{"Sampling.MinEvaluateClients", "min-evaluate-clients", func(s *Spec) { s.Sampling.MinEvaluateClients = -1 }},
		{"Sampling.MinAvailableClients", "cannot give min-fit-clients", func(s *Spec) {
			s.Sampling.FractionFit, s.Sampling.MinAvailableClients = 0.5, 2
		}},
	} {
		s := Spec{Rounds: RoundsSpec{MinClients: 3, NumRounds: 2}, Data: DataSpec{Dataset: "synthetic"}}
		tc.edit(&s)
		_, err := s.Resolve(nil)
		var se *SpecError
		if !errors.As(err, &se) || se.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: Resolve = %v (%#v); want a *SpecError for %s containing %q", tc.field, err, se, tc.field, tc.msg)
		}
	}
	// A data set that cannot be loaded is not the spec's fault to name.
	_, err := Spec{Rounds: RoundsSpec{MinClients: 1, NumRounds: 1}, Data: DataSpec{Dataset: "nosuch"}}.Resolve(nil)
	if se := (*SpecError)(nil); err == nil || errors.As(err, &se) {
		t.Errorf("unknown data set: Resolve = %v; want a load error", err)
	}
}

// A Resolved runs one job: a second run would start from the first's
// strategy state.
func TestResolvedRunsOnce(t *testing.T) {
	r := resolve(t, Spec{Rounds: RoundsSpec{MinClients: 1, NumRounds: 1},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 10, EvalExamples: 10}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cc := ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}
	if _, err := RunOn(ctx, r, cc, Env{}, nil); err == nil || strings.Contains(err.Error(), "already ran") {
		t.Fatalf("first run on a cancelled context: %v, want it to stop on the context", err)
	}
	if _, err := RunOn(context.Background(), r, cc, Env{}, nil); err == nil || !strings.Contains(err.Error(), "already ran") {
		t.Fatalf("second run: %v, want an error saying the job already ran", err)
	}
}
