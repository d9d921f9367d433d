// Package harness runs FDxKafka's stress evaluation: one federated job per
// channel (Kafka, gRPC) with the same clients, data and seed, some clients
// invoking the Cloud Function's HTTP handler and the rest running as
// long-running local clients, and measures what the original PoC planned to
// compare: messages transmitted, aggregator traffic, time for all rounds,
// time until every device holds each new model, training time and accuracy.
//
// Everything runs in one process: the aggregator (aggregator/job), the
// function (served on loopback with net/http), the local clients and, unless
// a real broker is given, an embedded Kafka broker. Sharing one clock is what
// makes the per-round propagation time (client receive time minus publish
// time) exact.
package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/httpserver"
)

// Channel names, as the function's "channel" field spells them, plus
// GRPCDurable: the gRPC channel with the aggregator's state file, so that
// it pays for durability as Kafka does (Kafka's round transaction is its
// checkpoint).
const (
	Kafka       = "kafka"
	GRPC        = "grpc"
	GRPCDurable = "grpc-durable"
)

// wire is the channel a client asks the function for.
func wire(ch string) string {
	if ch == GRPCDurable {
		return GRPC
	}
	return ch
}

// Invocation says how HTTP clients are invoked.
type Invocation string

const (
	// PerJob invokes each HTTP client once with "rounds": N; the invocation
	// takes part in every round, as the PoC's cloud-function clients did.
	PerJob Invocation = "job"
	// PerRound invokes each HTTP client once per round with "round": r and
	// "rounds": 1, from a bounded pool, as a serverless scheduler would when
	// a new model is published. Each invocation dials the channel afresh.
	PerRound Invocation = "round"
)

