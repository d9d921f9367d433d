package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
)

// Config is one fleet run.
type Config struct {
	// Brokers is the Kafka bootstrap list; empty starts an embedded broker
	// (in process, in memory).
	Brokers         string
	KafkaProperties map[string]string
	Job             string
	// Clients is N: every round waits for exactly this many updates, from
	// client ids 0..N-1.
	Clients int
	Rounds  int
	Model   string // logreg or 2nn
	// Producers is how many Kafka producers send the fleet's updates.
	Producers int
	// Variants is how many full perturbations of the model are built per
	// round; client i uses variant i mod Variants, and its own perturbation
	// of the last tensor, so that no two updates are equal.
	Variants int
	// Spread is the standard deviation of the perturbations.
	Spread float64
	// Examples is every update's num_examples.
	Examples         int64
	Seed             uint64
	UpdatePartitions int
	// EvalExamples is the test set the aggregator scores each round on: small,
	// since scoring is not what is measured but adds to the round close.
	EvalExamples int
	Timeout      time.Duration
	Log          *slog.Logger
	// aggregator runs the aggregator; nil runs it in this process.
	aggregator aggregatorFunc
}

// aggregatorFunc runs the aggregator for cfg until its job ends, calling
// ready once clients may connect, and returns the contributors per round
// and, when it can tell them apart from the fleet's, its CPU and memory.
type aggregatorFunc func(ctx context.Context, cfg Config, ready func()) ([]int, *AggregatorCost, error)

