// Package command is the aggregator command: its flags, the job they
// describe, and running that job to its end with the command's logs,
// metrics, signals and exit codes. The aggregator binary is this command
// as it is; a program may extend it (Options) with flags of its own and
// clients run in its process, as the demo binary does. It links no client
// code: what runs next to the job is the extending program's.
//
// Exit codes: 0 on success, after -h, and after a first SIGTERM once the
// open round transaction is done; 1 on a failure; 2 on a command-line
// mistake; 75 when a Kafka round transaction's outcome is unknown (a
// commit that timed out, or a Kafka call stalled past its deadline): the
// supervisor restarts it and the restart resumes from what was committed;
// 143 on a second SIGTERM (cli.Main).
package command

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/logging/cloudlog"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// localClientsGrace is how long the command waits, once the job has
// ended, for in-process clients to read the final model and return: they
// need one fetch, which takes milliseconds on a live channel.
const localClientsGrace = 10 * time.Second

// Options extend the command for a program built on it. The zero value is
// the aggregator.
type Options struct {
	// Name names the program in its usage text (default "aggregator").
	Name string
	// Synopsis is the usage text above the flags (default the
	// aggregator's).
	Synopsis string
	// Embedded makes the embedded broker the default channel: --grpc
	// still serves gRPC, and --embedded=false runs on the Kafka brokers
	// of --broker.
	Embedded bool
	// Flags, when set, registers the program's own flags on fs and
	// returns the group -h lists them under.
	Flags func(fs *flag.FlagSet) cli.Group
	// Check, when set, runs once the command line is parsed and before
	// the job is resolved, with the job's spec as the flags gave it and
	// the --role. It may complete the spec; its error ends the command (a
	// cli.UsageError exits 2).
	Check func(spec *job.Spec, role string) error
	// LocalClients, when set, runs clients in this process: it starts
	// once the job's channel is open, and the command waits for it after
	// the job before printing the summary. Its error is logged: the job's
	// result is what the command reports.
	LocalClients func(ctx context.Context, l Local) error
}

func (o Options) name() string {
	if o.Name == "" {
		return "aggregator"
	}
	return o.Name
}

func (o Options) synopsis() string {
	if o.Synopsis == "" {
		return synopsis
	}
	return o.Synopsis
}

// Local is what clients in the job's process need to reach it.
type Local struct {
	// Addr is the address clients connect to: the Kafka bootstrap
	// servers, or the gRPC server's address.
	Addr string
	// Transport is job.Kafka (the embedded broker included) or job.GRPC.
	Transport job.Transport
	// KafkaProperties are the --kafka-config properties (SASL, TLS).
	KafkaProperties map[string]string
	// Job is the job id.
	Job string
	// Data is the job's data set catalog: clients in the process share
	// what it has loaded.
	Data *dataset.Catalog
	// Log is for the clients: warnings only, unless --log-level is debug,
	// so that their per-round lines do not drown the aggregator's.
	Log *slog.Logger
}