// Config describes one evaluation.
type Config struct {
	// Clients is the number of federated clients; every round waits for all
	// of them (minclients = Clients).
	Clients int
	// Rounds is the number of training rounds.
	Rounds int
	// Channels to evaluate, in order: "kafka", "grpc", "grpc-durable".
	Channels []string
	// HTTPShare is the fraction of clients that go through the function's
	// HTTP handler; the others are long-running local clients.
	HTTPShare float64
	// Invocation of HTTP clients: PerJob (default) or PerRound.
	Invocation Invocation
	// MaxInFlight bounds concurrent HTTP invocations in PerRound mode
	// (0: all of a round's invocations at once).
	MaxInFlight int
	// DialConcurrency bounds how many long-running clients connect at the
	// same time (default 16); they then stay connected.
	DialConcurrency int

	Model     string
	Dataset   string
	Partition string
	// MaxExamples caps each client's shard (0: whole shard); small values
	// make lightweight clients for large sweeps.
	MaxExamples int
	// EvalExamples caps the test set the aggregator scores every round.
	EvalExamples int
	Seed         uint64

	// Broker is a real Kafka bootstrap list; empty starts an embedded
	// broker (franz-go kfake) per Kafka run.
	Broker          string
	KafkaProperties map[string]string
	// JobPrefix starts every job id (default "stress"); ids go on with the
	// channel, the number of clients and the start time in nanoseconds, so
	// runs sharing a real broker never share topics.
	JobPrefix string
	// Timeout bounds each channel's run (default 30 min).
	Timeout time.Duration
	// ProgressEvery is the interval of progress lines (default 5 s; < 0 off).
	ProgressEvery time.Duration
	// OverheadInvocations is how many cold and how many warm invocations
	// the invocation overhead probe makes per channel (0: no probe).
	OverheadInvocations int

	// Data is shared by the aggregator and every in-process client, so each
	// data set is loaded once. Nil makes a new catalog.
	Data *dataset.Catalog
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// HTTPClients is how many clients go through the function.
func (c *Config) HTTPClients() int {
	return int(math.Round(c.HTTPShare * float64(c.Clients)))
}

func (c *Config) defaults() {
	if len(c.Channels) == 0 {
		c.Channels = []string{Kafka, GRPC, GRPCDurable}
	}
	if c.Invocation == "" {
		c.Invocation = PerJob
	}
	if c.Model == "" {
		c.Model = "logreg"
	}
	if c.Dataset == "" {
		c.Dataset = dataset.NameMNIST
	}
	if c.Partition == "" {
		c.Partition = dataset.SchemeIID
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.DialConcurrency <= 0 {
		c.DialConcurrency = 16
	}
	if c.JobPrefix == "" {
		c.JobPrefix = "stress"
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Minute
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = 5 * time.Second
	}
	if c.Data == nil {
		c.Data = dataset.NewCatalog()
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate reports the first bad setting, naming the stress flag.
func (c *Config) Validate() error {
	c.defaults()
	switch {
	case c.Clients < 1:
		return fmt.Errorf("-clients %d: want at least 1", c.Clients)
	case c.Rounds < 1:
		return fmt.Errorf("-rounds %d: want at least 1", c.Rounds)
	case !(c.HTTPShare >= 0 && c.HTTPShare <= 1):
		return fmt.Errorf("-http-share %v: want 0 to 1", c.HTTPShare)
	case c.Invocation != PerJob && c.Invocation != PerRound:
		return fmt.Errorf("-invocation %q: want %q or %q", c.Invocation, PerJob, PerRound)
	case c.MaxInFlight < 0:
		return fmt.Errorf("-max-inflight %d: want 0 or more", c.MaxInFlight)
	case c.MaxExamples < 0 || c.EvalExamples < 0:
		return errors.New("-max-examples and -eval-examples: want 0 or more")
	}
	seen := map[string]bool{}
	for _, ch := range c.Channels {
		if ch != Kafka && ch != GRPC && ch != GRPCDurable {
			return fmt.Errorf("-channels: %q is not a channel; want kafka, grpc or grpc-durable", ch)
		}
		if seen[ch] {
			return fmt.Errorf("-channels: %q given twice", ch)
		}
		seen[ch] = true
	}
	return nil
}

// Run evaluates every channel of cfg in turn with the same clients, data and
// seed, and reports the measurements. Channels run one after the other, never
// together, so that neither steals the other's CPU.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	fn, err := serveFunction(cfg)
	if err != nil {
		return nil, err
	}
	defer fn.close()
	rep := &Report{Setup: setupOf(cfg), StartedAt: start.UTC()}
	for _, ch := range cfg.Channels {
		cr, err := runChannel(ctx, cfg, ch, fn.url)
		if err != nil {
			return nil, fmt.Errorf("%s run with %d clients: %w", ch, cfg.Clients, err)
		}
		rep.Channels = append(rep.Channels, cr)
	}
	if cfg.OverheadInvocations > 0 {
		ov, err := Overhead(ctx, cfg)
		if err != nil {
			return nil, err
		}
		rep.Overhead = ov
	}
	rep.WallMs = msSince(start)
	return rep, nil
}

// functionServer is the Cloud Function served on loopback. It is a plain
// net/http server around function.NewServer rather than functions-framework:
// the framework registers handlers in a process-wide registry and its start
// call blocks until exit, which does not fit a library that may run many
// evaluations in one process. The handler is the same one the framework
// would call.
type functionServer struct {
	url string
	srv *http.Server
}

func serveFunction(cfg Config) (*functionServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("function listener: %w", err)
	}
	// A function holding SASL/TLS settings dials only the broker it was
	// deployed for.
	h := function.NewServer(function.Config{Data: cfg.Data, Defaults: function.Defaults{Broker: cfg.Broker},
		Transport: participant.Transport{KafkaProperties: cfg.KafkaProperties}, Logger: quiet(cfg.Log, "function")})
	srv := httpserver.New(h, httpserver.Timeouts{}, nil)
	go srv.Serve(ln)
	return &functionServer{url: "http://" + ln.Addr().String() + "/", srv: srv}, nil
}

func (f *functionServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		f.srv.Close()
	}
}

// ParseChannels splits a comma-separated channel list.
func ParseChannels(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.ToLower(strings.TrimSpace(f)); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func msSince(t time.Time) float64 { return ms(time.Since(t)) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
