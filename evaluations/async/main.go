// Command async compares synchronous FedAvg with asynchronous FedBuff when
// clients' speeds differ: a fraction of the clients (-slow-fraction) take
// -slow-factor times longer between fetching a model and sending their
// update than the others (-fast-delay), as slower devices would. Both jobs
// run on the same machine, one after the other, with the same clients,
// data and seed, and end at -target test accuracy; the command reports the
// time each took to get there and the ratio.
//
//	go run ./evaluations/async
//	go run ./evaluations/async -clients 40 -slow-fraction 0.25 -buffer-size 10 -broker 127.0.0.1:9092
//
// It is a benchmark, not a test: the figures depend on the machine.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "async:", err)
		os.Exit(1)
	}
}

// config is one comparison.
type config struct {
	brokers      string
	clients      int
	slowFraction float64
	fastDelay    time.Duration
	slowFactor   float64
	bufferSize   int
	exponent     float64
	target       float64
	maxRounds    int
	maxExamples  int
	evalExamples int
	seed         uint64
	timeout      time.Duration
}

// outcome is one job's run.
type outcome struct {
	Mode     string  `json:"mode"`
	Reached  bool    `json:"reached_target"`
	Rounds   int     `json:"rounds"`
	Accuracy float64 `json:"final_accuracy"`
	// Seconds runs from publishing the initial model to publishing the
	// one that reached the target (the sum of the rounds' durations).
	Seconds float64 `json:"seconds_to_target"`
	// Updates counts the updates folded into the models.
	Updates int `json:"updates"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("async", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var jsonPath string
	fs.StringVar(&c.brokers, "broker", "", "Kafka bootstrap list (default: an embedded broker per job)")
	fs.IntVar(&c.clients, "clients", 20, "clients; a sync round waits for all of them")
	fs.Float64Var(&c.slowFraction, "slow-fraction", 0.2, "fraction of the clients that are slow")
	fs.DurationVar(&c.fastDelay, "fast-delay", 500*time.Millisecond, "a fast client's time from fetching a model to sending its update")
	fs.Float64Var(&c.slowFactor, "slow-factor", 10, "how many times longer a slow client takes")
	fs.IntVar(&c.bufferSize, "buffer-size", 5, "FedBuff's K: updates per version")
	fs.Float64Var(&c.exponent, "staleness-exponent", 0.5, "FedBuff's a in 1/(1+τ)^a")
	fs.Float64Var(&c.target, "target", 0.88, "test accuracy that ends each job")
	fs.IntVar(&c.maxRounds, "max-rounds", 300, "rounds (versions) after which a job stops even below the target")
	fs.IntVar(&c.maxExamples, "max-examples", 0, "cap on each client's shard (0: the whole shard)")
	fs.IntVar(&c.evalExamples, "eval-examples", 0, "test examples scored after each round (0: the whole test set)")
	fs.Uint64Var(&c.seed, "seed", 1, "job seed")
	fs.DurationVar(&c.timeout, "timeout", 20*time.Minute, "limit on each job")
	fs.StringVar(&jsonPath, "json", "", "also write the outcomes as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.clients < 1 || c.slowFraction < 0 || c.slowFraction > 1 || c.slowFactor < 1 || c.bufferSize < 1 || c.bufferSize > c.clients {
		return fmt.Errorf("want clients ≥ 1, slow-fraction in [0, 1], slow-factor ≥ 1 and 1 ≤ buffer-size ≤ clients")
	}
	slow := int(float64(c.clients)*c.slowFraction + 0.5)
	shard := "whole shards"
	if c.maxExamples > 0 {
		shard = fmt.Sprintf("shards capped at %d examples", c.maxExamples)
	}
	fmt.Fprintf(stdout, "%d clients, %d slow (%.0f ms vs %.0f ms per update), target accuracy %.2f, %s\n",
		c.clients, slow, c.slowFactor*ms(c.fastDelay), ms(c.fastDelay), c.target, shard)
	data := dataset.NewCatalog()
	var outs []outcome
	for _, mode := range []string{job.ModeSync, job.ModeAsync} {
		o, err := runJob(ctx, c, mode, slow, data, stderr)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		outs = append(outs, o)
	}
	fmt.Fprintf(stdout, "\n| mode | rounds/versions | updates | final accuracy | time to %.2f |\n|---|---|---|---|---|\n", c.target)
	for _, o := range outs {
		name := "sync FedAvg"
		if o.Mode == job.ModeAsync {
			name = fmt.Sprintf("FedBuff (K=%d, a=%g)", c.bufferSize, c.exponent)
		}
		reached := fmt.Sprintf("%.2f s", o.Seconds)
		if !o.Reached {
			reached = "not reached: " + reached
		}
		fmt.Fprintf(stdout, "| %s | %d | %d | %.4f | %s |\n", name, o.Rounds, o.Updates, o.Accuracy, reached)
	}
	if outs[0].Reached && outs[1].Reached {
		fmt.Fprintf(stdout, "\nFedBuff reached %.2f %.1f× faster than sync FedAvg\n", c.target, outs[0].Seconds/outs[1].Seconds)
	}
	if jsonPath != "" {
		b, err := json.MarshalIndent(map[string]any{"outcomes": outs, "clients": c.clients, "slow": slow,
			"fast_delay_ms": ms(c.fastDelay), "slow_factor": c.slowFactor, "buffer_size": c.bufferSize, "target": c.target}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runJob runs one job to the target with the clients, the last slow of
// them slow.
func runJob(ctx context.Context, c config, mode string, slow int, data *dataset.Catalog, stderr io.Writer) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	spec := job.Spec{
		Job:    fmt.Sprintf("async-bench-%s-%d", mode, time.Now().UnixNano()),
		Seed:   c.seed,
		Rounds: job.RoundsSpec{Mode: mode, MinClients: c.clients, NumRounds: c.maxRounds, TargetAccuracy: c.target},
		Data: job.DataSpec{MaxExamples: c.maxExamples, EvalExamples: c.evalExamples,
			Partition: dataset.PartitionSpec{NumPartitions: c.clients}},
	}
	if mode == job.ModeAsync {
		spec.Rounds.BufferSize, spec.Rounds.StalenessExponent = c.bufferSize, c.exponent
		if c.exponent == 0 {
			spec.Rounds.StalenessExponent = -1
		}
	}
	r, err := spec.Resolve(data)
	if err != nil {
		return outcome{}, err
	}
	cc := job.ChannelConfig{Transport: job.Kafka, Brokers: c.brokers}
	if c.brokers == "" {
		cc = job.ChannelConfig{Transport: job.EmbeddedKafka, Listen: "127.0.0.1:0"}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Once the job is over, clients still training or sending have nothing
	// left to do (and an embedded broker is gone): stop them.
	clientCtx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var wg sync.WaitGroup
	clientErrs := make(chan error, c.clients)
	ready := func(addr string) {
		p := &participant.Participant{Data: data}
		for i := range c.clients {
			delay := c.fastDelay
			if i >= c.clients-slow {
				delay = time.Duration(float64(c.fastDelay) * c.slowFactor)
			}
			t := participant.Target{Channel: participant.ChannelKafka, Broker: addr, Job: spec.Job, ClientID: strconv.Itoa(i)}
			wg.Go(func() {
				if err := fedtest.FollowSlowly(clientCtx, p, participant.Transport{}, t, delay); err != nil && clientCtx.Err() == nil {
					clientErrs <- fmt.Errorf("client %d: %w", i, err)
				}
			})
		}
	}
	res, err := job.RunOn(ctx, r, cc, job.Env{Log: log}, ready)
	stopClients()
	wg.Wait()
	if err != nil {
		return outcome{}, err
	}
	close(clientErrs)
	for err := range clientErrs {
		fmt.Fprintln(stderr, "async:", err)
	}
	o := outcome{Mode: mode, Rounds: len(res.Rounds)}
	for _, r := range res.Rounds {
		o.Seconds += r.DurationMs / 1000
		o.Updates += r.Clients
		o.Accuracy = r.Accuracy
	}
	o.Reached = o.Accuracy >= c.target
	fmt.Fprintf(stderr, "%s: %d rounds, accuracy %.4f, %.2f s\n", mode, o.Rounds, o.Accuracy, o.Seconds)
	return o, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
