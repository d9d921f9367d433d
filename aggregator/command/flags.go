package command

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/linefile"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// config is what the command line says.
type config struct {
	// job is the command line's job, resolved once.
	job         *job.Resolved
	channel     job.ChannelConfig
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
  aggregator --embedded --minclients 10 --numrounds 3   # an in-memory broker`

var flagGroups = []cli.Group{
	{Title: "Channel", Flags: []string{"broker", "grpc", "embedded", "job", "update-partitions", "model-partitions", "kafka-config", "transaction-timeout", "final-linger", "state-file"}},
	{Title: "Scale-out (FedAvg on Kafka)", Flags: []string{"role", "worker-name"}},
	{Title: "Rounds", Flags: []string{"minclients", "numrounds", "target-clients", "round-timeout", "on-short", "target-accuracy"}},
	{Title: "Asynchronous mode (FedBuff)", Flags: []string{"mode", "buffer-size", "staleness-exponent", "max-staleness"}},
	{Title: "Sampling and federated evaluation (Flower's names)", Flags: []string{"fraction-fit", "min-fit-clients", "min-available-clients", "fraction-evaluate", "min-evaluate-clients", "holdout"}},
	{Title: "Model and data", Flags: []string{"model", "dataset", "partition", "partitions", "alpha", "shards-per-client", "max-examples", "lr", "batch", "epochs", "prox-mu", "seed", "eval-examples", "update-encoding"}},
	{Title: "Strategy", Flags: []string{"strategy", "server-lr", "server-momentum", "trim", "byzantine", "max-norm", "norm-factor", "dp-clip-norm", "dp-noise-multiplier", "dp-target-quantile", "dp-clipped-count-stddev"}},
	{Title: "Security", Flags: []string{"model-key", "tokens-file", "client-list", "tls-cert", "tls-key", "tls-client-ca"}},
	{Title: "Output", Flags: []string{"out", "log-level", "log-to", "log-project", "metrics-addr"}},
}

// parseFlags parses the command line into a config whose job is resolved;
// o's flags are parsed with the command's and checked before the job is
// resolved.
func parseFlags(args []string, stderr io.Writer, o Options) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet(o.name(), flag.ContinueOnError)
	fs.SetOutput(stderr)
	groups := flagGroups
	if o.Flags != nil {
		// The program's own flags first: they are what it adds.
		groups = append([]cli.Group{o.Flags(fs)}, flagGroups...)
	}
	cli.SetUsage(fs, o.synopsis(), groups)
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
	embedded := fs.Bool("embedded", o.Embedded, "start an in-memory Kafka broker (franz-go kfake) on --broker")
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
	// --grpc overrides a program's default of --embedded, not one the
	// command line sets.
	case *grpc && *embedded && isSet(fs, "embedded"):
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
	if o.Check != nil {
		if err := o.Check(spec, c.role); err != nil {
			return nil, err
		}
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
	r, err := spec.Resolve(dataset.NewCatalog())
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
