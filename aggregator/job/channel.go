package job

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// Transport selects the channel a job runs on.
type Transport string

// The transports.
const (
	// Kafka uses the brokers in ChannelConfig.Brokers.
	Kafka Transport = "kafka"
	// EmbeddedKafka starts an in-memory broker (franz-go kfake) on
	// ChannelConfig.Listen and uses it.
	EmbeddedKafka Transport = "embedded"
	// GRPC serves the gRPC channel on ChannelConfig.Listen.
	GRPC Transport = "grpc"
)

// ChannelConfig describes the aggregator's side of a channel.
type ChannelConfig struct {
	Transport Transport
	// Brokers is the Kafka bootstrap list (Kafka).
	Brokers string
	// Listen is the address the gRPC server or the embedded broker listens
	// on; port 0 picks a free one.
	Listen string
	// KafkaProperties are extra librdkafka settings (SASL, TLS).
	KafkaProperties map[string]string
	// UpdatePartitions of the Kafka updates topic (0: 4).
	UpdatePartitions int
	// ModelPartitions of the Kafka model topic (0: 1); more spread a
	// chunked model's chunks over their leaders.
	ModelPartitions int
	// BeforeCommit is the Kafka channel's fault-injection point (see
	// kafkachan.ServerOptions.BeforeCommit).
	BeforeCommit func(round int64)
	// TransactionTimeout bounds a Kafka round transaction (0: 60s).
	TransactionTimeout time.Duration
	// OnStall is the Kafka channel's watchdog (see
	// kafkachan.ServerOptions.OnStall).
	OnStall func(step string, after time.Duration)
	// StateFile makes the gRPC channel durable.
	StateFile string
	// GRPCTLS secures the gRPC channel (see grpcchan).
	GRPCTLS *tls.Config
	// Tokens, when non-empty, maps client id to its token: on gRPC the
	// bearer token of its calls, on Kafka the key of its updates' HMAC.
	// Others' updates are refused.
	Tokens map[string]string
	// Signer, when set, signs every model the Kafka channel publishes;
	// clients verify with its public key. A restart restores only from
	// records that verify.
	Signer *trust.Signer
	// AfterStore is the gRPC channel's fault-injection point (see
	// grpcchan.ServerOptions.AfterStore).
	AfterStore func(u *fdxv1.Update)
}

// Validate checks that the fields the transport needs are there and none
// that belong to another transport is set.
func (c ChannelConfig) Validate() error {
	switch c.Transport {
	case Kafka:
		if strings.TrimSpace(c.Brokers) == "" {
			return errors.New("kafka: no brokers")
		}
	case EmbeddedKafka:
		if c.Listen == "" {
			return errors.New("embedded kafka: no listen address")
		}
	case GRPC:
		if c.Listen == "" {
			return errors.New("grpc: no listen address")
		}
		if len(c.KafkaProperties) > 0 {
			return errors.New("grpc: Kafka properties given; they secure the Kafka channel")
		}
	default:
		return fmt.Errorf("transport %q: want %q, %q or %q", c.Transport, Kafka, EmbeddedKafka, GRPC)
	}
	if c.Transport != GRPC && (c.GRPCTLS != nil || c.StateFile != "") {
		return errors.New("gRPC TLS and the state file go with the gRPC transport")
	}
	if c.ModelPartitions < 0 {
		return fmt.Errorf("model partitions %d is negative", c.ModelPartitions)
	}
	if c.UpdatePartitions < 0 {
		return fmt.Errorf("update partitions %d is negative", c.UpdatePartitions)
	}
	return nil
}

// Channel is an open channel server and what clients need to reach it.
type Channel struct {
	channel.Server
	// Name is "kafka" or "grpc".
	Name string
	// Addr is where clients connect: the Kafka bootstrap list or the gRPC
	// address.
	Addr      string
	close     func()
	closeOnce sync.Once
}

// Close closes the server and stops the embedded broker, if any.
func (c *Channel) Close() error {
	c.closeOnce.Do(c.close)
	return nil
}

// OpenChannel opens the channel server of job, sized for records of up to
// maxBytes.
func OpenChannel(ctx context.Context, cc ChannelConfig, job string, maxBytes int, log *slog.Logger) (*Channel, error) {
	if err := cc.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cc.Transport == GRPC {
		s, err := grpcchan.NewServer(grpcchan.ServerOptions{
			// The message limit stays at its default: larger updates
			// come in chunks, bounded by maxBytes as a whole.
			Addr: cc.Listen, Job: job, MaxUpdateBytes: maxBytes, StateFile: cc.StateFile, Logger: log,
			TLS: cc.GRPCTLS, Tokens: cc.Tokens, AfterStore: cc.AfterStore,
		})
		if err != nil {
			return nil, err
		}
		log.Info("gRPC aggregator listening", "addr", s.Addr())
		return &Channel{Server: s, Name: "grpc", Addr: s.Addr(), close: func() { s.Close() }}, nil
	}
	brokers := cc.Brokers
	stopBroker := func() {}
	if cc.Transport == EmbeddedKafka {
		b, err := embedded.Start(embedded.Options{Addr: cc.Listen})
		if err != nil {
			return nil, err
		}
		brokers, stopBroker = b.Addr(), b.Close
		log.Info("embedded Kafka broker started (in memory)", "addr", brokers)
	}
	parts := cc.UpdatePartitions
	if parts == 0 {
		parts = 4
	}
	ko := kafkachan.Options{Brokers: brokers, Job: job, Properties: cc.KafkaProperties, Logger: log}
	if cc.Signer != nil {
		ko.Verifier = trust.NewVerifier(cc.Signer.Public())
	} else {
		log.Warn("models are not signed: anyone who can write the model topic can forge one (set a model signing key)")
	}
	if len(cc.Tokens) == 0 {
		log.Warn("updates are not authenticated: anyone who can write the updates topic can submit as any client (set a tokens file)")
	}
	s, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{
		Options:            ko,
		TopicOptions:       kafkachan.TopicOptions{UpdatePartitions: parts, ModelPartitions: cc.ModelPartitions, MaxMessageBytes: maxBytes},
		BeforeCommit:       cc.BeforeCommit,
		OnStall:            cc.OnStall,
		TransactionTimeout: cc.TransactionTimeout,
		Signer:             cc.Signer,
		Tokens:             cc.Tokens,
	})
	if err != nil {
		stopBroker()
		return nil, err
	}
	log.Info("Kafka channel ready", "brokers", brokers, "model_topic", kafkachan.ModelTopic(job),
		"updates_topic", kafkachan.UpdatesTopic(job), "max_message_bytes", maxBytes)
	return &Channel{Server: s, Name: "kafka", Addr: brokers, close: func() { s.Close(); stopBroker() }}, nil
}
