// Command aggregator runs a federated job: the long-running service on a GCE
// VM that publishes global models and aggregates the clients' updates, over
// Kafka (default) or gRPC (--grpc).
//
//	aggregator --broker 127.0.0.1:9092 --minclients 10 --numrounds 5
//	aggregator --grpc --broker "[::]:8080" --minclients 10 --numrounds 5
//	aggregator --embedded --clients 10 --numrounds 3   # whole federation in one process
//
// -h prints the flags by group. Exit codes: 0 on success, after -h, and
// after a first SIGTERM once the open round transaction is done; 1 on a
// failure; 2 on a command-line mistake; 75 when a Kafka round
// transaction's outcome is unknown (a commit that timed out, or a Kafka call
// stalled past its deadline): the supervisor restarts it and the restart
// resumes from what was committed; 143 on a second SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/linefile"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/logging/cloudlog"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

func main() { cli.Main("aggregator", run) }

// config is what the command line says.
type config struct {
	// job is the command line's job, resolved once.
	job         *job.Resolved
	channel     job.ChannelConfig
	clients     int
	data        *dataset.Catalog
	metrics     *metrics.Metrics
	out         string
	kafkaConf   string
	tlsCert     string
	tlsKey      string
	tlsClientCA string
	tokensFile  string
	modelKey    string
	clientList  string
	logLevel    string
	logTo       logging.Format
	logProject  string
	metricsAddr string
	// role and workerName select a scale-out process (job.RunRole).
	role, workerName string
}

const synopsis = `usage: aggregator [flags]

Runs a federated job: publishes global models and aggregates the clients'
updates, over Kafka (default) or gRPC (--grpc).

  aggregator --broker 127.0.0.1:9092 --minclients 10 --numrounds 5
  aggregator --grpc --broker "[::]:8080" --minclients 10 --numrounds 5
  aggregator --embedded --clients 10 --minclients 10 --numrounds 3`

