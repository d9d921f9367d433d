package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// pollInterval bounds how long a Poll blocks, so ctx cancellation is seen
// promptly.
const pollInterval = 100 * time.Millisecond

// modelReader reads the model topic's single partition with read_committed,
// so a model whose transaction aborted (an aggregator crash) is never seen.
type modelReader struct {
	c        *kafka.Consumer
	topic    string
	job      string
	verifier *trust.Verifier
	// valid, when set, is a further check on every model (the
	// aggregator's restore: shapes).
	valid   func(*fdxv1.GlobalModel) error
	count   *channel.Counter
	log     *slog.Logger
	newest  *fdxv1.GlobalModel
	started bool
	// knownEnd lets latest stop at the high watermark it queried instead
	// of waiting for the end-of-partition event (see readToEnd). Clients
	// set it; the aggregator's restart path keeps the plain rule.
	knownEnd bool
	// chunks reassembles chunked models; need is where the chunks of the
	// last incomplete one would start (-1: none), so that latest can go
	// back for them.
	chunks *assembler
	need   int64
	// from is where the current readToEnd began: a chunked model whose
	// chunks lie before it is not a bad record, only out of the window.
	from int64
	// cm configures spreadC, the consumer that fetches a spread model's
	// chunks from the other partitions, made on first use.
	cm      kafka.ConfigMap
	spreadC *kafka.Consumer
	// held keeps the spread chunks of transfer heldID that partition 0's
	// reading passed, by offset, for their manifest: a waiting reader gets
	// them anyway, and need not fetch them twice. Cleared with every
	// manifest and when another transfer's chunk comes, so it holds at
	// most one model's share.
	held   map[int64]*kafka.Message
	heldID string
}

// Fetch waits of model readers. A waiting reader keeps one fetch parked on
// the broker, which answers it as soon as a new model commits, so the wait
// bounds how often an idle reader asks again, not how late it learns of a
// model. A client waits out most of a round, and 1,000 of them asking every
// 50 ms were 20,000 empty fetches a second: at 1,000 clients in one process
// the round time fell from 9.1 to 4.2 s with 500 ms (issue 11), with no
// change at 100. Its cost used to be the cold path, whose read ended only
// with an end-of-partition event after one whole empty wait; clients no
// longer wait for it (knownEnd). The aggregator's reader, which reads to
// the end-of-partition event on restart, keeps the short wait.
const (
	clientFetchWait = 500 * time.Millisecond
	serverFetchWait = 50 * time.Millisecond
)

// newModelReader opens a reader; client selects the participant's settings
// (knownEnd, clientFetchWait) over the aggregator's.
func newModelReader(o Options, count *channel.Counter, maxBytes int, client bool) (*modelReader, error) {
	wait := serverFetchWait
	if client {
		wait = clientFetchWait
	}
	cm := o.configMap(kafka.ConfigMap{
		// Assigned, never subscribed: the group is never joined, but the
		// client requires an id.
		"group.id":                  "fdx." + o.Job + ".reader",
		"enable.auto.commit":        false,
		"isolation.level":           "read_committed",
		"enable.partition.eof":      true,
		"fetch.wait.max.ms":         int(wait / time.Millisecond),
		"max.partition.fetch.bytes": maxBytes,
		"fetch.max.bytes":           maxBytes * 2,
		"receive.message.max.bytes": maxBytes*2 + 1<<20,
	})
	c, err := kafka.NewConsumer(&cm)
	if err != nil {
		return nil, fmt.Errorf("model consumer: %w", err)
	}
	startLogs(c, cm, o.logger())
	return &modelReader{c: c, cm: cm, held: map[int64]*kafka.Message{}, topic: ModelTopic(o.Job), job: o.Job, verifier: o.Verifier, count: count, log: o.logger(), knownEnd: client,
		chunks: newAssembler(maxTransferBytes, maxTransferBytes), need: -1}, nil
}

func (r *modelReader) close() error {
	if r.spreadC != nil {
		closeConsumer(r.spreadC, r.log)
	}
	return closeConsumer(r.c, r.log)
}

// latest returns the newest committed model, or nil when the topic is empty.
// It seeks close to the end and widens the window backwards until it finds a
// committed record: transaction markers and aborted records occupy offsets
// that read_committed skips. A chunked model's manifest is its last record;
// when the window began after its chunks, the next window starts where the
// manifest says they do.
func (r *modelReader) latest(ctx context.Context) (*fdxv1.GlobalModel, error) {
	low, high, err := r.watermarks(ctx)
	if err != nil {
		return nil, err
	}
	if high <= low {
		r.started = true
		return r.assign(ctx, high)
	}
	for back := int64(2); ; {
		start := max(low, high-back)
		r.chunks.forget(nil)
		clear(r.held)
		r.need = -1
		m, err := r.readToEnd(ctx, start, high)
		if err != nil {
			return nil, err
		}
		if m != nil || start == low {
			return m, nil
		}
		if r.need >= 0 && r.need < start {
			back = high - r.need
		} else {
			back *= 4
		}
	}
}

