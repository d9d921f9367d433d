// Command stress runs the PoC's planned evaluation of Kafka against gRPC:
// by default 100 clients, half of them invoking the Cloud Function's HTTP
// handler and half long-running local clients, 5 rounds with minclients 100,
// once over Kafka (embedded broker, or -broker) and once over gRPC. It prints
// a markdown table, writes a JSON report and PNG plots. With -sweep it runs
// once per number of clients with lightweight clients instead, and plots how
// the costs grow. evaluations/README.md defines every figure.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/harness"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

func main() { cli.Main("stress", run) }

// sweepDefaults are the lightweight settings a sweep uses for every flag
// the command line leaves unset: small synthetic shards, few rounds, and
// function clients invoked once per round from a bounded pool, so that a
// thousand clients fit on two cores. The figures of interest are the
// transport's, which do not depend on how much a client learns.
var sweepDefaults = map[string]string{
	"dataset":       "synthetic",
	"max-examples":  "20",
	"rounds":        "2",
	"eval-examples": "500",
	"invocation":    string(harness.PerRound),
	"max-inflight":  "64",
	"overhead":      "0",
}

type options struct {
	cfg       harness.Config
	channels  string
	invoc     string
	kafkaConf string
	jsonPath  string
	plots     string
	sweep     string
	logLevel  string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	c := &o.cfg
	fs := flag.NewFlagSet("stress", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.Clients, "clients", 100, "federated clients; every round waits for all of them (minclients = clients)")
	fs.IntVar(&c.Rounds, "rounds", 5, "training rounds")
	fs.StringVar(&o.channels, "channels", "kafka,grpc,grpc-durable", "channels to evaluate, in order (grpc-durable: gRPC with the aggregator's --state-file)")
	fs.IntVar(&c.OverheadInvocations, "overhead", 20, "cold and warm invocations per channel for the invocation overhead probe (0: none)")
	fs.Float64Var(&c.HTTPShare, "http-share", 0.5, "fraction of clients invoking the function's HTTP handler; the rest are long-running local clients")
	fs.StringVar(&o.invoc, "invocation", string(harness.PerJob), "how function clients are invoked: job (once, taking part in every round) or round (once per round, when its model is published)")
	fs.IntVar(&c.MaxInFlight, "max-inflight", 0, "with -invocation round: most concurrent function invocations (0: a whole round at once)")
	fs.IntVar(&c.DialConcurrency, "dial-concurrency", 16, "most long-running clients connecting at the same time")
	fs.StringVar(&c.Model, "model", "logreg", "logreg or 2nn")
	fs.StringVar(&c.Dataset, "dataset", "mnist", "mnist or synthetic")
	fs.StringVar(&c.Partition, "partition", "iid", "iid, shards or dirichlet")
	fs.IntVar(&c.MaxExamples, "max-examples", 0, "cap on each client's shard (0: whole shard)")
	fs.IntVar(&c.EvalExamples, "eval-examples", 2000, "test examples the aggregator scores each round (0: all)")
	fs.Uint64Var(&c.Seed, "seed", 1, "job seed: initial model, partition, client shuffles")
	fs.StringVar(&c.Broker, "broker", "", "a real Kafka broker's bootstrap list for the Kafka runs (default: an embedded in-process broker)")
	fs.StringVar(&o.kafkaConf, "kafka-config", "", "Kafka client properties file (SASL/TLS) for -broker")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Minute, "limit on each channel's run")
	fs.StringVar(&o.jsonPath, "json", "", "JSON report file (default: <plots>/stress.json, or <plots>/sweep.json with -sweep)")
	fs.StringVar(&o.plots, "plots", filepath.Join("evaluations", "results"), "directory for the PNG plots (empty: no plots)")
	fs.StringVar(&o.sweep, "sweep", "", "comma-separated client counts (e.g. 10,100,1000): one lightweight run per count")
	fs.StringVar(&o.logLevel, "log-level", "info", "progress log level on stderr: debug, info, warn or error")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	if o.sweep != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range sweepDefaults {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, fmt.Errorf("sweep default -%s=%s: %w", name, v, err)
				}
			}
		}
	}
	c.Channels = harness.ParseChannels(o.channels)
	c.Invocation = harness.Invocation(o.invoc)
	if o.kafkaConf != "" {
		props, err := kafkachan.LoadProperties(o.kafkaConf)
		if err != nil {
			return nil, err
		}
		c.KafkaProperties = props
	}
	if o.jsonPath == "" {
		name := "stress.json"
		if o.sweep != "" {
			name = "sweep.json"
		}
		o.jsonPath = filepath.Join(o.plots, name)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	lvl, err := cli.LogLevel("-log-level", o.logLevel)
	if err != nil {
		return err
	}
	o.cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	if o.sweep != "" {
		return runSweep(ctx, o, stdout, stderr)
	}
	if err := o.cfg.Validate(); err != nil {
		return err
	}
	rep, err := harness.Run(ctx, o.cfg)
	if err != nil {
		return err
	}
	if rep.Setup.Lightweight {
		rep.Notes = append(rep.Notes, lightweightNote(rep.Setup))
	}
	if err := harness.WriteMarkdown(stdout, rep); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	if err := harness.WriteJSON(o.jsonPath, rep); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", o.jsonPath)
	if o.plots != "" {
		files, err := harness.WritePlots(o.plots, rep)
		if err != nil {
			return err
		}
		for _, f := range files {
			fmt.Fprintf(stderr, "wrote %s\n", f)
		}
	}
	fmt.Fprintf(stderr, "total wall time %.1f s\n", rep.WallMs/1000)
	return nil
}

func runSweep(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	sizes, err := harness.ParseSizes(o.sweep)
	if err != nil {
		return err
	}
	sw, err := harness.Sweep(ctx, o.cfg, sizes)
	if err != nil {
		return err
	}
	if len(sw.Runs) > 0 && sw.Runs[0].Setup.Lightweight {
		sw.Notes = append(sw.Notes, lightweightNote(sw.Runs[0].Setup))
	}
	if err := harness.WriteSweepMarkdown(stdout, sw); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	if err := harness.WriteJSON(o.jsonPath, sw); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", o.jsonPath)
	if o.plots != "" {
		files, err := harness.WriteSweepPlots(o.plots, sw)
		if err != nil {
			return err
		}
		for _, f := range files {
			fmt.Fprintf(stderr, "wrote %s\n", f)
		}
	}
	fmt.Fprintf(stderr, "total wall time %.1f s\n", sw.WallMs/1000)
	return nil
}

func lightweightNote(s harness.Setup) string {
	return fmt.Sprintf("Lightweight clients: each trains on at most %d examples of the synthetic data set, "+
		"so that every client fits in one process on a small machine; messages, bytes and propagation "+
		"times measure the transport, while accuracies are not comparable with MNIST runs.", s.MaxExamples)
}