var flagGroups = []cli.Group{
	{Title: "Channel", Flags: []string{"broker", "grpc", "embedded", "job", "update-partitions", "model-partitions", "kafka-config", "transaction-timeout", "final-linger", "state-file"}},
	{Title: "Scale-out (FedAvg on Kafka)", Flags: []string{"role", "worker-name"}},
	{Title: "Rounds", Flags: []string{"minclients", "numrounds", "target-clients", "round-timeout", "on-short", "target-accuracy"}},
	{Title: "Asynchronous mode (FedBuff)", Flags: []string{"mode", "buffer-size", "staleness-exponent", "max-staleness"}},
	{Title: "Sampling and federated evaluation (Flower's names)", Flags: []string{"fraction-fit", "min-fit-clients", "min-available-clients", "fraction-evaluate", "min-evaluate-clients", "holdout"}},
	{Title: "Model and data", Flags: []string{"model", "dataset", "partition", "partitions", "alpha", "shards-per-client", "max-examples", "lr", "batch", "epochs", "prox-mu", "seed", "eval-examples", "update-encoding"}},
	{Title: "Strategy", Flags: []string{"strategy", "server-lr", "server-momentum", "trim", "byzantine", "max-norm", "norm-factor", "dp-clip-norm", "dp-noise-multiplier", "dp-target-quantile", "dp-clipped-count-stddev"}},
	{Title: "Security", Flags: []string{"model-key", "tokens-file", "client-list", "tls-cert", "tls-key", "tls-client-ca"}},
	{Title: "Output", Flags: []string{"clients", "out", "log-level", "log-to", "log-project", "metrics-addr"}},
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{data: dataset.NewCatalog()}
	fs := flag.NewFlagSet("aggregator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.SetUsage(fs, synopsis, flagGroups)
	spec, cc := &job.Spec{}, &c.channel
	rd, d, tr, sec, smp := &spec.Rounds, &spec.Data, &spec.Training, &spec.Security, &spec.Sampling
	broker := fs.String("broker", "127.0.0.1:9092", "Kafka bootstrap servers; with --grpc the address to listen on (e.g. \"[::]:8080\"); with --embedded the address the embedded broker listens on")
	fs.IntVar(&rd.MinClients, "minclients", 2, "valid updates needed to close a round")
	fs.IntVar(&rd.MinClients, "min-fit-clients", 2, "Flower's name for --minclients: the fewest clients a round trains")
	fs.Float64Var(&smp.FractionFit, "fraction-fit", 1, "fraction of the population asked to train each round, drawn from the seed and round; the round closes when all of them reported (or min-fit-clients at the deadline); unsampled clients' updates are rejected as not_sampled")
	fs.IntVar(&smp.MinAvailableClients, "min-available-clients", 0, "population the samples are drawn from: client ids 0..N-1 (default: --partitions; --client-list names them instead)")
	fs.Float64Var(&smp.FractionEvaluate, "fraction-evaluate", 0, "fraction of the population asked each round to evaluate the global model on their held-out examples (0: no federated evaluation)")
	fs.IntVar(&smp.MinEvaluateClients, "min-evaluate-clients", 0, "fewest clients asked to evaluate")
	fs.Float64Var(&d.Holdout, "holdout", 0, "fraction of each client's shard held out of training for federated evaluation (default 0.2 with --fraction-evaluate)")
	fs.IntVar(&rd.NumRounds, "numrounds", 5, "training rounds before the final model")
	fs.StringVar(&c.role, "role", "", "scale-out: worker (fold a share of the update partitions into partials) or leader (merge partials into models); empty: one aggregator does both. FedAvg only")
	fs.StringVar(&c.workerName, "worker-name", "", "with --role worker: this worker's name, unique in the job and kept across restarts")
	grpc := fs.Bool("grpc", false, "serve the gRPC channel instead of using Kafka")
	embedded := fs.Bool("embedded", false, "start an in-memory Kafka broker (franz-go kfake) on --broker")
	fs.StringVar(&spec.Job, "job", "mnist", "job id; names the topics fdx.<job>.model and fdx.<job>.updates")
	fs.IntVar(&rd.TargetClients, "target-clients", 0, "close a round at once with this many updates (default minclients); fewer, down to minclients, close it at its deadline")
	fs.DurationVar(&rd.RoundTimeout, "round-timeout", 0, "round deadline (0: none)")
	short := fs.String("on-short", "wait", "when a deadline passes with fewer than minclients updates: wait or fail")
	fs.StringVar(&tr.Model, "model", "logreg", "logreg, 2nn, cnn (the FedAvg paper's MNIST CNN, trained by Python clients: clients/python/examples/cnn_jax.py), or synthetic:<MB> (random weights of that size, a seeded perturbation as training: for transport measurements)")
	fs.StringVar(&d.Dataset, "dataset", "mnist", "mnist or synthetic")
	fs.StringVar(&d.Partition.Scheme, "partition", "iid", "iid, shards or dirichlet")
	fs.IntVar(&d.Partition.NumPartitions, "partitions", 0, "number of data shards (default: max(minclients, target-clients))")
	fs.Float64Var(&d.Partition.Alpha, "alpha", 0.5, "Dirichlet concentration for --partition dirichlet")
	fs.IntVar(&d.Partition.ShardsPerClient, "shards-per-client", 2, "label shards per client for --partition shards")
	fs.IntVar(&d.MaxExamples, "max-examples", 0, "cap on each client's shard (0: whole shard)")
	fs.Float64Var(&tr.LearningRate, "lr", 0.05, "client learning rate")
	fs.IntVar(&tr.BatchSize, "batch", 10, "client minibatch size")
	fs.IntVar(&tr.LocalEpochs, "epochs", 1, "client local epochs per round")
	fs.Float64Var(&tr.ProximalMu, "prox-mu", 0, "FedProx proximal term (0: off)")
	fs.StringVar(&tr.UpdateEncoding, "update-encoding", "float32", "how clients encode updates: float32 (weights), float16, int8 (per-tensor scale) or topk:<fraction> (the largest entries, with error feedback in long-running clients); all but float32 send the delta from the global model")
	fs.StringVar(&tr.ModelEncoding, "model-encoding", "float32", "how models are published: float32, or float16 (half the download; the global model is kept on the float16 grid)")
	fs.Uint64Var(&spec.Seed, "seed", 1, "job seed: initial model, partition, client shuffles")
	fs.StringVar(&spec.Strategy.Name, "strategy", "fedavg", strings.Join(strategy.Names(), ", "))
	fs.Float64Var(&spec.Strategy.ServerLR, "server-lr", 0, "server learning rate for fedavgm/fedadam/fedyogi/fedadagrad (0: strategy default)")
	fs.Float64Var(&spec.Strategy.Momentum, "server-momentum", 0, "fedavgm momentum (0: default)")
	fs.Float64Var(&spec.Strategy.TrimFraction, "trim", 0, "trimmedmean fraction cut at each end (0: 0.2)")
	fs.IntVar(&spec.Strategy.ByzantineF, "byzantine", 0, "krum, multikrum, bulyan: assumed number of Byzantine clients")
	fs.Float64Var(&spec.Strategy.ClipNorm, "dp-clip-norm", 0, "dpfedavg-*: L2 clip norm of each update's delta (adaptive: the initial one; 0: default)")
	fs.Float64Var(&spec.Strategy.NoiseMultiplier, "dp-noise-multiplier", 0, "dpfedavg-*: Gaussian noise multiplier z (0: default 1)")
	fs.Float64Var(&spec.Strategy.TargetQuantile, "dp-target-quantile", 0, "dpfedavg-adaptive: target fraction of unclipped updates (0: 0.5)")
	fs.Float64Var(&spec.Strategy.ClippedCountStddev, "dp-clipped-count-stddev", 0, "dpfedavg-adaptive: noise on the unclipped count (0: clients/20)")
	fs.Float64Var(&sec.MaxNorm, "max-norm", 0, "reject updates with ||local-global|| above this (0: no fixed bound)")
	normFactor := fs.Float64("norm-factor", coordinator.DefaultNormFactor, "reject updates with ||local-global|| above this many times the previous round's median (0: off)")
	// 15s outlasts a following client's longest reconnect backoff (10s).
	fs.DurationVar(&cc.FinalLinger, "final-linger", 15*time.Second, "gRPC: after the final round, keep serving the final model up to this long to contributors that have not fetched it (long-running clients); 0 exits at once")
	fs.DurationVar(&cc.TransactionTimeout, "transaction-timeout", 60*time.Second, "Kafka: the broker aborts a round transaction open this long; a round's publish gives up after twice that, and an aggregator whose Kafka client has not returned 15s later exits with code 75 to be restarted")
	fs.IntVar(&cc.UpdatePartitions, "update-partitions", 4, "partitions of the updates topic (async mode: 1, the only value it takes)")
	fs.IntVar(&cc.ModelPartitions, "model-partitions", 1, "partitions of the model topic; more spread the chunks of a large model over their leaders")
	fs.Float64Var(&rd.TargetAccuracy, "target-accuracy", 0, "end the job once the global model's test accuracy reaches this (0: run all rounds)")
	fs.StringVar(&rd.Mode, "mode", job.ModeSync, "sync (rounds) or async (FedBuff: a new version every --buffer-size updates, no round barrier); --strategy fedbuff implies async")
	fs.IntVar(&rd.BufferSize, "buffer-size", 0, "async: valid updates per new model version, K (default minclients); at most the number of clients")
	exponent := fs.Float64("staleness-exponent", 0.5, "async: a in the staleness weight 1/(1+τ)^a (0: no discount)")
	fs.IntVar(&rd.MaxStaleness, "max-staleness", 0, "async: reject updates trained more than this many versions back as stale_round (0: no limit)")
	fs.IntVar(&d.EvalExamples, "eval-examples", 0, "test examples evaluated per round (0: whole test set)")
	fs.StringVar(&cc.StateFile, "state-file", "", "gRPC: file holding the newest model so a restart resumes")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "gRPC: server certificate (PEM); with --tls-key enables TLS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "gRPC: server private key (PEM)")
	fs.StringVar(&c.tlsClientCA, "tls-client-ca", "", "gRPC: CA that client certificates must chain to (mutual TLS)")
	fs.StringVar(&c.tokensFile, "tokens-file", "", "file of \"client_id token\" lines: on gRPC each client's bearer token, on Kafka the key of its updates' HMAC; updates without it are rejected as unauthenticated")
	fs.StringVar(&c.modelKey, "model-key", "", "Ed25519 private key (PEM, PKCS #8) that signs every model; clients verify with its public key (FDX_MODEL_PUBKEY). With --role, give the leader and every worker the same key: partials are MAC'd with a key derived from it")
	fs.StringVar(&c.clientList, "client-list", "", "file of allowed client ids, one per line ('#' comments); updates from others are rejected as unknown_client")
	fs.StringVar(&c.kafkaConf, "kafka-config", "", "Kafka client properties file (SASL/TLS settings)")
	fs.IntVar(&c.clients, "clients", 0, "also run this many local clients in-process (a self-contained demo)")
	fs.StringVar(&c.out, "out", "", "write the final model and per-round history as JSON to this file")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	c.logTo = logging.FormatAuto
	fs.Var(&c.logTo, "log-to", "log format: auto (text on a terminal, else JSON), text, json, gcp (Cloud Logging JSON on stdout) or cloud (Cloud Logging API)")
	fs.StringVar(&c.logProject, "log-project", "", "Google Cloud project for --log-to cloud and trace fields (default: metadata server)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (e.g. :9100)")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	switch {
	case *grpc && *embedded:
		return nil, cli.Usagef("--embedded starts a Kafka broker; it does not go with --grpc")
	case *grpc:
		cc.Transport, cc.Listen = job.GRPC, *broker
	case *embedded:
		cc.Transport, cc.Listen = job.EmbeddedKafka, *broker
	default:
		cc.Transport, cc.Brokers = job.Kafka, *broker
	}
	rd.StalenessExponent = *exponent
	switch {
	case *exponent < 0:
		return nil, cli.Usagef("--staleness-exponent %v is negative", *exponent)
	case *exponent == 0:
		rd.StalenessExponent = -1 // no discount; Spec's zero would mean 0.5
	}
	if spec.Async() && !isSet(fs, "update-partitions") {
		cc.UpdatePartitions = 0 // async mode's default: one partition
	}
	sec.NormFactor = *normFactor
	if *normFactor <= 0 {
		sec.NormFactor = -1 // off; Spec's zero would mean the default
	}
	rd.OnShort = coordinator.ShortRound(*short)
	if rd.OnShort != coordinator.Wait && rd.OnShort != coordinator.Fail {
		return nil, cli.Usagef("--on-short %q: want wait or fail", *short)
	}
	if c.clients < 0 {
		return nil, cli.Usagef("--clients %d: want 0 or more", c.clients)
	}
	if c.clients > 0 && tr.Model == model.KindCNN {
		return nil, cli.Usagef("--clients with --model %s: Go clients do not train it; run Python clients (clients/python/examples/cnn_jax.py)", model.KindCNN)
	}
	if c.clients > 0 && c.clients < rd.MinClients {
		return nil, cli.Usagef("--clients %d is below --minclients %d: the rounds would never close", c.clients, rd.MinClients)
	}
	if c.clients > 0 && c.clients < rd.BufferSize {
		// A client trains once per version, so fewer clients than K
		// would never fill a buffer.
		return nil, cli.Usagef("--clients %d is below --buffer-size %d: no version would ever close", c.clients, rd.BufferSize)
	}
	if c.clients > 0 && smp.MinAvailableClients == 0 {
		smp.MinAvailableClients = c.clients // the demo's clients are the population
	}
	if c.kafkaConf != "" {
		props, err := kafkachan.LoadProperties(c.kafkaConf)
		if err != nil {
			return nil, err
		}
		cc.KafkaProperties = props
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, cli.Usagef("--tls-cert and --tls-key go together")
	}
	if cc.Transport != job.GRPC && (c.tlsCert != "" || c.tlsClientCA != "" || cc.StateFile != "") {
		return nil, cli.Usagef("--tls-cert, --tls-client-ca and --state-file are for the gRPC channel: add --grpc (Kafka security goes in --kafka-config)")
	}
	if c.tlsCert != "" {
		cfg, err := grpcchan.ServerTLS(c.tlsCert, c.tlsKey, c.tlsClientCA)
		if err != nil {
			return nil, err
		}
		cc.GRPCTLS = cfg
	} else if c.tlsClientCA != "" {
		return nil, cli.Usagef("--tls-client-ca needs --tls-cert and --tls-key")
	}
	if c.modelKey != "" {
		signer, err := trust.LoadSigner(c.modelKey)
		if err != nil {
			return nil, fmt.Errorf("--model-key: %w", err)
		}
		cc.Signer = signer
	}
	if c.tokensFile != "" {
		toks, err := trust.LoadTokens(c.tokensFile)
		if err != nil {
			return nil, err
		}
		cc.Tokens = toks
	}
	if c.clientList != "" {
		ids, err := loadClientList(c.clientList)
		if err != nil {
			return nil, err
		}
		sec.Allowed = ids
	}
	r, err := spec.Resolve(c.data)
	if se := (*job.SpecError)(nil); errors.As(err, &se) {
		return nil, cli.Usagef("%v", err)
	} else if err != nil {
		return nil, err
	}
	c.job = r
	if err := cc.Validate(); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	if err := c.faults(); err != nil {
		return nil, err
	}
	return c, nil
}

// isSet reports whether the command line set the flag name.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// loadClientList reads one client id per line.
func loadClientList(path string) (map[string]bool, error) {
	lines, err := linefile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("--client-list: %w", err)
	}
	ids := map[string]bool{}
	for _, l := range lines {
		if err := rules.ValidateClientID(l.Text); err != nil {
			return nil, fmt.Errorf("--client-list %s:%d: %w", path, l.N, err)
		}
		ids[l.Text] = true
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--client-list %s: no client ids", path)
	}
	return ids, nil
}