func (r *modelReader) watermarks(ctx context.Context) (low, high int64, err error) {
	for checked := false; ; checked = true {
		low, high, err = r.c.QueryWatermarkOffsets(r.topic, 0, timeoutMs(ctx, 5*time.Second))
		if err == nil {
			return low, high, nil
		}
		// A topic the principal may not describe looks like a missing
		// one here; its metadata tells the two apart.
		if !checked {
			if derr := r.deniedTopic(ctx); derr != nil {
				return 0, 0, fmt.Errorf("read %s: %w", r.topic, derr)
			}
		}
		var ke kafka.Error
		if errors.As(err, &ke) && ke.Code() == kafka.ErrUnknownTopicOrPart {
			// The aggregator has not created the job yet: no model.
			return 0, 0, nil
		}
		missing := errors.As(err, &ke) && ke.Code() == kafka.ErrUnknownPartition
		if ctx.Err() != nil && missing {
			// Waited as long as the caller would for the job to appear.
			return 0, 0, fmt.Errorf("read %s: %w (no aggregator created it): %w", r.topic, channel.ErrJobNotFound, ctx.Err())
		}
		if ctx.Err() != nil {
			return 0, 0, fmt.Errorf("read %s watermarks: %w", r.topic, unreachable(err))
		}
		if errors.As(err, &ke) && (ke.Code() == kafka.ErrTransport || ke.Code() == kafka.ErrAllBrokersDown) {
			return 0, 0, fmt.Errorf("read %s watermarks: %w", r.topic, unreachable(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(pollInterval):
		}
	}
}

// deniedTopic returns an ErrUnauthenticated error when the broker refuses
// this principal the model topic.
func (r *modelReader) deniedTopic(ctx context.Context) error {
	md, err := r.c.GetMetadata(&r.topic, false, timeoutMs(ctx, 5*time.Second))
	if err != nil {
		return denied(err)
	}
	if tm, ok := md.Topics[r.topic]; ok {
		return denied(tm.Error)
	}
	return nil
}

func (r *modelReader) assign(ctx context.Context, offset int64) (*fdxv1.GlobalModel, error) {
	tp := kafka.TopicPartition{Topic: &r.topic, Partition: 0, Offset: kafka.Offset(offset)}
	if err := r.c.Assign([]kafka.TopicPartition{tp}); err != nil {
		return nil, fmt.Errorf("assign %s: %w", r.topic, err)
	}
	return nil, nil
}

// readToEnd reads from offset up to the partition end and returns the last
// model found (nil if none).
//
// The end is where librdkafka signals end-of-partition, which it does only
// after a fetch from the end comes back empty: one whole fetch.wait.max.ms
// long poll (50 ms) on every cold start. With knownEnd, readToEnd stops
// earlier, at high, the high watermark (for read_committed, the last stable
// offset) it queried just before. Every model record is written inside a
// round transaction, so the partition ends with that transaction's commit
// marker at high-1, which read_committed never delivers: the record at
// high-2 is the newest model. One more check keeps this safe if a record
// ever sat at high-1 after all: a fetch response's records reach the queue
// together, so whatever followed high-2 in the same response is drained
// with non-blocking polls before returning. When the tail is not a
// committed record (an aborted round), no record reaches high-2 and the
// end-of-partition event ends the read as before.
func (r *modelReader) readToEnd(ctx context.Context, offset, high int64) (*fdxv1.GlobalModel, error) {
	if _, err := r.assign(ctx, offset); err != nil {
		return nil, err
	}
	r.started, r.from = true, offset
	var last *fdxv1.GlobalModel
	wait := pollInterval
	for {
		m, at, eof, err := r.pollFor(ctx, wait)
		if err != nil {
			return nil, err
		}
		if m != nil {
			last = m
		}
		switch {
		case eof, wait == 0 && m == nil && at < 0:
			// The partition end, or nothing more was queued behind the
			// record at high-2.
			return last, nil
		case r.knownEnd && at >= high-1:
			return last, nil
		case r.knownEnd && at >= high-2:
			wait = 0
		}
	}
}

// poll returns one decoded model, or eof at the partition end.
func (r *modelReader) poll(ctx context.Context) (*fdxv1.GlobalModel, bool, error) {
	m, _, eof, err := r.pollFor(ctx, pollInterval)
	return m, eof, err
}

// pollFor is poll with a wait bound: it also returns the offset of the
// record it read (-1 if none). With wait 0 it returns at once, with nothing,
// when no event is queued.
func (r *modelReader) pollFor(ctx context.Context, wait time.Duration) (*fdxv1.GlobalModel, int64, bool, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, -1, false, err
		}
		ev := r.c.Poll(int(wait / time.Millisecond))
		if ev == nil && wait == 0 {
			return nil, -1, false, nil
		}
		switch ev := ev.(type) {
		case *kafka.Message:
			if ev.TopicPartition.Error != nil {
				return nil, -1, false, fmt.Errorf("read %s: %w", r.topic, ev.TopicPartition.Error)
			}
			at := int64(ev.TopicPartition.Offset)
			r.count.Received(len(ev.Value) + len(ev.Key))
			if header(ev, headerSpread) != nil {
				if id := string(header(ev, headerTransfer)); id != r.heldID {
					clear(r.held)
					r.heldID = id
				}
				if len(r.held) < maxChunks {
					r.held[at] = ev // used with its manifest
				}
				return nil, at, false, nil
			}
			if isChunk(ev) {
				for _, f := range r.chunks.add(ev, "") {
					r.count.Rejected()
					r.log.Warn("chunked model dropped", "topic", r.topic, "offset", at, "reason", f.Reason, "err", f.Detail)
				}
				return nil, at, false, nil
			}
			m, err := r.decode(ctx, ev)
			var te *transferError
			if errors.As(err, &te) && te.Need >= 0 && te.Need < r.from {
				// Its chunks precede the window: latest reads them next.
				return nil, at, false, nil
			}
			if err != nil {
				// Anyone who can reach the broker may write here: ignore
				// the record and keep reading, rather than train on it,
				// end on it or wedge on it.
				r.count.Rejected()
				r.log.Warn("model record ignored", "topic", r.topic, "offset", at, "err", err)
				return nil, at, false, nil
			}
			if r.newest == nil || m.GetRound() >= r.newest.GetRound() {
				r.newest = m
			}
			return m, at, false, nil
		case kafka.PartitionEOF:
			return nil, -1, true, nil
		case kafka.Error:
			if ev.IsFatal() {
				return nil, -1, false, fmt.Errorf("read %s: %w", r.topic, ev)
			}
			r.log.Debug("kafka consumer error", "topic", r.topic, "err", ev)
		}
	}
}

