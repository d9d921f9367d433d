// Package channel defines the two sides of a federation transport, so that the
// round logic and the client logic are written once and run over Kafka
// (package kafkachan) or gRPC (package grpcchan) unchanged.
package channel

import (
	"context"
	"errors"
	"sync/atomic"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// ErrUnreachable wraps errors that mean the transport could not be reached at
// all (nothing listens, DNS fails), as opposed to a timeout while waiting.
var ErrUnreachable = errors.New("transport unreachable")

// ErrRoundClosed means a round's model was already superseded: the update
// for it came too late.
var ErrRoundClosed = errors.New("round already closed")

// ErrJobNotFound means no aggregator runs the job asked for: its Kafka
// topics do not exist (yet), or the gRPC aggregator runs another job.
var ErrJobNotFound = errors.New("job not found")

// ErrUnauthenticated wraps a refusal of the client's credentials (bearer
// token, client certificate, SASL).
var ErrUnauthenticated = errors.New("not authenticated")

// ErrOutcomeUnknown wraps a round transaction whose outcome the server
// cannot know: the commit timed out, was cancelled, or the producer was
// fenced while it was in flight. The transaction may or may not have
// committed, so the only safe step is to stop and let a restart read what
// the broker committed; guessing either way risks a round counted twice or
// lost. The aggregator exits with cli.ExitOutcomeUnknown on it.
var ErrOutcomeUnknown = errors.New("transaction outcome unknown")

// ErrRejected wraps an update that the aggregator refused synchronously
// (gRPC only: Kafka is fire-and-forget, rejections show in the aggregator).
// The error also carries the *rules.Rejection (errors.As) when the
// aggregator said why.
var ErrRejected = errors.New("update rejected")

// Client is a participant's view of a channel.
type Client interface {
	// Model returns the newest global model of the job whose round is at
	// least minRound, waiting for it until ctx is done. A final model is
	// returned whatever its round, so that waiting clients learn the job
	// ended.
	Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error)
	// Submit delivers an update; it returns once the transport has it
	// (Kafka: acknowledged by the broker; gRPC: answered by the aggregator).
	Submit(ctx context.Context, u *fdxv1.Update) error
	// Stats reports what this client moved so far.
	Stats() Stats
	Close() error
}

// Delivery is one update as the aggregator receives it. The round loop
// validates it, then calls Accept, folds it only if Accept succeeded, and
// finally calls Reply: so a sender never hears "accepted" for an update
// that is not both stored and counted, nor "rejected" for one that is.
type Delivery struct {
	// Update is nil when the record could not be decoded; Err says why.
	Update *fdxv1.Update
	Err    error
	// Key is the Kafka record key or the gRPC peer's client id (may be empty).
	Key string
	// Size is the encoded size in bytes.
	Size int
	// Rejection, when set, is the transport's own refusal of a record (an
	// update MAC that does not verify; a chunked transfer dropped as
	// incomplete or corrupt, with no Update): the round loop counts and
	// answers it like a validation failure.
	Rejection *rules.Rejection
	// Stream, when set, is an update the channel did not hold whole
	// (Streamer): Update has no Params, and the values are read through
	// Stream.
	Stream *Stream
	// accept and reply, when set, are a synchronous transport's (gRPC)
	// durable store and answer to the waiting caller.
	accept func() error
	reply  func(rej *rules.Rejection)
}

// NewDelivery returns a delivery of u whose acceptance runs accept (nil:
// nothing to store) and whose verdict goes to reply (nil: nobody waits).
func NewDelivery(u *fdxv1.Update, size int, accept func() error, reply func(rej *rules.Rejection)) Delivery {
	return Delivery{Update: u, Size: size, accept: accept, reply: reply}
}

// Accept makes a valid update durable where the channel is durable (the
// gRPC channel's update log). Kafka needs nothing here: the record is
// already in the broker, and its offset commits with the round. After an
// error the update must not be folded: it is rejected as rules.NotStored
// and its sender may try again.
func (d Delivery) Accept() error {
	if d.accept == nil {
		return nil
	}
	return d.accept()
}

// Reply tells a waiting sender the verdict: nil for accepted. It is a no-op
// for asynchronous transports.
func (d Delivery) Reply(rej *rules.Rejection) {
	if d.reply != nil {
		d.reply(rej)
	}
}

// ClientID is the update's client id, or the transport's key when the
// record could not be decoded.
func (d Delivery) ClientID() string {
	if d.Update != nil {
		return d.Update.GetClientId()
	}
	return d.Key
}

// Server is the aggregator's side of a channel. It is used by one goroutine,
// the round loop, which owns all round state; that keeps aggregation
// deterministic and the transports simple.
type Server interface {
	// Latest returns the newest published model that valid accepts (and,
	// where the channel signs models, whose signature verifies), or nil if
	// the job has none. It is the aggregator's checkpoint on restart: a
	// forged or damaged record on top of the log is walked past, never
	// restored from.
	Latest(ctx context.Context, valid func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error)
	// Next returns the next received update, waiting until ctx is done.
	Next(ctx context.Context) (Delivery, error)
	// Publish makes m the current global model. On Kafka it also commits,
	// in the same transaction, the consumption of every update Next has
	// returned so far, so that a crash can neither lose nor double-count one.
	Publish(ctx context.Context, m *fdxv1.GlobalModel) error
	// Stats reports what the server moved so far.
	Stats() Stats
	Close() error
}

// Stats counts transport messages and payload bytes. For Kafka a message is
// a record produced or fetched; for gRPC a message sent or received on a
// stream (a unary call is one of each).
type Stats struct {
	MessagesSent     int64 `json:"messages_sent"`
	MessagesReceived int64 `json:"messages_received"`
	BytesSent        int64 `json:"bytes_sent"`
	BytesReceived    int64 `json:"bytes_received"`
	// RecordsRejected counts records received and ignored because they did
	// not verify (an unsigned or forged model).
	RecordsRejected int64 `json:"records_rejected,omitempty"`
}

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{
		MessagesSent:     s.MessagesSent + o.MessagesSent,
		MessagesReceived: s.MessagesReceived + o.MessagesReceived,
		BytesSent:        s.BytesSent + o.BytesSent,
		BytesReceived:    s.BytesReceived + o.BytesReceived,
		RecordsRejected:  s.RecordsRejected + o.RecordsRejected,
	}
}

// Counter accumulates Stats from concurrent goroutines.
type Counter struct {
	msgSent, msgRecv, bytesSent, bytesRecv, rejected atomic.Int64
}

// Rejected records one received message ignored as untrustworthy.
func (c *Counter) Rejected() { c.rejected.Add(1) }

// Sent records one message of n bytes sent.
func (c *Counter) Sent(n int) {
	c.msgSent.Add(1)
	c.bytesSent.Add(int64(n))
}

// Received records one message of n bytes received.
func (c *Counter) Received(n int) {
	c.msgRecv.Add(1)
	c.bytesRecv.Add(int64(n))
}

// Stats returns a snapshot.
func (c *Counter) Stats() Stats {
	return Stats{
		MessagesSent:     c.msgSent.Load(),
		MessagesReceived: c.msgRecv.Load(),
		BytesSent:        c.bytesSent.Load(),
		BytesReceived:    c.bytesRecv.Load(),
		RecordsRejected:  c.rejected.Load(),
	}
}