// Fault-injection switches for crash tests. FDX_FAULT_KILL_BEFORE_COMMIT,
// "any" or a round number, makes the process SIGKILL itself inside that
// round's Kafka transaction, after the model and offsets are sent and
// before the commit. FDX_FAULT_KILL_AFTER_STORE, a client id or "any", makes
// it SIGKILL itself once that client's gRPC update is in the update log,
// before it is folded and answered.
// FDX_FAULT_STALL_BEFORE_COMMIT, a round number, makes that round's
// transaction hang where a Kafka client hangs when a broker dies, so that a
// test sees the watchdog end the process (exit code 75) and the restart
// finish the job.
// FDX_FAULT_STALL_SHUTDOWN=1 makes a signalled aggregator hang once its job
// has stopped, as a slow shutdown would, so that a test can send the second
// signal while the first is still being handled.
const (
	envFaultBeforeCommit  = "FDX_FAULT_KILL_BEFORE_COMMIT"
	envFaultAfterStore    = "FDX_FAULT_KILL_AFTER_STORE"
	envFaultStallShutdown = "FDX_FAULT_STALL_SHUTDOWN"
	envFaultStallCommit   = "FDX_FAULT_STALL_BEFORE_COMMIT"
)

func (c *config) faults() error {
	if v := os.Getenv(envFaultBeforeCommit); v != "" {
		want := int64(-1)
		if v != "any" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%s: want \"any\" or a round number, got %q", envFaultBeforeCommit, v)
			}
			want = n
		}
		c.channel.BeforeCommit = func(round int64) {
			if want < 0 || round == want {
				kill(fmt.Sprintf("before committing round %d", round))
			}
		}
	}
	if v := os.Getenv(envFaultStallCommit); v != "" {
		want, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: want a round number, got %q", envFaultStallCommit, v)
		}
		kill := c.channel.BeforeCommit
		c.channel.BeforeCommit = func(round int64) {
			if round == want {
				fmt.Fprintf(os.Stderr, "aggregator: fault injection: stalling the transaction of round %d\n", round)
				select {} // as a hung Kafka call would
			}
			if kill != nil {
				kill(round)
			}
		}
	}
	if v := os.Getenv(envFaultAfterStore); v != "" {
		c.channel.AfterStore = func(u *fdxv1.Update) {
			if v == "any" || u.GetClientId() == v {
				kill(fmt.Sprintf("after storing the update of %q for round %d", u.GetClientId(), u.GetBaseRound()))
			}
		}
	}
	return nil
}

func kill(where string) {
	fmt.Fprintf(os.Stderr, "aggregator: fault injection: SIGKILL %s\n", where)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
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
	if c.clients > 0 {
		ready = func(addr string) {
			// Per-round client lines would drown the aggregator's; the
			// clients log warnings only unless asked for debug.
			clog, err := logging.New(stderr, logging.Options{Format: logging.FormatText, Level: max(lvl, slog.LevelWarn)})
			if err != nil || lvl <= slog.LevelDebug {
				clog = log
			}
			go func() { clientsDone <- runLocalClients(ctx, c, addr, clog.With("component", "client")) }()
		}
	} else {
		close(clientsDone)
	}
	if c.role != "" {
		if c.clients > 0 {
			return cli.Usagef("--role runs no local clients: drop --clients")
		}
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
			if os.Getenv(envFaultStallShutdown) != "" {
				fmt.Fprintln(stderr, "aggregator: fault injection: stalling shutdown")
				select {} // until the second signal ends the process
			}
		}
		return err
	}
	if c.clients > 0 {
		if cerr := <-clientsDone; cerr != nil {
			log.Warn("local clients", "err", cerr)
		}
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
