// Package job wires one federated job together: its Spec (what to train
// and how rounds close), resolved once (Spec.Resolve: defaults, checks,
// strategy, train config, model shapes) into what the rest runs on; the
// channel server it runs on (OpenChannel: Kafka, optionally on an
// embedded broker, or gRPC), the centralized evaluation and the round
// coordinator. The aggregator binary, its tests and the evaluation
// harness all start jobs through it.
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
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/model"
)

// Env is what a job runs with besides its resolved spec and channel.
// Every field may be zero.
type Env struct {
	Log *slog.Logger
	// Metrics, when set, observes the rounds and exports the channel's
	// traffic; it turns ready while the job runs.
	Metrics *metrics.Metrics
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

// Run runs the job r describes on srv to its end, resuming from srv's
// newest model if the job was started before.
func Run(ctx context.Context, r *Resolved, srv channel.Server, env Env) (*Result, error) {
	strat, err := r.takeStrategy()
	if err != nil {
		return nil, err
	}
	return run(ctx, r, strat, srv, env)
}

func run(ctx context.Context, r *Resolved, strat strategy.Strategy, srv channel.Server, env Env) (*Result, error) {
	spec := r.spec
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	test, err := r.data.Load(spec.Data.Dataset, dataset.SplitTest)
	if err != nil {
		return nil, err
	}
	if n := spec.Data.EvalExamples; n > 0 && n < test.Len() {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		if test, err = test.Subset(idx); err != nil {
			return nil, err
		}
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
	evalNet, err := model.New(spec.Training.Model, r.inDim, r.classes, spec.Seed)
	if err != nil {
		return nil, err
	}
	eval := func(params [][]float32) (model.Metrics, error) {
		if err := evalNet.SetParams(params); err != nil {
			return model.Metrics{}, err
		}
		return evalNet.Evaluate(test)
	}
	coord, err := coordinator.New(r.CoordinatorConfig(), srv, strat, eval, obs, log)
	if err != nil {
		return nil, err
	}
	res, err := coord.Run(ctx)
	out := &Result{Result: res, Channel: env.ChannelName, Model: spec.Training.Model, Stats: srv.Stats(),
		Duration: float64(time.Since(start).Microseconds()) / 1000}
	return out, err
}

// RunOn opens the channel cc describes, calls ready with the address
// clients connect to (may be nil), runs the job r describes on it and
// closes it.
func RunOn(ctx context.Context, r *Resolved, cc ChannelConfig, env Env, ready func(addr string)) (*Result, error) {
	strat, err := r.takeStrategy()
	if err != nil {
		return nil, err
	}
	if r.spec.Rounds.Mode == ModeAsync {
		if cc, err = asyncChannel(cc); err != nil {
			return nil, err
		}
	}
	ch, err := OpenChannel(ctx, cc, r.spec.Job, r.maxBytes, env.Log)
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
	res, err := run(ctx, r, strat, ch, env)
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