func (c *Config) defaults() {
	if c.Job == "" {
		c.Job = fmt.Sprintf("fleet-%d-%d", c.Clients, time.Now().UnixNano())
	}
	if c.Model == "" {
		c.Model = "logreg"
	}
	if c.Producers == 0 {
		c.Producers = 4
	}
	if c.Variants == 0 {
		c.Variants = 8
	}
	if c.Spread == 0 {
		c.Spread = 1e-3
	}
	if c.Examples == 0 {
		c.Examples = 10
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.UpdatePartitions == 0 {
		c.UpdatePartitions = 4
	}
	if c.EvalExamples == 0 {
		c.EvalExamples = 100
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	switch {
	case c.Clients < 1:
		return fmt.Errorf("-clients %d: want at least 1", c.Clients)
	case c.Rounds < 1:
		return fmt.Errorf("-rounds %d: want at least 1", c.Rounds)
	case c.Producers < 1 || c.Variants < 1:
		return fmt.Errorf("-producers %d, -variants %d: want at least 1", c.Producers, c.Variants)
	case c.Spread < 0 || math.IsNaN(c.Spread) || math.IsInf(c.Spread, 0):
		return fmt.Errorf("-spread %g: want a finite value ≥ 0", c.Spread)
	}
	return nil
}

// Report is what a fleet run measured.
type Report struct {
	Job        string         `json:"job"`
	Broker     string         `json:"broker"`
	Model      string         `json:"model"`
	Clients    int            `json:"clients"`
	Producers  int            `json:"producers"`
	Rounds     []RoundReport  `json:"rounds"`
	Aggregator AggregatorCost `json:"aggregator"`
	// Raw is a bare consumer reading and decoding the same records.
	Raw RawReport `json:"raw"`
	// IngestToRaw is the aggregator's median ingest rate over the raw rate.
	IngestToRaw float64 `json:"ingest_to_raw"`
	// Contributors per round, as the aggregator reported them.
	Contributors []int `json:"contributors"`
}

// AggregatorCost is the aggregator's CPU and memory. In process (the
// test), the figures are the whole process's, generator included.
type AggregatorCost struct {
	InProcess  bool    `json:"in_process"`
	CPUSeconds float64 `json:"cpu_s"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
	WallMs     float64 `json:"wall_ms"`
	// Go is the Go runtime's share, when the aggregator ran as a child.
	Go *GoMemory `json:"go,omitempty"`
}

// Run runs the aggregator in this process (through runAggregator) and the
// fleet against it, then the raw consumer.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	brokerName := cfg.Brokers
	if cfg.Brokers == "" {
		b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			return nil, err
		}
		defer b.Close()
		cfg.Brokers, brokerName = b.Addr(), "embedded (kfake, in process)"
	}
	rep := &Report{Job: cfg.Job, Broker: brokerName, Model: cfg.Model, Clients: cfg.Clients, Producers: cfg.Producers}

	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	// The fleet stops when the aggregator fails, and the aggregator when
	// the fleet does: neither waits out the timeout for the other.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	ready := make(chan struct{})
	type aggResult struct {
		contributors []int
		cost         *AggregatorCost
		err          error
	}
	aggDone := make(chan aggResult, 1)
	runAgg := cfg.aggregator
	if runAgg == nil {
		runAgg = func(ctx context.Context, cfg Config, ready func()) ([]int, *AggregatorCost, error) {
			c, err := runAggregator(ctx, cfg, ready)
			return c, nil, err
		}
	}
	go func() {
		var once sync.Once
		c, cost, err := runAgg(ctx, cfg, func() { once.Do(func() { close(ready) }) })
		if err != nil {
			fail(fmt.Errorf("aggregator: %w", err))
		}
		aggDone <- aggResult{c, cost, err}
	}()
	var rounds []RoundReport
	var genErr error
	select {
	case <-ready:
		rounds, genErr = generate(ctx, cfg)
	case <-ctx.Done():
		genErr = context.Cause(ctx)
	}
	if genErr != nil {
		fail(genErr)
	}
	agg := <-aggDone
	if err := errors.Join(genErr, agg.err); err != nil {
		return nil, err
	}
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	rep.Rounds, rep.Contributors = rounds, agg.contributors
	if agg.cost != nil {
		rep.Aggregator = *agg.cost
	} else {
		rep.Aggregator = AggregatorCost{
			InProcess:  true,
			CPUSeconds: cpuSeconds(after) - cpuSeconds(before),
			PeakRSSMB:  float64(after.Maxrss) / 1024,
			WallMs:     msSince(start),
		}
	}
	raw, err := rawRate(ctx, cfg, cfg.Clients*len(rounds))
	if err != nil {
		return nil, fmt.Errorf("raw consumer: %w", err)
	}
	rep.Raw = raw
	if raw.UpdatesPerSec > 0 {
		rep.IngestToRaw = medianIngest(rounds) / raw.UpdatesPerSec
	}
	return rep, nil
}

// runAggregator runs the aggregator for cfg until its job ends and returns
// the number of contributors of each round; ready runs once clients may
// connect. It is the one place that knows the aggregator's API.
// maxShards is MNIST's 60,000 training examples in shards of 10.
const maxShards = 6000

func runAggregator(ctx context.Context, cfg Config, ready func()) ([]int, error) {
	res, err := job.RunOn(ctx, job.Spec{
		Job:           cfg.Job,
		MinClients:    cfg.Clients,
		TargetClients: cfg.Clients,
		NumRounds:     cfg.Rounds,
		Model:         cfg.Model,
		// Numeric client ids k take shard k mod N: at most maxShards
		// shards keep every shard at 10 MNIST examples or more, so that
		// 100,000 clients claiming -examples 10 stay within their shards.
		Partition:    dataset.PartitionSpec{Scheme: dataset.SchemeIID, NumPartitions: min(cfg.Clients, maxShards)},
		Seed:         cfg.Seed,
		EvalExamples: cfg.EvalExamples,
	}, job.ChannelConfig{
		Transport:        job.Kafka,
		Brokers:          cfg.Brokers,
		KafkaProperties:  cfg.KafkaProperties,
		UpdatePartitions: cfg.UpdatePartitions,
	}, job.Env{Log: cfg.Log.With("part", "aggregator")}, func(string) { ready() })
	if err != nil {
		return nil, err
	}
	out := make([]int, len(res.Rounds))
	for i, r := range res.Rounds {
		out[i] = len(r.Contributors)
	}
	return out, nil
}

func cpuSeconds(r syscall.Rusage) float64 {
	return time.Duration(r.Utime.Nano() + r.Stime.Nano()).Seconds()
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
