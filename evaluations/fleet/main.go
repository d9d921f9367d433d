// Command fleet measures the aggregator's capacity with many clients: it
// runs the aggregator (aggregator/job, the same code as the binary) and a
// load generator that plays N clients through a few Kafka producers,
// sending pre-built, valid, distinct updates (seeded perturbations of each
// round's model, client ids 0..N-1) as soon as the round's model appears.
// No client trains, so N = 100,000 fits on one machine.
//
// It reports, per round, the aggregator's ingest rate (updates/s, MB/s),
// the round close time (last needed update acknowledged → next model
// visible to a reader), the aggregator's CPU and peak RSS (it runs as a
// child process, so these are its own), and, in the same run, the rate of a
// bare consumer that only decodes the same records.
//
// With -channel grpc the aggregator serves the gRPC channel instead, and
// the fleet plays its N clients over a few connections (-conns), at most
// -inflight calls at once: every round, N model downloads (the fan-out the
// aggregator itself serves on gRPC, timed and counted in bytes), then N
// SubmitUpdate calls. It reports the same figures, and the aggregator's
// egress, but no raw rate: there are no records to read back.
//
//	go run ./evaluations/fleet -clients 10000 -rounds 3
//	go run ./evaluations/fleet -clients 1000 -model 2nn -broker 127.0.0.1:9092
//	go run ./evaluations/fleet -clients 10000 -channel grpc -conns 8
//	go run ./evaluations/fleet -clients 10000 -rounds 2 -cpuprofile agg.pprof  # the aggregator child's profile
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// roleFlag makes the binary the aggregator child of a fleet run.
const roleAggregator = "aggregator"

func main() { cli.Main("fleet", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var role, kafkaConfig, jsonPath, logLevel, heapProfile, cpuProfile string
	var inProcess bool
	fs.StringVar(&cfg.Brokers, "broker", "", "Kafka bootstrap list (default: an embedded broker)")
	fs.StringVar(&kafkaConfig, "kafka-config", "", "Kafka client properties file (SASL/TLS) for -broker")
	fs.StringVar(&cfg.Job, "job", "", "job id (default: fleet-<clients>-<time>)")
	fs.IntVar(&cfg.Clients, "clients", 1000, "clients per round (client ids 0..N-1); every round waits for all")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds")
	fs.StringVar(&cfg.Model, "model", "logreg", "logreg or 2nn")
	fs.StringVar(&cfg.Channel, "channel", ChannelKafka, "the aggregator's channel: kafka or grpc")
	fs.IntVar(&cfg.Producers, "producers", 4, "Kafka producers the fleet sends through")
	fs.IntVar(&cfg.Conns, "conns", defaultConns, "gRPC connections the fleet's clients share (-channel grpc)")
	fs.IntVar(&cfg.InFlight, "inflight", defaultInFlight, "gRPC calls in flight at once (-channel grpc)")
	fs.IntVar(&cfg.Variants, "variants", 8, "full model perturbations built per round")
	fs.Float64Var(&cfg.Spread, "spread", 1e-3, "standard deviation of the perturbations")
	fs.Int64Var(&cfg.Examples, "examples", 10, "num_examples of every update")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed")
	fs.IntVar(&cfg.UpdatePartitions, "update-partitions", 4, "partitions of the updates topic")
	fs.IntVar(&cfg.EvalExamples, "eval-examples", 100, "test examples the aggregator scores per round")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "limit on the run")
	fs.BoolVar(&inProcess, "in-process", false, "run the aggregator in this process (CPU and RSS then include the fleet)")
	fs.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&heapProfile, "heap-profile", "", "write the aggregator child's heap profile near its peak to this file (go tool pprof)")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write the aggregator's CPU profile to this file (with -in-process, the whole process's)")
	fs.StringVar(&role, "role", "", "internal: \"aggregator\" runs the aggregator child")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if kafkaConfig != "" {
		props, err := kafkachan.LoadProperties(kafkaConfig)
		if err != nil {
			return err
		}
		cfg.KafkaProperties = props
	}
	if role != "" && role != roleAggregator {
		return fmt.Errorf("-role %q: unknown", role)
	}
	// The aggregator child profiles itself (it gets the parent's flags);
	// the parent only when the aggregator runs in it.
	if cpuProfile != "" && (role == roleAggregator || inProcess) {
		stop, err := startCPUProfile(cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if role == roleAggregator {
		return aggregatorChild(ctx, cfg, heapProfile, stdout)
	}
	if !inProcess {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.aggregator = childAggregator(exe, args)
	}
	rep, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	writeTable(stdout, rep)
	if jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(jsonPath, append(b, '\n'), 0o644)
	}
	return nil
}

