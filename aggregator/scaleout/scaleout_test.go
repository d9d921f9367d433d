package scaleout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

const (
	envWorker   = "FDX_SCALEOUT_TEST_WORKER" // brokers,job,name
	envKillAt   = "FDX_SCALEOUT_TEST_KILL_ROUND"
	partitions  = 4
	testClients = 12
	testRounds  = 3
)

// TestMain doubles as a worker process for the kill test.
func TestMain(m *testing.M) {
	if spec := os.Getenv(envWorker); spec != "" {
		os.Exit(workerMain(spec))
	}
	os.Exit(m.Run())
}

func testConfig(job string) Config {
	return Config{Job: round.Job{ID: job, NumRounds: testRounds, MinClients: testClients, NormFactor: 10,
		Train: &fdxv1.TrainConfig{Model: "logreg", Seed: 5}, InDim: 16, Classes: 4}}
}

func serverOptions(brokers, job string) kafkachan.ServerOptions {
	// Small chunks: partials (and models) travel in several records.
	return kafkachan.ServerOptions{Options: kafkachan.Options{Brokers: brokers, Job: job, ChunkBytes: 512},
		TopicOptions: kafkachan.TopicOptions{UpdatePartitions: partitions}}
}

// workerMain runs one worker; with envKillAt it SIGKILLs itself inside
// its first transaction of that round, after the partial and the offsets
// are sent and before the commit.
func workerMain(spec string) int {
	var brokers, job, name string
	if _, err := fmt.Sscanf(spec, "%s %s %s", &brokers, &job, &name); err != nil {
		fmt.Fprintln(os.Stderr, "bad worker spec:", err)
		return 2
	}
	opt := serverOptions(brokers, job)
	if k := os.Getenv(envKillAt); k != "" {
		at, _ := strconv.ParseInt(k, 10, 64)
		opt.BeforeCommit = func(round int64) {
			if round == at {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	ctx := context.Background()
	ch, err := kafkachan.NewWorker(ctx, opt, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ch.Close()
	w, err := NewWorker(testConfig(job), name, ch, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w.FlushEvery = 2
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// drive plays the clients: for each round, once its model is visible,
// every client sends an update derived from the model by a perturbation
// seeded by (round, client), so two jobs with the same models get the same
// updates. It returns the job's models, from round 1 to the final one.
func drive(ctx context.Context, t *testing.T, brokers, job string, cfg Config) []*fdxv1.GlobalModel {
	t.Helper()
	return driveWith(ctx, t, brokers, job, cfg, nil)
}

// driveWith is drive, calling midRound (when set) after the first half of
// each round's updates is sent: the round is open and cannot close yet.
func driveWith(ctx context.Context, t *testing.T, brokers, job string, cfg Config, midRound func(round int64)) []*fdxv1.GlobalModel {
	t.Helper()
	cl, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: brokers, Job: job}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer cl.Close()
	specs, err := cfgSpecs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for r := int64(1); r <= int64(cfg.NumRounds); r++ {
		m, err := cl.Model(ctx, r)
		if err != nil {
			t.Fatalf("job %s: model round %d: %v", job, r, err)
		}
		global, err := tensor.Decode(m.GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range testClients {
			if i == testClients/2 && midRound != nil {
				midRound(r)
			}
			rng := rand.New(rand.NewPCG(uint64(r), uint64(i)))
			local := make([][]float32, len(global))
			for k, g := range global {
				local[k] = make([]float32, len(g))
				for j, x := range g {
					local[k][j] = x + float32(rng.NormFloat64()*0.05)
				}
			}
			u := &fdxv1.Update{Job: job, ClientId: clientName(i), BaseRound: r,
				NumExamples: int64(10 + i%7), Params: tensor.Encode(local, specs)}
			if err := cl.Submit(ctx, u); err != nil {
				t.Fatalf("submit: %v", err)
			}
		}
	}
	if _, err := cl.Model(ctx, int64(cfg.NumRounds)+1); err != nil {
		t.Fatalf("job %s: final model: %v", job, err)
	}
	hist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: brokers, Job: job})
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	return hist
}

func clientName(i int) string { return fmt.Sprintf("c%03d", i) }

// reference runs the single aggregator on its own job and returns its
// models.
func reference(ctx context.Context, t *testing.T, brokers string) []*fdxv1.GlobalModel {
	t.Helper()
	job := kafkatest.Job(t) + "-single"
	cfg := testConfig(job)
	srv, err := kafkachan.NewServer(ctx, serverOptions(brokers, job))
	if err != nil {
		t.Fatalf("server: %v", err)
	}
	defer srv.Close()
	strat, err := strategy.New(strategy.Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	single := cfg.Job
	single.ID = job
	co, err := coordinator.New(coordinator.Config{Job: single}, srv, strat, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := co.Run(ctx); done <- err }()
	hist := drive(ctx, t, brokers, job, cfg)
	if err := <-done; err != nil {
		t.Fatalf("single aggregator: %v", err)
	}
	return hist
}

// sameModels asserts two jobs' model histories agree bit for bit on
// everything the aggregation decides.
func sameModels(t *testing.T, want, got []*fdxv1.GlobalModel) {
	t.Helper()
	if len(got) != len(want) || len(want) != testRounds+1 {
		t.Fatalf("%d models, want %d (reference has %d)", len(got), testRounds+1, len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if g.GetRound() != w.GetRound() || g.GetFinal() != w.GetFinal() {
			t.Fatalf("model %d: round %d final %v, want %d %v", i, g.GetRound(), g.GetFinal(), w.GetRound(), w.GetFinal())
		}
		if len(g.GetParams()) != len(w.GetParams()) {
			t.Fatalf("round %d: %d tensors, want %d", w.GetRound(), len(g.GetParams()), len(w.GetParams()))
		}
		for k := range w.GetParams() {
			if !bytes.Equal(g.GetParams()[k].GetData(), w.GetParams()[k].GetData()) {
				t.Fatalf("round %d tensor %d differs from the single aggregator's", w.GetRound(), k)
			}
		}
		if fmt.Sprint(g.GetContributors()) != fmt.Sprint(w.GetContributors()) {
			t.Fatalf("round %d contributors %v, want %v", w.GetRound(), g.GetContributors(), w.GetContributors())
		}
		if gm, wm := g.GetMetrics()[round.MetricMedianNorm], w.GetMetrics()[round.MetricMedianNorm]; gm != wm {
			t.Fatalf("round %d median norm %v, want %v", w.GetRound(), gm, wm)
		}
	}
}

type leaderResult struct {
	recs []RoundRecord
	err  error
}

func startLeader(ctx context.Context, t *testing.T, brokers, job string) <-chan leaderResult {
	t.Helper()
	return startLeaderWith(ctx, t, serverOptions(brokers, job), testConfig(job))
}

func startLeaderWith(ctx context.Context, t *testing.T, opt kafkachan.ServerOptions, cfg Config) <-chan leaderResult {
	t.Helper()
	ch, err := kafkachan.NewLeader(ctx, opt)
	if err != nil {
		t.Fatalf("leader: %v", err)
	}
	l, err := NewLeader(cfg, ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan leaderResult, 1)
	go func() {
		defer ch.Close()
		_, recs, err := l.Run(ctx)
		done <- leaderResult{recs, err}
	}()
	return done
}

func startWorker(ctx context.Context, t *testing.T, wg *sync.WaitGroup, brokers, job, name string, flushEvery int) *kafkachan.Server {
	t.Helper()
	return startWorkerWith(ctx, t, wg, serverOptions(brokers, job), testConfig(job), name, flushEvery)
}

func startWorkerWith(ctx context.Context, t *testing.T, wg *sync.WaitGroup, opt kafkachan.ServerOptions, cfg Config, name string, flushEvery int) *kafkachan.Server {
	t.Helper()
	ch, err := kafkachan.NewWorker(ctx, opt, name)
	if err != nil {
		t.Fatalf("worker %s: %v", name, err)
	}
	w, err := NewWorker(cfg, name, ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.FlushEvery = flushEvery
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer ch.Close()
		if err := w.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker %s: %v", name, err)
		}
	}()
	return ch
}

// waitAssigned waits until every worker holds partitions: the group has
// settled, so the round's updates are spread over all of them.
func waitAssigned(ctx context.Context, t *testing.T, ws ...*kafkachan.Server) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		all := true
		for _, w := range ws {
			all = all && w.Assigned() > 0
		}
		if all {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workers never all held partitions: %v", ctx.Err())
		case <-tick.C:
		}
	}
}

func TestScaleOutBitIdentical(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	want := reference(ctx, t, brokers)

	job := kafkatest.Job(t)
	done := startLeader(ctx, t, brokers, job)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	w0 := startWorker(wctx, t, &wg, brokers, job, "w0", 3)
	w1 := startWorker(wctx, t, &wg, brokers, job, "w1", 5)
	waitAssigned(ctx, t, w0, w1)
	got := drive(ctx, t, brokers, job, testConfig(job))
	res := <-done
	if res.err != nil {
		t.Fatalf("leader: %v", res.err)
	}
	for _, r := range res.recs {
		t.Logf("round %d: %d clients from %d partials, per worker %v", r.Round, r.Clients, r.Partials, r.Workers)
		if len(r.Workers) != 2 {
			t.Errorf("round %d merged updates of %d workers, want 2", r.Round, len(r.Workers))
		}
	}
	sameModels(t, want, got)
}

// TestScaleOutWorkerKilled SIGKILLs a worker process inside its partial's
// transaction in round 2 and restarts it: the job's models must equal the
// single aggregator's, so no update was lost or counted twice.
func TestScaleOutWorkerKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	want := reference(ctx, t, brokers)

	job := kafkatest.Job(t)
	done := startLeader(ctx, t, brokers, job)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	// w0 alone until it dies, so that it holds round 2's updates; w1
	// joins when it is restarted, a rebalance on top of the fencing.
	spec := brokers + " " + job + " w0"
	victim := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	victim.Env = append(os.Environ(), envWorker+"="+spec, envKillAt+"=2")
	victim.Stderr = os.Stderr
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	killed := make(chan error, 1)
	go func() { killed <- victim.Wait() }()
	restarted := make(chan error, 1)
	go func() {
		err := <-killed
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			restarted <- fmt.Errorf("worker w0 ended with %v, want SIGKILL", err)
			return
		}
		startWorker(wctx, t, &wg, brokers, job, "w1", 4)
		again := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		again.Env = append(os.Environ(), envWorker+"="+spec)
		again.Stderr = os.Stderr
		restarted <- again.Run()
	}()
	got := drive(ctx, t, brokers, job, testConfig(job))
	res := <-done
	if res.err != nil {
		t.Fatalf("leader: %v", res.err)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("worker w0: %v", err)
	}
	for _, r := range res.recs {
		t.Logf("round %d: %d clients from %d partials, per worker %v", r.Round, r.Clients, r.Partials, r.Workers)
	}
	sameModels(t, want, got)
}

func TestOnlyFedAvg(t *testing.T) {
	if err := CheckStrategy("fedadam"); err == nil {
		t.Fatal("fedadam accepted for scale-out")
	}
	if err := CheckStrategy("fedavg"); err != nil {
		t.Fatal(err)
	}
}

func TestPartialRoundTrip(t *testing.T) {
	p := &partial{Round: 3, Count: 2, Weight: 17, Contributors: []string{"a", "b"}, Norms: []float64{1.5, 2},
		Rejected: map[string]int64{"stale_round": 4}, Acc: []byte{1, 2, 3}}
	b := p.marshal()
	q, err := unmarshalPartial(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(q) != fmt.Sprint(p) {
		t.Fatalf("round trip: %+v, want %+v", q, p)
	}
	for n := range len(b) {
		if _, err := unmarshalPartial(b[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: decoded", n)
		}
	}
}

// cfgSpecs returns the tensor shapes of cfg's job.
func cfgSpecs(cfg Config) ([]tensor.Spec, error) {
	m, err := cfg.job()
	if err != nil {
		return nil, err
	}
	return m.Specs(), nil
}
