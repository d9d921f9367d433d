// Package kafkachan is the Kafka channel: the aggregator publishes each global
// model once to fdx.<job>.model and consumes updates from fdx.<job>.updates as
// the consumer group fdx.<job>.aggregator, closing every round in one
// transaction; clients read the newest committed model and produce updates
// keyed by client id. Every value is a serialized fdx.v1 message, the same
// bytes the gRPC channel carries. The Kafka client is franz-go (kgo, kadm):
// pure Go, so both binaries build without cgo.
package kafkachan

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fdxkafka/fdxkafka/shared/linefile"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// Limits on sizes. Records above the broker's limit are refused by the broker;
// these are our own defaults for topics we create.
const (
	// MinMessageBytes is the floor for a topic's max.message.bytes.
	MinMessageBytes = 1 << 20
	// recordOverhead covers the protobuf envelope, train config and batch
	// headers on top of the raw tensor bytes.
	recordOverhead = 64 << 10
)

// ModelTopic is the single-partition topic holding the job's global models.
func ModelTopic(job string) string { return "fdx." + job + ".model" }

// UpdatesTopic is the topic clients send their updates to.
func UpdatesTopic(job string) string { return "fdx." + job + ".updates" }

// GroupID is the aggregator's consumer group for the updates topic.
func GroupID(job string) string { return "fdx." + job + ".aggregator" }

// TransactionalID is stable per job so that a restarted aggregator fences the
// instance it replaces.
func TransactionalID(job string) string { return "fdx." + job + ".aggregator" }

// MessageBytesFor returns the size of a serialized model of numParams
// float32 parameters, envelope included: the largest model or update a job
// accepts. Records stay below the chunk size whatever it is.
func MessageBytesFor(numParams int) int {
	n := 4*numParams + recordOverhead
	if n < MinMessageBytes {
		n = MinMessageBytes
	}
	return n
}

// Options are what both sides need to reach the brokers.
type Options struct {
	// Brokers is a comma-separated bootstrap list.
	Brokers string
	Job     string
	// Properties are Kafka client settings from a properties file
	// (security.protocol, sasl.mechanism, ssl.ca.location, ...; see
	// properties.go for the keys understood). An unknown key is an error.
	Properties map[string]string
	// Logger receives the Kafka client's log lines (at the level the
	// log.level property sets, warn by default) and the channel's own.
	Logger *slog.Logger
	// Verifier, when set, checks the aggregator's signature on every model
	// record read; records that do not verify are ignored and counted
	// (Stats.RecordsRejected). Without it models are trusted as read.
	Verifier *trust.Verifier
	// ChunkBytes is the size above which a model or update travels in
	// chunks of this size (see chunk.go); 0 means DefaultChunkBytes. The
	// aggregator sizes its topics' max.message.bytes to it, so clients
	// must not use a larger one.
	ChunkBytes int
}

func (o Options) validate() error {
	if strings.TrimSpace(o.Brokers) == "" {
		return fmt.Errorf("kafka: no brokers given")
	}
	return rules.ValidateJob(o.Job)
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// clientOpts are the kgo options every client of these Options shares:
// brokers, security, client id, logging and the partitioner, followed by
// extra (the role's own settings).
func (o Options) clientOpts(extra ...kgo.Opt) ([]kgo.Opt, error) {
	props, err := parseProperties(o.Properties)
	if err != nil {
		return nil, err
	}
	brokers := o.Brokers
	if props.brokers != "" {
		brokers = props.brokers
	}
	var seeds []string
	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			seeds = append(seeds, b)
		}
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.WithLogger(newLogAdapter(o.logger(), props.logLevel)),
		kgo.RecordPartitioner(keyPartitioner()),
	}
	opts = append(opts, props.opts...)
	return append(opts, extra...), nil
}

// LoadProperties reads a Kafka properties file (key=value lines, '#'
// comments), the usual way to pass SASL and TLS settings, and checks that
// every key is one kafkachan understands.
func LoadProperties(path string) (map[string]string, error) {
	lines, err := linefile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("kafka properties: %w", err)
	}
	props := map[string]string{}
	for _, l := range lines {
		k, v, ok := strings.Cut(l.Text, "=")
		if !ok {
			return nil, fmt.Errorf("kafka properties %s:%d: want key=value", path, l.N)
		}
		props[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if _, err := parseProperties(props); err != nil {
		return nil, fmt.Errorf("kafka properties %s: %w", path, err)
	}
	return props, nil
}