// startCPUProfile profiles this process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// aggregatorChild runs the aggregator and speaks to its parent on stdout:
// a "ready <addr>" line once clients may connect, then the Go runtime's
// peak memory ("mem" and a JSON object), then its result (the contributors
// per round, its traffic) as a JSON line.
func aggregatorChild(ctx context.Context, cfg Config, heapProfile string, stdout io.Writer) error {
	cfg.defaults()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	peak, err := sampleMemory(sctx, heapProfile)
	if err != nil {
		return err
	}
	res, err := runAggregator(ctx, cfg, func(addr string) { fmt.Fprintln(stdout, readyLine+addr) })
	if err != nil {
		return err
	}
	stop()
	mem, err := json.Marshal(peak())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mem %s\n", mem)
	return json.NewEncoder(stdout).Encode(res)
}

// readyLine starts the child's line that gives its address.
const readyLine = "ready "

// childAggregator runs the aggregator as a child process (this binary with
// -role aggregator and the parent's flags), so that its CPU and peak RSS
// are its own.
func childAggregator(exe string, args []string) aggregatorFunc {
	return func(ctx context.Context, cfg Config, ready func(string)) (*aggregatorResult, *AggregatorCost, error) {
		cargs := append(append([]string(nil), args...), "-role", roleAggregator, "-broker", cfg.Brokers, "-job", cfg.Job)
		cmd := exec.CommandContext(ctx, exe, cargs...)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("start aggregator process: %w", err)
		}
		var res *aggregatorResult
		var mem GoMemory
		var protoErr error
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.HasPrefix(line, readyLine):
				ready(strings.TrimPrefix(line, readyLine))
			case strings.HasPrefix(line, "mem "):
				protoErr = errors.Join(protoErr, json.Unmarshal([]byte(line[4:]), &mem))
			case strings.HasPrefix(line, "{"):
				res = &aggregatorResult{}
				protoErr = errors.Join(protoErr, json.Unmarshal([]byte(line), res))
			}
		}
		err = cmd.Wait()
		if err != nil {
			// What it had used says how it died (memory, or stuck); no
			// ProcessState: Wait failed before the process ended.
			if ps := cmd.ProcessState; ps != nil {
				if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
					return nil, nil, fmt.Errorf("aggregator process (CPU %.2f s, peak RSS %.1f MB, wall %.0f ms): %w",
						cpuSeconds(*ru), float64(ru.Maxrss)/1024, msSince(start), err)
				}
			}
			return nil, nil, fmt.Errorf("aggregator process: %w", err)
		}
		if protoErr != nil || res == nil || res.Contributors == nil {
			return nil, nil, errors.Join(errors.New("aggregator process reported no result"), protoErr)
		}
		ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		if !ok {
			return nil, nil, errors.New("no resource usage for the aggregator process")
		}
		return res, &AggregatorCost{
			CPUSeconds: cpuSeconds(*ru),
			PeakRSSMB:  float64(ru.Maxrss) / 1024, // Linux: KiB
			WallMs:     msSince(start),
			Go:         &mem,
		}, nil
	}
}

func writeTable(w io.Writer, r *Report) {
	if r.Channel == ChannelGRPC {
		writeGRPCTable(w, r)
		return
	}
	fmt.Fprintf(w, "Fleet: %d clients, model %s, %d producers, broker %s\n\n", r.Clients, r.Model, r.Producers, r.Broker)
	fmt.Fprintln(w, "| round | updates | MB | ingest updates/s | ingest MB/s | fleet send/s | round close ms |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, rr := range r.Rounds {
		fmt.Fprintf(w, "| %d | %d | %.1f | %.0f | %.1f | %.0f | %.1f |\n", rr.Round, rr.Updates, float64(rr.Bytes)/1e6,
			rr.UpdatesPerSec, rr.MBPerSec, rr.SendPerSec, rr.CloseMs)
	}
	where := "child process"
	if r.Aggregator.InProcess {
		where = "whole process, fleet included"
	}
	fmt.Fprintf(w, "\nAggregator (%s): CPU %.2f s, peak RSS %.1f MB, wall %.0f ms; contributors per round %v\n",
		where, r.Aggregator.CPUSeconds, r.Aggregator.PeakRSSMB, r.Aggregator.WallMs, r.Contributors)
	if g := r.Aggregator.Go; g != nil {
		fmt.Fprintf(w, "Aggregator Go runtime peaks: mapped %.1f MB, heap objects %.1f MB, live heap %.1f MB (RSS beyond mapped: the binary and thread stacks)\n",
			g.PeakTotalMB, g.PeakHeapMB, g.PeakLiveMB)
	}
	writeTraffic(w, r)
	fmt.Fprintf(w, "Raw consumer (decode only): %d records, %.0f updates/s, %.1f MB/s; ingest/raw %.2f\n",
		r.Raw.Updates, r.Raw.UpdatesPerSec, r.Raw.MBPerSec, r.IngestToRaw)
}
