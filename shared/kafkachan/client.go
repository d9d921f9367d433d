package kafkachan

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// ClientOptions configure a participant.
type ClientOptions struct {
	Options
	// MaxMessageBytes bounds model records fetched and updates produced;
	// 0 means 64 MiB.
	MaxMessageBytes int
}

// Client is a participant's Kafka channel. It is not safe for concurrent
// Model calls; Submit may run concurrently with Model.
type Client struct {
	opt    ClientOptions
	p      *kafka.Producer
	reader *modelReader
	count  channel.Counter
	mu     sync.Mutex // serializes Model
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
		"enable.idempotence":  true,
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
	go forwardLogs(p.Logs(), opt.logger())
	var auth authWatch
	go drainEvents(p, &auth)
	c := &Client{opt: opt, p: p}
	if err := probeBrokers(ctx, p, &auth, opt.Brokers, 10*time.Second); err != nil {
		p.Close()
		return nil, err
	}
	c.reader, err = newModelReader(opt.Options, &c.count, opt.MaxMessageBytes)
	if err != nil {
		p.Close()
		return nil, err
	}
	return c, nil
}

// drainEvents discards producer events that are not per-call delivery
// reports (errors are logged by librdkafka itself), so the channel never
// fills up, and shows each to auth (may be nil).
func drainEvents(p *kafka.Producer, auth *authWatch) {
	for ev := range p.Events() {
		if auth != nil {
			auth.see(ev)
		}
	}
}

// Model implements channel.Client.
func (c *Client) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reader.await(ctx, minRound)
}

// Submit implements channel.Client: it produces the update keyed by client id
// and waits for the broker's acknowledgement.
func (c *Client) Submit(ctx context.Context, u *fdxv1.Update) error {
	b, err := proto.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode update: %w", err)
	}
	topic := UpdatesTopic(c.opt.Job)
	done := make(chan kafka.Event, 1)
	msg := &kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
		Key:            []byte(u.GetClientId()),
		Value:          b,
	}
	if err := c.p.Produce(msg, done); err != nil {
		return fmt.Errorf("produce update round %d: %w", u.GetBaseRound(), err)
	}
	select {
	case ev := <-done:
		m, ok := ev.(*kafka.Message)
		if !ok {
			return fmt.Errorf("produce update round %d: unexpected event %v", u.GetBaseRound(), ev)
		}
		if m.TopicPartition.Error != nil {
			return fmt.Errorf("produce update round %d: %w", u.GetBaseRound(), unreachable(m.TopicPartition.Error))
		}
		c.count.Sent(len(b) + len(msg.Key))
		return nil
	case <-ctx.Done():
		// librdkafka still owns the message; Purge drops it so a late
		// delivery cannot surprise a caller that already gave up.
		_ = c.p.Purge(kafka.PurgeQueue | kafka.PurgeInFlight)
		return fmt.Errorf("produce update round %d: %w", u.GetBaseRound(), ctx.Err())
	}
}

// Stats implements channel.Client.
func (c *Client) Stats() channel.Stats { return c.count.Stats() }

// Close releases the connections.
func (c *Client) Close() error {
	c.p.Flush(5000)
	c.p.Close()
	return c.reader.close()
}
