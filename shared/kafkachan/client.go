package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// ClientOptions configure a participant.
type ClientOptions struct {
	Options
	// MaxMessageBytes bounds model records fetched and updates produced;
	// 0 means 64 MiB.
	MaxMessageBytes int
	// Token, when set, keys the HMAC every update carries
	// (trust.HeaderMAC), so that the aggregator can tell it came from this
	// client: the same per-client token as the gRPC bearer token.
	Token string
}

// Client is a participant's Kafka channel. It is not safe for concurrent
// Model calls; Submit may run concurrently with Model.
type Client struct {
	opt    ClientOptions
	p      *kafka.Producer
	reader *modelReader
	count  channel.Counter
	mu     sync.Mutex // serializes Model
	// down is set once librdkafka reports every broker down.
	down atomic.Bool
	// lastErr is the last other error event, for Dial's error.
	lastErr atomic.Pointer[kafka.Error]
}

var _ channel.Client = (*Client)(nil)

// Dial connects to the brokers. It fails fast, with an error wrapping
// channel.ErrUnreachable, when no broker answers before ctx's deadline, so a
// Cloud Function can answer 502 instead of hanging.
func Dial(ctx context.Context, opt ClientOptions) (*Client, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	if opt.MaxMessageBytes <= 0 {
		opt.MaxMessageBytes = 64 << 20
	}
	cm := opt.producerConfig(kafka.ConfigMap{
		// Idempotence off, acks=all kept. An idempotent producer must
		// obtain a producer id (InitProducerId) before its first record:
		// one more broker round trip on every cold invocation, for a
		// client that sends one record per round. Without it, a retry
		// after a lost acknowledgement can write an update twice. That
		// is harmless: the aggregator accepts one update per (client,
		// round) and rejects the copy as a duplicate (see
		// aggregator/job's TestDuplicateDeliveryDropped). acks=all keeps
		// an acknowledged update durable on every in-sync replica.
		"enable.idempotence":  false,
		"acks":                "all",
		"linger.ms":           0,
		"message.max.bytes":   opt.MaxMessageBytes,
		"compression.type":    "none",
		"go.delivery.reports": true,
		"delivery.timeout.ms": 120000,
	})
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	startLogs(p, cm, opt.logger())
	c := &Client{opt: opt, p: p}
	var auth authWatch
	go drainEvents(p, opt.logger(), func(e kafka.Error) { c.noteError(e); auth.see(e) })
	// The reader's consumer starts connecting as soon as it exists, so it
	// is created before waiting on the producer's metadata: both
	// connections are set up at the same time.
	c.reader, err = newModelReader(opt.Options, &c.count, opt.MaxMessageBytes, true)
	if err != nil {
		p.Close()
		return nil, err
	}
	// probeBrokers fails fast on a refused login; on a timeout the last
	// broker error says why (refused, TLS, SASL) where the timeout does not.
	if err := probeBrokers(ctx, p, &auth, opt.Brokers, 10*time.Second); err != nil {
		c.Close()
		if last := c.lastErr.Load(); last != nil && errors.Is(err, channel.ErrUnreachable) {
			err = fmt.Errorf("%w (last broker error: %v)", err, *last)
		}
		return nil, err
	}
	return c, nil
}

// drainEvents empties a producer's event channel of what is not a per-call
// delivery report, so that it never fills up, and logs error events. Those
// carry the reason of a failed connection or handshake (refused, TLS
// verification, SASL): with the Go log channel off (see configMap) they
// are how the reason reaches slog. It runs on the producer's own event
// poller's output, so it adds no goroutine in C. onErr, when set, sees
// every error first.
func drainEvents(p *kafka.Producer, log *slog.Logger, onErr func(kafka.Error)) {
	for ev := range p.Events() {
		if e, ok := ev.(kafka.Error); ok {
			if onErr != nil {
				onErr(e)
			}
			log.Warn("kafka client error", "client", p.String(), "code", e.Code().String(), "err", e.Error())
		}
	}
}

// noteError remembers e for Dial's error and Healthy.
func (c *Client) noteError(e kafka.Error) {
	if e.Code() == kafka.ErrAllBrokersDown {
		c.down.Store(true)
		return
	}
	c.lastErr.Store(&e)
}

// Model implements channel.Client.
func (c *Client) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reader.await(ctx, minRound)
}

// Submit implements channel.Client: it produces the update keyed by client id
// and waits for the broker's acknowledgement. An update larger than a chunk
// goes as chunks, then, once all of them are acknowledged, their manifest:
// so the manifest follows every chunk in the partition even if librdkafka
// retried one out of order.
func (c *Client) Submit(ctx context.Context, u *fdxv1.Update) error {
	b, err := proto.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode update: %w", err)
	}
	topic := UpdatesTopic(c.opt.Job)
	key := []byte(u.GetClientId())
	last := &kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
		Key:            key,
		Value:          b,
	}
	var chunks []*kafka.Message
	if len(b) > c.opt.chunkBytes() {
		chunks, last, err = transferRecords(topic, kafka.PartitionAny, key, b, c.opt.chunkBytes())
		if err != nil {
			return fmt.Errorf("update round %d: %w", u.GetBaseRound(), err)
		}
	}
	if c.opt.Token != "" {
		last.Headers = append(last.Headers, kafka.Header{Key: trust.HeaderMAC, Value: trust.MAC(c.opt.Token, last.Value)})
	}
	for _, batch := range [][]*kafka.Message{chunks, {last}} {
		if len(batch) == 0 {
			continue
		}
		if err := produceAll(ctx, c.p, batch, nil); err != nil {
			if ctx.Err() != nil {
				// librdkafka still owns the messages; Purge drops them
				// so a late delivery cannot surprise a caller that
				// already gave up.
				_ = c.p.Purge(kafka.PurgeQueue | kafka.PurgeInFlight)
				return fmt.Errorf("produce update round %d: %w", u.GetBaseRound(), ctx.Err())
			}
			return fmt.Errorf("produce update round %d: %w", u.GetBaseRound(), unreachable(err))
		}
		for _, m := range batch {
			c.count.Sent(len(m.Value) + len(m.Key))
		}
	}
	return nil
}

// Stats implements channel.Client.
func (c *Client) Stats() channel.Stats { return c.count.Stats() }

// Close releases the connections. The producer and the reader close at the
// same time: the producer waits for its event poller's current 100 ms poll
// and the consumer for its in-flight fetch, and neither wait needs the
// other. A caller that answers a request should close after answering.
func (c *Client) Close() error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.p.Flush(5000)
		c.p.Close()
	}()
	err := c.reader.close()
	<-done
	return err
}

// Healthy reports whether the client may be reused: the producer has no
// fatal error and librdkafka has not reported every broker down since the
// dial. It asks nothing of the brokers, so a warm invocation pays no round
// trip for it; a connection that broke since is caught by the next call's
// error, on which a cache evicts the client.
func (c *Client) Healthy(context.Context) error {
	if err := c.p.GetFatalError(); err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	if c.down.Load() {
		return fmt.Errorf("kafka brokers %s: %w: all brokers were down", c.opt.Brokers, channel.ErrUnreachable)
	}
	return nil
}
