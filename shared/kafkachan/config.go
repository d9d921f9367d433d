// Package kafkachan is the Kafka channel: the aggregator publishes each global
// model once to fdx.<job>.model and consumes updates from fdx.<job>.updates as
// the consumer group fdx.<job>.aggregator, closing every round in one
// transaction; clients read the newest committed model and produce updates
// keyed by client id. Every value is a serialized fdx.v1 message, the same
// bytes the gRPC channel carries.
package kafkachan

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
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
	// Properties are extra librdkafka settings (security.protocol,
	// sasl.mechanisms, ssl.ca.location, ...), applied last.
	Properties map[string]string
	Logger     *slog.Logger
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

// producerBase shrinks confluent-kafka-go's Go-side channels: their default
// of a million entries costs about 24 MB per producer before it sends a
// byte, which a 512 MB function or a thousand-client benchmark cannot
// afford. We never use the produce channel, and delivery reports go to
// per-call channels.
var producerBase = kafka.ConfigMap{
	"go.events.channel.size":  64,
	"go.produce.channel.size": 16,
}

// configMap builds a librdkafka configuration from base settings plus the
// user's properties, which win so that operators can tune anything.
//
// Logging stays inside librdkafka. The Go log channel
// (go.logs.channel.enable) costs one more goroutine per handle that blocks
// in C (rd_kafka_queue_poll, 100 ms at a time). A goroutine in a cgo call
// keeps its P until sysmon takes it back, so with hundreds of handles and
// GOMAXPROCS=2 that goroutine starved training, delivery reports and the
// aggregator: turning it off cut a client's submit from 100 to 56 ms at 100
// clients (issue 11). librdkafka then logs to stderr itself, which a Cloud
// Function's log captures; log_level 3 (errors) keeps that quiet, and an
// operator who wants structured librdkafka logs can set
// go.logs.channel.enable=true in the properties (see startLogs).
// log.connection.close=false: brokers close idle connections after
// connections.max.idle.ms, which is routine for a warm, cached client and
// not worth an error line.
//
// reconnect.backoff.ms=20: librdkafka (2.10+) drops the bootstrap
// connection as soon as metadata names the real broker, and then waits
// before opening any new connection for half of reconnect.backoff.ms
// (floor 11 ms) — 50 ms at the default of 100. Every dial paid that wait
// twice over (producer metadata, then the reader's first request):
// a dial took 53 ms against the real broker with the default and 13 ms with
// 20. Failed connections still back off exponentially up to
// reconnect.backoff.max.ms, so an unreachable broker is not hammered.
func (o Options) configMap(base kafka.ConfigMap) kafka.ConfigMap {
	cm := kafka.ConfigMap{
		"bootstrap.servers":       o.Brokers,
		"go.logs.channel.enable":  false,
		"log_level":               3,
		"log.connection.close":    false,
		"socket.keepalive.enable": true,
		"reconnect.backoff.ms":    20,
	}

	for k, v := range base {
		cm[k] = v
	}
	for k, v := range o.Properties {
		cm[k] = v
		// confluent-kafka-go's own go.* settings want Go types, while
		// a properties file has only strings.
		if b, err := strconv.ParseBool(v); err == nil && strings.HasPrefix(k, "go.") {
			cm[k] = b
		}
	}
	return cm
}

// producerConfig is configMap for producers.
func (o Options) producerConfig(base kafka.ConfigMap) kafka.ConfigMap {
	merged := kafka.ConfigMap{}
	for k, v := range producerBase {
		merged[k] = v
	}
	for k, v := range base {
		merged[k] = v
	}
	return o.configMap(merged)
}

// LoadProperties reads a librdkafka properties file (key=value lines, '#'
// comments), the usual way to pass SASL and TLS settings.
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
	return props, nil
}

// closeTimeout bounds closing a consumer.
const closeTimeout = 10 * time.Second

// closeConsumer closes c, giving up after closeTimeout. librdkafka can
// deadlock closing a consumer whose group join is still in flight (seen
// with confluent-kafka-go 2.11 in rd_kafka_rebalance_protocol); a shutdown
// must not hang on it, and the broker cleans up after the session.
func closeConsumer(c *kafka.Consumer, log *slog.Logger) error {
	done := make(chan error, 1)
	go func() { done <- c.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		log.Warn("kafka consumer did not close in time; abandoning it", "consumer", c.String(), "timeout", closeTimeout)
		return nil
	}
}

// logger is a librdkafka handle's log channel.
type logger interface{ Logs() chan kafka.LogEvent }

// startLogs forwards h's log lines to slog when cm enabled the Go log
// channel, and does nothing otherwise: without it, Logs() is nil and a
// forwarder would block forever on a nil channel, one leaked goroutine per
// handle.
func startLogs(h logger, cm kafka.ConfigMap, log *slog.Logger) {
	if on, _ := cm["go.logs.channel.enable"].(bool); !on {
		return
	}
	if ch := h.Logs(); ch != nil {
		go forwardLogs(ch, log)
	}
}

// forwardLogs moves librdkafka's log lines into slog until the handle closes
// its channel, so a Cloud Function's log stays structured.
func forwardLogs(ch chan kafka.LogEvent, log *slog.Logger) {
	for ev := range ch {
		lvl := slog.LevelDebug
		switch {
		case ev.Level <= 3:
			lvl = slog.LevelError
		case ev.Level == 4:
			lvl = slog.LevelWarn
		}
		log.Log(nil, lvl, "librdkafka", "client", ev.Name, "tag", ev.Tag, "msg", ev.Message) //nolint:staticcheck // no request context in a log pump
	}
}