// Run runs the command line args to the job's end: the aggregator as o
// extends it. It writes the job's summary to stdout and logs to stderr;
// its error maps onto the exit code with cli.Code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, o Options) error {
	c, err := parseFlags(args, stderr, o)
	if err != nil {
		return err
	}
	lvl, err := cli.LogLevel("--log-level", c.logLevel)
	if err != nil {
		return err
	}
	log, closeLog, err := cloudlog.Open(ctx, stderr, logging.Options{Format: c.logTo, Level: lvl, ProjectID: c.logProject})
	if err != nil {
		return fmt.Errorf("--log-to %s: %w", c.logTo, err)
	}
	defer closeLog()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A Kafka call that does not return by its deadline leaves the
	// transaction's outcome unknown and may never return: only ending
	// the process frees the round. The supervisor restarts it and the
	// restart reads what was committed.
	c.channel.OnStall = func(step string, after time.Duration) {
		log.Error("Kafka transaction stalled past its deadline; exiting so that a restart reads what was committed",
			"step", step, "after", after.Round(time.Millisecond), "exit_code", cli.ExitOutcomeUnknown)
		closeLog()
		os.Exit(cli.ExitOutcomeUnknown)
	}
	env := job.Env{Log: log}
	if c.metricsAddr != "" {
		channelName := "kafka"
		if c.channel.Transport == job.GRPC {
			channelName = "grpc"
		}
		env.Metrics = metrics.New(c.job.Spec().Job, channelName)
		addr, err := metrics.Serve(ctx, c.metricsAddr, env.Metrics.Handler(), log)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		log.Info("metrics listening", "addr", addr)
	}
	if c.channel.Transport == job.EmbeddedKafka {
		// The broker outlives the job: the local clients read the final
		// model and close against a live broker, not a vanished one.
		b, err := embedded.Start(embedded.Options{Addr: c.channel.Listen})
		if err != nil {
			return fmt.Errorf("embedded broker: %w", err)
		}
		defer b.Close()
		log.Info("embedded Kafka broker started (in memory)", "addr", b.Addr())
		c.channel.Transport, c.channel.Brokers, c.channel.Listen = job.Kafka, b.Addr(), ""
	}
	clientsDone := make(chan error, 1)
	var ready func(addr string)
	if o.LocalClients != nil {
		ready = func(addr string) {
			// Per-round client lines would drown the aggregator's; the
			// clients log warnings only unless asked for debug.
			clog, err := logging.New(stderr, logging.Options{Format: logging.FormatText, Level: max(lvl, slog.LevelWarn)})
			if err != nil || lvl <= slog.LevelDebug {
				clog = log
			}
			l := Local{Addr: addr, Transport: c.channel.Transport, KafkaProperties: c.channel.KafkaProperties,
				Job: c.job.Spec().Job, Data: c.job.Data(), Log: clog.With("component", "client")}
			go func() { clientsDone <- o.LocalClients(ctx, l) }()
		}
	} else {
		close(clientsDone)
	}
	if c.role != "" {
		err := job.RunRole(ctx, c.job, c.channel, env, c.role, c.workerName)
		if errors.Is(err, channel.ErrOutcomeUnknown) {
			return &cli.ExitError{Code: cli.ExitOutcomeUnknown, Err: err}
		}
		return err
	}
	res, err := job.RunOn(ctx, c.job, c.channel, env, ready)
	if errors.Is(err, channel.ErrOutcomeUnknown) {
		return &cli.ExitError{Code: cli.ExitOutcomeUnknown, Err: fmt.Errorf("%w; restart to resume from what was committed", err)}
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// Every closed round is committed; a restart resumes the
			// open one from the checkpoint.
			log.Info("stopped by signal; restart with the same --job to resume")
			if os.Getenv(EnvFaultStallShutdown) != "" {
				fmt.Fprintln(stderr, "aggregator: fault injection: stalling shutdown")
				select {} // until the second signal ends the process
			}
		}
		return err
	}
	if o.LocalClients != nil {
		awaitLocalClients(clientsDone, cancel, log)
	}
	printSummary(stdout, res)
	if c.out != "" {
		if err := writeResult(c.out, res); err != nil {
			return err
		}
		log.Info("result written", "file", c.out)
	}
	return nil
}

func printSummary(w io.Writer, res *job.Result) {
	fmt.Fprintf(w, "\nFDxKafka job %q over %s: %d rounds, model %s\n", res.Job, res.Channel, len(res.Rounds), res.Model)
	fmt.Fprintf(w, "%-6s %-8s %-9s %-8s %-10s\n", "round", "clients", "accuracy", "loss", "time")
	for _, r := range res.Rounds {
		fmt.Fprintf(w, "%-6d %-8d %-9.4f %-8.4f %-10s", r.Round, r.Clients, r.Accuracy, r.Loss, time.Duration(r.DurationMs*float64(time.Millisecond)).Round(time.Millisecond))
		if f := r.Federated; f != nil {
			// Of the round's starting model, on the clients' held-out data.
			fmt.Fprintf(w, " federated accuracy %.4f loss %.4f (%d clients)", f.Accuracy, f.Loss, f.Clients)
		}
		fmt.Fprintln(w)
	}
	// In the wire enum's order, so that two runs print alike.
	var rej []string
	for _, r := range rules.Reasons() {
		if n := res.Rejected[string(r)]; n > 0 {
			rej = append(rej, fmt.Sprintf("%s=%d", r, n))
		}
	}
	fmt.Fprintf(w, "total %s; aggregator sent %d messages (%d bytes), received %d (%d bytes); rejected: %s\n",
		time.Duration(res.Duration*float64(time.Millisecond)).Round(time.Millisecond),
		res.Stats.MessagesSent, res.Stats.BytesSent, res.Stats.MessagesReceived, res.Stats.BytesReceived,
		orNone(strings.Join(rej, " ")))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func writeResult(path string, res *job.Result) error {
	out, err := job.Export(res)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// awaitLocalClients waits for the in-process clients once the job has
// ended. A client that missed the final model (over gRPC with a short
// --final-linger, the server is gone) waits for it as it would across an
// aggregator restart, until its own timeout: after localClientsGrace such
// clients are stopped with cancel, which ends their context.
func awaitLocalClients(done <-chan error, cancel context.CancelFunc, log *slog.Logger) {
	select {
	case err := <-done:
		if err != nil {
			log.Warn("local clients", "err", err)
		}
	case <-time.After(localClientsGrace):
		log.Info("local clients still waiting after the job ended; stopping them", "grace", localClientsGrace)
		cancel()
		if err := <-done; err != nil {
			log.Debug("local clients stopped", "err", err)
		}
	}
}
