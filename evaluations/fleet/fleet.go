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
	"github.com/fdxkafka/fdxkafka/shared/channel"
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
	// Channel is ChannelKafka (the default) or ChannelGRPC: the channel the
	// aggregator serves and the fleet reaches it through.
	Channel string
	// Producers is how many Kafka producers send the fleet's updates.
	Producers int
	// Conns is how many gRPC connections the fleet's N clients share
	// (gRPC only): N clients must not mean N connections.
	Conns int
	// InFlight bounds the fleet's gRPC calls in flight at once, downloads
	// or updates (gRPC only).
	InFlight int
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
// ready with the address clients connect to once they may, and returns
// what it reported and, when it can tell them apart from the fleet's, its
// CPU and memory.
type aggregatorFunc func(ctx context.Context, cfg Config, ready func(addr string)) (*aggregatorResult, *AggregatorCost, error)

// aggregatorResult is what the aggregator reports at the end of its job.
type aggregatorResult struct {
	// Contributors per round.
	Contributors []int `json:"contributors"`
	// Traffic is what the aggregator's channel moved: on gRPC, every
	// model download it served.
	Traffic channel.Stats `json:"traffic"`
}

func (c *Config) defaults() {
	if c.Job == "" {
		c.Job = fmt.Sprintf("fleet-%d-%d", c.Clients, time.Now().UnixNano())
	}
	if c.Model == "" {
		c.Model = "logreg"
	}
	if c.Channel == "" {
		c.Channel = ChannelKafka
	}
	if c.Producers == 0 {
		c.Producers = 4
	}
	if c.Conns == 0 {
		c.Conns = defaultConns
	}
	if c.InFlight == 0 {
		c.InFlight = defaultInFlight
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
	case c.Conns < 1 || c.InFlight < 1:
		return fmt.Errorf("-conns %d, -inflight %d: want at least 1", c.Conns, c.InFlight)
	case c.Channel != ChannelKafka && c.Channel != ChannelGRPC:
		return fmt.Errorf("-channel %q: want %q or %q", c.Channel, ChannelKafka, ChannelGRPC)
	case c.Channel == ChannelGRPC && (c.Brokers != "" || len(c.KafkaProperties) > 0):
		return errors.New("-broker and -kafka-config are for -channel kafka")
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
	Channel    string         `json:"channel"`
	Conns      int            `json:"conns,omitempty"`
	InFlight   int            `json:"in_flight,omitempty"`
	Rounds     []RoundReport  `json:"rounds"`
	Aggregator AggregatorCost `json:"aggregator"`
	// Traffic is what the aggregator's channel moved over the whole run,
	// by its own counters.
	Traffic channel.Stats `json:"aggregator_traffic"`
	// FleetCPUSeconds is this process's CPU (the fleet, and the embedded
	// broker if any) while the aggregator ran as a child.
	FleetCPUSeconds float64 `json:"fleet_cpu_s,omitempty"`
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
	if cfg.Channel == ChannelGRPC {
		brokerName = "none (gRPC)"
	} else if cfg.Brokers == "" {
		b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			return nil, err
		}
		defer b.Close()
		cfg.Brokers, brokerName = b.Addr(), "embedded (kfake, in process)"
	}
	rep := &Report{Job: cfg.Job, Broker: brokerName, Model: cfg.Model, Clients: cfg.Clients, Producers: cfg.Producers, Channel: cfg.Channel}
	if cfg.Channel == ChannelGRPC {
		rep.Producers, rep.Conns, rep.InFlight = 0, cfg.Conns, cfg.InFlight
	}

	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	// The fleet stops when the aggregator fails, and the aggregator when
	// the fleet does: neither waits out the timeout for the other.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	ready := make(chan struct{})
	var addr string // where clients connect, set before ready closes
	type aggResult struct {
		res  *aggregatorResult
		cost *AggregatorCost
		err  error
	}
	aggDone := make(chan aggResult, 1)
	runAgg := cfg.aggregator
	if runAgg == nil {
		runAgg = func(ctx context.Context, cfg Config, ready func(string)) (*aggregatorResult, *AggregatorCost, error) {
			r, err := runAggregator(ctx, cfg, ready)
			return r, nil, err
		}
	}
	go func() {
		var once sync.Once
		r, cost, err := runAgg(ctx, cfg, func(a string) { once.Do(func() { addr = a; close(ready) }) })
		if err != nil {
			fail(fmt.Errorf("aggregator: %w", err))
		}
		aggDone <- aggResult{r, cost, err}
	}()
	var rounds []RoundReport
	var genErr error
	select {
	case <-ready:
		if cfg.Channel == ChannelGRPC {
			rounds, genErr = generateGRPC(ctx, cfg, addr)
		} else {
			rounds, genErr = generate(ctx, cfg)
		}
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
	rep.Rounds, rep.Contributors, rep.Traffic = rounds, agg.res.Contributors, agg.res.Traffic
	if agg.cost != nil {
		rep.Aggregator = *agg.cost
		rep.FleetCPUSeconds = cpuSeconds(after) - cpuSeconds(before)
	} else {
		rep.Aggregator = AggregatorCost{
			InProcess:  true,
			CPUSeconds: cpuSeconds(after) - cpuSeconds(before),
			PeakRSSMB:  float64(after.Maxrss) / 1024,
			WallMs:     msSince(start),
		}
	}
	if cfg.Channel == ChannelGRPC {
		return rep, nil // no records to read back
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

// maxShards is MNIST's 60,000 training examples in shards of 10.
const maxShards = 6000

// runAggregator runs the aggregator for cfg until its job ends and returns
// the number of contributors of each round and its channel's traffic;
// ready runs, with the address clients connect to, once they may. It is
// the one place that knows the aggregator's API.
func runAggregator(ctx context.Context, cfg Config, ready func(addr string)) (*aggregatorResult, error) {
	cc := job.ChannelConfig{
		Transport:        job.Kafka,
		Brokers:          cfg.Brokers,
		KafkaProperties:  cfg.KafkaProperties,
		UpdatePartitions: cfg.UpdatePartitions,
	}
	if cfg.Channel == ChannelGRPC {
		// Loopback, any free port: the fleet runs on the same machine.
		cc = job.ChannelConfig{Transport: job.GRPC, Listen: "127.0.0.1:0"}
	}
	r, err := job.Spec{
		Job:      cfg.Job,
		Seed:     cfg.Seed,
		Rounds:   job.RoundsSpec{MinClients: cfg.Clients, TargetClients: cfg.Clients, NumRounds: cfg.Rounds},
		Training: job.TrainingSpec{Model: cfg.Model},
		Data: job.DataSpec{
			// Numeric client ids k take shard k mod N: at most maxShards
			// shards keep every shard at 10 MNIST examples or more, so
			// that 100,000 clients claiming -examples 10 stay within
			// their shards.
			Partition:    dataset.PartitionSpec{Scheme: dataset.SchemeIID, NumPartitions: min(cfg.Clients, maxShards)},
			EvalExamples: cfg.EvalExamples,
		},
	}.Resolve(nil)
	if err != nil {
		return nil, err
	}
	res, err := job.RunOn(ctx, r, cc, job.Env{Log: cfg.Log.With("part", "aggregator")}, ready)
	if err != nil {
		return nil, err
	}
	out := &aggregatorResult{Contributors: make([]int, len(res.Rounds)), Traffic: res.Stats}
	for i, r := range res.Rounds {
		out.Contributors[i] = len(r.Contributors)
	}
	return out, nil
}

func cpuSeconds(r syscall.Rusage) float64 {
	return time.Duration(r.Utime.Nano() + r.Stime.Nano()).Seconds()
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
