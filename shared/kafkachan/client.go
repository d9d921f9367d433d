package kafkachan

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
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

// Client is a participant's Kafka channel: one kgo client that produces
// updates and reads the model topic, so a cold function opens one set of
// broker connections. It is not safe for concurrent Model calls; Submit
// may run concurrently with Model.
type Client struct {
	opt    ClientOptions
	cl     *kgo.Client
	reader *modelReader
	count  channel.Counter
	mu     sync.Mutex // serializes Model
	conns  *connWatch
}

var _ channel.Client = (*Client)(nil)

// submitTimeout bounds an update's delivery when the caller's context has
// no deadline.
const submitTimeout = 2 * time.Minute

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
	conns := &connWatch{up: map[int32]bool{}}
	opts, err := opt.clientOpts(append(readerOpts(opt.MaxMessageBytes, clientFetchWait),
		// Idempotence off, acks=all kept. An idempotent producer must
		// obtain a producer id (InitProducerId) before its first record:
		// one more broker round trip on every cold invocation, for a
		// client that sends one record per round. Without it, a retry
		// after a lost acknowledgement can write an update twice. That is
		// harmless: the aggregator accepts one update per (client, round)
		// and rejects the copy as a duplicate (see aggregator/job's
		// TestDuplicateDeliveryDropped). acks=all keeps an acknowledged
		// update durable on every in-sync replica.
		kgo.DisableIdempotentWrite(),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// One batch holds at most one record of the size the topics
		// take (a chunk and its headers), whatever MaxMessageBytes is:
		// the broker refuses a batch over the topic's max.message.bytes.
		kgo.ProducerBatchMaxBytes(int32(min(opt.MaxMessageBytes, max(MinMessageBytes, opt.chunkBytes()+recordOverhead)))),
		kgo.RecordDeliveryTimeout(submitTimeout),
		kgo.WithHooks(conns),
	)...)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	c := &Client{opt: opt, cl: cl, conns: conns}
	if c.reader, err = newModelReader(cl, false, opt.Options, &c.count, opt.MaxMessageBytes); err != nil {
		cl.Close()
		return nil, err
	}
	// probeBrokers fails fast on a refused login; on a timeout the last
	// broker error says why (refused, TLS, SASL) where the timeout does not.
	if err := probeBrokers(ctx, cl, opt.Brokers, 10*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
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
// so the manifest follows every chunk in the partition even if a chunk was
// retried.
func (c *Client) Submit(ctx context.Context, u *fdxv1.Update) error {
	b, err := proto.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode update: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, submitTimeout)
	defer cancel()
	chunks, last, err := c.updateRecords(u.GetClientId(), b)
	if err != nil {
		return fmt.Errorf("update round %d: %w", u.GetBaseRound(), err)
	}
	for _, batch := range [][]*kgo.Record{chunks, {last}} {
		if len(batch) == 0 {
			continue
		}
		if err := produceAll(ctx, c.cl, batch, nil); err != nil {
			if ctx.Err() != nil {
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

// updateRecords returns the records of an update's bytes b: the record, or
// chunks and their manifest (last), keyed by client id, with their MACs
// when the client has a token.
func (c *Client) updateRecords(clientID string, b []byte) (chunks []*kgo.Record, last *kgo.Record, err error) {
	topic := UpdatesTopic(c.opt.Job)
	key := []byte(clientID)
	last = &kgo.Record{Topic: topic, Partition: byKey, Key: key, Value: b}
	if len(b) > c.opt.chunkBytes() {
		if chunks, last, err = transferRecords(topic, byKey, key, b, c.opt.chunkBytes()); err != nil {
			return nil, nil, err
		}
	}
	if c.opt.Token != "" {
		// Each chunk authenticates on its own, so that no one without
		// the token can replace this transfer while it is in progress.
		for i, ch := range chunks {
			ch.Headers = append(ch.Headers, kgo.RecordHeader{Key: trust.HeaderMAC, Value: trust.ChunkMAC(c.opt.Token, string(header(ch, headerTransfer)), i, ch.Value)})
		}
		last.Headers = append(last.Headers, kgo.RecordHeader{Key: trust.HeaderMAC, Value: trust.MAC(c.opt.Token, last.Value)})
	}
	return chunks, last, nil
}

// Stats implements channel.Client.
func (c *Client) Stats() channel.Stats { return c.count.Stats() }

// closeTimeout bounds the flush of a closing client.
const closeTimeout = 5 * time.Second

// Close releases the connections, after waiting (up to closeTimeout) for
// records still being sent. A caller that answers a request should close
// after answering.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	err := c.cl.Flush(ctx)
	c.reader.close()
	c.cl.Close()
	if err != nil {
		return fmt.Errorf("close kafka client: %w", err)
	}
	return nil
}

// Healthy reports whether the client may be reused: the last connection
// attempt to every broker it dialed did not fail. It asks nothing of the
// brokers, so a warm invocation pays no round trip for it; a connection
// that broke since is caught by the next call's error, on which a cache
// evicts the client.
func (c *Client) Healthy(context.Context) error {
	if c.conns.allDown() {
		return fmt.Errorf("kafka brokers %s: %w: every broker's last connection attempt failed", c.opt.Brokers, channel.ErrUnreachable)
	}
	return nil
}

// connWatch follows the outcome of the client's broker dials.
type connWatch struct {
	mu sync.Mutex
	up map[int32]bool // by broker node id: did the last dial succeed
}

var _ kgo.HookBrokerConnect = (*connWatch)(nil)

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (w *connWatch) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.up[meta.NodeID] = err == nil
}

// allDown reports whether the last dial of every broker failed. Seed
// brokers (negative ids) count only until a real broker was dialed: a
// client talks to the seeds once, for the first metadata.
func (w *connWatch) allDown() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	known := false
	for id := range w.up {
		known = known || id >= 0
	}
	n := 0
	for id, ok := range w.up {
		if known && id < 0 {
			continue
		}
		if ok {
			return false
		}
		n++
	}
	return n > 0
}
