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
	"strings"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/fdxkafka/fdxkafka/shared/linefile"
	"github.com/fdxkafka/fdxkafka/shared/rules"
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

// MessageBytesFor returns the max.message.bytes a topic needs for a model of
// numParams float32 parameters.
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
func (o Options) configMap(base kafka.ConfigMap) kafka.ConfigMap {
	cm := kafka.ConfigMap{
		"bootstrap.servers":       o.Brokers,
		"go.logs.channel.enable":  true,
		"socket.keepalive.enable": true,
	}

	for k, v := range base {
		cm[k] = v
	}
	for k, v := range o.Properties {
		cm[k] = v
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
