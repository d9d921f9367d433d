package coordinator_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// resumingServer is a fakeServer whose Latest returns a checkpoint.
type resumingServer struct {
	*fakeServer
	latest *fdxv1.GlobalModel
}

func (s *resumingServer) Latest(context.Context, func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error) {
	return s.latest, nil
}

func asyncConfig(rounds int, a coordinator.Async) coordinator.Config {
	cfg := testConfig(a.BufferSize)
	cfg.NumRounds = rounds
	cfg.Train = &fdxv1.TrainConfig{Model: model.KindLogReg, Seed: 1, Async: true}
	cfg.Async = &a
	return cfg
}

func newAsync(t *testing.T, cfg coordinator.Config, srv channel.Server, eval strategy.Evaluator) *coordinator.Coordinator {
	t.Helper()
	c, err := coordinator.New(cfg, srv, nil, eval, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func deltaUpdate(specs []tensor.Spec, client string, base int64, v float32) *fdxv1.Update {
	u := newUpdate(specs, client, base, 10, filled(specs, v))
	u.IsDelta = true
	return u
}

// asyncStep is one delivery of the hand-worked example and its verdict.
type asyncStep struct {
	name string
	u    *fdxv1.Update
	want rules.Reason // "" for accepted
}

// asyncSteps is a run of three versions with K = 2, a = 1 (so s(τ) =
// 1/(1+τ)), max staleness 1, η_g = 1, unweighted, from the zero model. Every
// value below is exact in float32, so the expected versions are too:
//
//	v1 → v2: a(τ0, +0.5), b(τ0, +0.25)            0 + (0.5 + 0.25)/2      = 0.375
//	v2 → v3: c(τ1, +1 → 0.5), a(τ0, −0.25)        0.375 + (0.5 − 0.25)/2  = 0.5
//	v3 → v4: b(τ0, +0.75), c(τ1, +0.375 → 0.1875) 0.5 + (0.75 + 0.1875)/2 = 0.96875
//
// with, in between, every way an asynchronous update can be refused.
func asyncSteps(specs []tensor.Spec) [][]asyncStep {
	full := newUpdate(specs, "f", 2, 10, filled(specs, 0.1)) // not a delta
	return [][]asyncStep{{
		{"a@1", deltaUpdate(specs, "a", 1, 0.5), ""},
		{"a@1 again", deltaUpdate(specs, "a", 1, 0.5), rules.Duplicate},
		{"z@2", deltaUpdate(specs, "z", 2, 0.5), rules.FutureRound},
		{"b@1", deltaUpdate(specs, "b", 1, 0.25), ""},
	}, {
		{"c@1", deltaUpdate(specs, "c", 1, 1), ""},
		// Counted in version 1 → 2: a copy arriving a version later is
		// still a duplicate.
		{"a@1 late copy", deltaUpdate(specs, "a", 1, 0.5), rules.Duplicate},
		{"full weights", full, rules.WrongShape},
		{"y@3", deltaUpdate(specs, "y", 3, 0.5), rules.FutureRound},
		{"a@2", deltaUpdate(specs, "a", 2, -0.25), ""},
	}, {
		{"e@1", deltaUpdate(specs, "e", 1, 0.5), rules.StaleRound},
		{"huge", deltaUpdate(specs, "h", 3, 3), rules.NormBound},
		{"b@3", deltaUpdate(specs, "b", 3, 0.75), ""},
		{"c@2", deltaUpdate(specs, "c", 2, 0.375), ""},
	}}
}

var asyncWant = []float32{0.375, 0.5, 0.96875}

func asyncParams() coordinator.Async {
	return coordinator.Async{BufferSize: 2, Exponent: 1, MaxStaleness: 1}
}

// TestAsyncVersions runs the hand-worked example: each version is what
// the staleness-weighted buffer gives, the refusals carry their reasons,
// and every model is published once with its contributors.
func TestAsyncVersions(t *testing.T) {
	specs := testSpecs(t)
	srv := newFakeServer()
	rep := newReplies()
	var all []asyncStep
	for _, v := range asyncSteps(specs) {
		for _, s := range v {
			srv.updates <- rep.deliver(s.name, s.u, 0)
			all = append(all, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	res, err := newAsync(t, asyncConfig(3, asyncParams()), srv, nil).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		v := rep.get(s.name)
		if v.calls != 1 || v.accepted != (s.want == "") || (s.want != "" && !strings.HasPrefix(v.reason, string(s.want)+":")) {
			t.Errorf("%s: answered %+v, want one answer, reason %q", s.name, v, s.want)
		}
	}
	models := srv.models()
	if len(models) != 4 {
		t.Fatalf("published %d models, want 4 (initial and 3 versions)", len(models))
	}
	wantContrib := [][]string{{"a", "b"}, {"a", "c"}, {"b", "c"}}
	for i, m := range models[1:] {
		got, err := tensor.Decode(m.GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		if !bitsEqual(got, filled(specs, asyncWant[i])) {
			t.Errorf("version %d = %v, want every value %v", m.GetRound(), got, asyncWant[i])
		}
		if m.GetRound() != int64(i+2) || !m.GetTrainConfig().GetAsync() || !slices.Equal(m.GetContributors(), wantContrib[i]) {
			t.Errorf("version %d: round %d, async %v, contributors %v; want round %d, async, %v",
				i+2, m.GetRound(), m.GetTrainConfig().GetAsync(), m.GetContributors(), i+2, wantContrib[i])
		}
	}
	if !models[3].GetFinal() || models[2].GetFinal() {
		t.Errorf("final flags %v %v, want only the last", models[2].GetFinal(), models[3].GetFinal())
	}
	if got := res.Rounds[1].Strategy; got["staleness_max"] != 1 || got["stale_fraction"] != 0.5 {
		t.Errorf("version 2's staleness report %v, want max 1, half stale", got)
	}
	want := map[string]int64{"duplicate": 2, "future_round": 2, "wrong_shape": 1, "stale_round": 1, "norm_bound": 1}
	for r, n := range want {
		if res.Rejected[r] != n {
			t.Errorf("rejected %s = %d, want %d (all: %v)", r, res.Rejected[r], n, res.Rejected)
		}
	}
}

// TestAsyncResume restarts from version 3's record, as a crash after its
// transaction would, and replays the uncommitted updates: the last version
// is bit-identical, and the duplicate guard carried in the record still
// refuses a copy counted before the restart.
func TestAsyncResume(t *testing.T) {
	specs := testSpecs(t)
	srv := newFakeServer()
	rep := newReplies()
	steps := asyncSteps(specs)
	for _, v := range steps[:2] {
		for _, s := range v {
			srv.updates <- rep.deliver(s.name, s.u, 0)
		}
	}
	cfg := asyncConfig(3, asyncParams())
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	stop := make(chan struct{})
	go func() {
		// Stop the first run once version 3 is out.
		for m := range srv.publishes {
			if m.GetRound() == 3 {
				close(stop)
				return
			}
		}
	}()
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := newAsync(t, cfg, srv, nil).Run(rctx)
		done <- err
	}()
	select {
	case <-stop:
	case <-ctx.Done():
		t.Fatal("version 3 was not published")
	}
	rcancel()
	if err := <-done; err == nil {
		t.Fatal("first run ended without error before its last version")
	}
	models := srv.models()
	v3 := models[len(models)-1]
	if v3.GetRound() != 3 || len(v3.GetStrategyState()) == 0 {
		t.Fatalf("checkpoint round %d with state %q, want round 3 with the duplicate guard", v3.GetRound(), v3.GetStrategyState())
	}

	again := &resumingServer{fakeServer: newFakeServer(), latest: proto.Clone(v3).(*fdxv1.GlobalModel)}
	rep2 := newReplies()
	late := deltaUpdate(specs, "a", 2, -0.25) // counted in version 3
	again.updates <- rep2.deliver("a@2 copy", late, 0)
	for _, s := range steps[2] {
		again.updates <- rep2.deliver(s.name, s.u, 0)
	}
	res, err := newAsync(t, cfg, again, nil).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != 3 {
		t.Errorf("resumed from %d, want 3", res.Resumed)
	}
	if v := rep2.get("a@2 copy"); v.accepted || !strings.HasPrefix(v.reason, "duplicate:") {
		t.Errorf("copy of an update counted before the restart: %+v, want a duplicate", v)
	}
	last := again.models()
	got, err := tensor.Decode(last[len(last)-1].GetParams(), specs)
	if err != nil {
		t.Fatal(err)
	}
	if !bitsEqual(got, filled(specs, asyncWant[2])) || !last[len(last)-1].GetFinal() {
		t.Errorf("resumed final version %v (final %v), want every value %v", got, last[len(last)-1].GetFinal(), asyncWant[2])
	}
}

// TestTargetAccuracy ends a job at the first model that reaches the target,
// in both modes: that model is final and says how many rounds the job ran.
func TestTargetAccuracy(t *testing.T) {
	specs := testSpecs(t)
	// The "accuracy" of a model is its first parameter.
	eval := func(p [][]float32) (model.Metrics, error) { return model.Metrics{Accuracy: float64(p[0][0])}, nil }
	check := func(t *testing.T, srv *fakeServer, res *coordinator.Result, rounds int) {
		t.Helper()
		models := srv.models()
		last := models[len(models)-1]
		if len(res.Rounds) != rounds || !last.GetFinal() || last.GetNumRounds() != int64(rounds) || last.GetRound() != int64(rounds+1) {
			t.Fatalf("ran %d rounds, last model round %d final %v num_rounds %d; want %d rounds, then final",
				len(res.Rounds), last.GetRound(), last.GetFinal(), last.GetNumRounds(), rounds)
		}
		if err := rules.CheckModel(last, testJob); err != nil {
			t.Errorf("the early final model fails the clients' check: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()

	t.Run("async", func(t *testing.T) {
		srv := newFakeServer()
		rep := newReplies()
		for _, v := range asyncSteps(specs) {
			for _, s := range v {
				srv.updates <- rep.deliver(s.name, s.u, 0)
			}
		}
		cfg := asyncConfig(10, asyncParams())
		cfg.TargetAccuracy = 0.45 // version 3 (0.5) reaches it
		res, err := newAsync(t, cfg, srv, eval).Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		check(t, srv, res, 2)
	})
	t.Run("sync", func(t *testing.T) {
		srv := newFakeServer()
		rep := newReplies()
		for r := int64(1); r <= 3; r++ {
			v := float32(r) / 4 // FedAvg of one update: the model is v
			srv.updates <- rep.deliver("u", newUpdate(specs, "u", r, 10, filled(specs, v)), 0)
		}
		cfg := testConfig(1)
		cfg.NumRounds = 10
		cfg.TargetAccuracy = 0.5
		strat, err := strategy.New(strategy.Config{Name: "fedavg"})
		if err != nil {
			t.Fatal(err)
		}
		c, err := coordinator.New(cfg, srv, strat, eval, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		check(t, srv, res, 2)
	})
}

func TestAsyncConfigErrors(t *testing.T) {
	for _, a := range []coordinator.Async{
		{BufferSize: 0},
		{BufferSize: 1, MaxStaleness: -1},
		{BufferSize: 1, Exponent: math.NaN()},
		{BufferSize: 1, ServerLR: math.Inf(1)},
	} {
		if _, err := coordinator.New(asyncConfig(1, a), newFakeServer(), nil, nil, nil, nil); err == nil {
			t.Errorf("%+v: accepted", a)
		}
	}
	if _, err := coordinator.New(testConfig(1), newFakeServer(), nil, nil, nil, nil); err == nil {
		t.Error("a synchronous job without a strategy was accepted")
	}
}