// decode returns the model a record holds if it is one to trust: it
// decodes, its signature verifies (with a verifier), it belongs to the job
// with a round inside it, and valid accepts it. A manifest's signature
// covers the manifest, whose SHA-256 covers the reassembled model.
func (r *modelReader) decode(ctx context.Context, msg *kafka.Message) (*fdxv1.GlobalModel, error) {
	if r.verifier != nil {
		if err := r.verifier.Verify(msg.Value, header(msg, trust.HeaderSignature), string(header(msg, trust.HeaderKeyID))); err != nil {
			return nil, fmt.Errorf("signature: %w", err)
		}
	}
	value := msg.Value
	var m *fdxv1.GlobalModel
	if man := spreadManifest(msg); man != nil {
		whole, failed := r.fetchSpread(ctx, man, int64(msg.TopicPartition.Offset))
		if failed != nil {
			return nil, failed
		}
		var err error
		if m, err = unmarshalModel(whole); err != nil {
			return nil, fmt.Errorf("undecodable: %w", err)
		}
	} else if isManifest(msg) {
		whole, failed := r.chunks.complete(msg, "")
		for i, f := range failed {
			if f.Need >= 0 {
				r.need = f.Need
			}
			if i < len(failed)-1 || whole != nil {
				r.count.Rejected()
				r.log.Warn("chunked model dropped", "topic", r.topic, "reason", f.Reason, "err", f.Detail)
			}
		}
		if whole == nil {
			if len(failed) == 0 {
				return nil, errors.New("repeated manifest")
			}
			return nil, failed[len(failed)-1]
		}
		value = whole
	}
	if m == nil {
		if len(value) == 0 {
			return nil, errors.New("empty record")
		}
		m = &fdxv1.GlobalModel{}
		if err := proto.Unmarshal(value, m); err != nil {
			return nil, fmt.Errorf("undecodable: %w", err)
		}
	}
	if err := rules.CheckModel(m, r.job); err != nil {
		return nil, err
	}
	if r.valid != nil {
		if err := r.valid(m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// header returns the value of msg's first header named key, nil if none.
func header(msg *kafka.Message, key string) []byte {
	for _, h := range msg.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// await returns the newest model with round >= minRound (or a final one),
// reading new records as the aggregator publishes them.
func (r *modelReader) await(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	if !r.started {
		if _, err := r.latest(ctx); err != nil {
			return nil, err
		}
	}
	for {
		if m := r.newest; m != nil && (m.GetRound() >= minRound || m.GetFinal()) {
			return m, nil
		}
		if _, _, err := r.poll(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait for model round %d on %s: %w", minRound, r.topic, ctx.Err())
			}
			return nil, err
		}
	}
}

// timeoutMs converts the time left on ctx to a librdkafka timeout.
func timeoutMs(ctx context.Context, def time.Duration) int {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return int(d / time.Millisecond)
}

// History reads every committed model of a job, oldest first: the job's
// audit trail (each model names its contributors).
func History(ctx context.Context, o Options) ([]*fdxv1.GlobalModel, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var count channel.Counter
	r, err := newModelReader(o, &count, 64<<20, false)
	if err != nil {
		return nil, err
	}
	defer r.close()
	low, high, err := r.watermarks(ctx)
	if err != nil || high <= low {
		return nil, err
	}
	if _, err := r.assign(ctx, low); err != nil {
		return nil, err
	}
	var out []*fdxv1.GlobalModel
	for {
		m, eof, err := r.poll(ctx)
		if err != nil {
			return nil, err
		}
		if m != nil {
			out = append(out, m)
		}
		if eof {
			return out, nil
		}
	}
}
