package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// ServerOptions configure the aggregator's side.
type ServerOptions struct {
	Options
	TopicOptions
	// TransactionTimeout bounds one round-closing transaction.
	TransactionTimeout time.Duration
	// BeforeCommit, when set, runs inside every round transaction after
	// the model and offsets are sent and before the commit: the place where
	// fault-injection tests kill the process.
	BeforeCommit func(round int64)
	// AfterChunk, when set, runs inside a round transaction after chunk
	// i of a chunked model is acknowledged: fault injection mid-transfer.
	AfterChunk func(round int64, i int)
	// MaxPendingBytes bounds the update chunks buffered until their
	// manifests arrive (0: 1 GiB); a transfer that would exceed it is
	// dropped as rules.Incomplete.
	MaxPendingBytes int64
	// Signer, when set, signs every model record (trust.HeaderSignature,
	// trust.HeaderKeyID). Set Options.Verifier to its public key too, so
	// that a restart restores only from the aggregator's own records.
	Signer *trust.Signer
	// Tokens, when non-empty, maps client id to the token whose HMAC an
	// update must carry (trust.HeaderMAC); others are rejected as
	// unauthenticated.
	Tokens map[string]string
	// OnStall, when set, is called from a watchdog goroutine when a
	// transactional step (InitTransactions, a round's transaction) runs
	// stallGrace past its deadline: the Kafka client did not return when
	// asked to. The outcome of that step is unknown and the call may
	// never return, so the aggregator sets OnStall to end the process
	// with cli.ExitOutcomeUnknown; its supervisor restarts it.
	OnStall func(step string, after time.Duration)
}

// stallGrace is how long a transactional step may overrun its deadline
// before the watchdog calls OnStall: long enough for a call that honours
// its deadline to unwind (an abort after a timed-out commit), short
// enough that a hung aggregator is replaced well within a round timeout.
const stallGrace = 15 * time.Second

// watch arms the watchdog for a step bounded by ctx (or, without a
// deadline, by limit). The returned function disarms it.
func (s *Server) watch(ctx context.Context, step string, limit time.Duration) func() {
	if s.opt.OnStall == nil {
		return func() {}
	}
	start := time.Now()
	if dl, ok := ctx.Deadline(); ok {
		limit = time.Until(dl)
	}
	t := time.AfterFunc(limit+stallGrace, func() { s.opt.OnStall(step, time.Since(start)) })
	return func() { t.Stop() }
}

// Server is the aggregator's Kafka channel: a transactional producer for
// models and a read_committed group consumer for updates. Not safe for
// concurrent use; the round loop owns it.
type Server struct {
	opt      ServerOptions
	p        *kafka.Producer
	c        *kafka.Consumer
	reader   *modelReader
	count    channel.Counter
	consumed map[int32]kafka.Offset // next offset per partition, not yet committed
	// maxBytes bounds a whole model or update, recordBytes one record (the
	// topics' max.message.bytes).
	maxBytes, recordBytes int
	// updates reassembles chunked updates; queued holds the deliveries of
	// transfers it dropped, returned by the next calls of Next.
	updates *assembler
	queued  []channel.Delivery
	// rejoins counts consumer re-creations since the last committed round.
	rejoins int
	// role names what the server consumes and the ids it uses (role.go).
	role role
	// revocations counts partition revocations and rejoins (Revocations).
	revocations int
	// assigned is the number of partitions held (Assigned).
	assigned atomic.Int32
	// replayC reads streamed update chunks again (stream.go).
	replayC *kafka.Consumer
}

// maxRejoins bounds how often Next re-creates a fenced consumer between two
// committed rounds: a broker failover can fence it once, but a second
// aggregator of the same job would fence it again and again.
const maxRejoins = 3

var _ channel.Server = (*Server)(nil)

// NewServer creates the job's topics and opens the transactional producer.
// InitTransactions fences any older aggregator of the same job and aborts
// its open transaction, so at most one instance ever closes a round.
func NewServer(ctx context.Context, opt ServerOptions) (*Server, error) {
	return openServer(ctx, opt, aggregatorRole(opt.Job))
}

func openServer(ctx context.Context, opt ServerOptions, rl role) (*Server, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	if opt.TransactionTimeout <= 0 {
		opt.TransactionTimeout = 60 * time.Second
	}
	maxBytes := max(opt.MaxMessageBytes, MinMessageBytes)
	// Whatever is bigger than a chunk travels in chunks: the topics need
	// room for one chunk, not for the whole model.
	recordBytes := max(MinMessageBytes, min(maxBytes, opt.chunkBytes()+recordOverhead))
	to := opt.TopicOptions
	to.MaxMessageBytes = recordBytes
	if err := EnsureTopics(ctx, opt.Options, to); err != nil {
		return nil, err
	}
	if opt.MaxPendingBytes <= 0 {
		opt.MaxPendingBytes = 1 << 30
	}
	pcm := opt.producerConfig(kafka.ConfigMap{
		"transactional.id":       rl.txID,
		"transaction.timeout.ms": int(opt.TransactionTimeout / time.Millisecond),
		"enable.idempotence":     true,
		"acks":                   "all",
		"linger.ms":              0,
		"message.max.bytes":      recordBytes,
	})
	p, err := kafka.NewProducer(&pcm)
	if err != nil {
		return nil, fmt.Errorf("kafka transactional producer: %w", err)
	}
	startLogs(p, pcm, opt.logger())
	go drainEvents(p, opt.logger(), nil)
	s := &Server{opt: opt, p: p, consumed: map[int32]kafka.Offset{}, maxBytes: maxBytes, recordBytes: recordBytes,
		updates: newAssembler(int64(maxBytes), opt.MaxPendingBytes), role: rl}
	ictx, cancel := context.WithTimeout(ctx, 2*opt.TransactionTimeout)
	disarm := s.watch(ictx, "init transactions", 0)
	err = p.InitTransactions(ictx)
	disarm()
	cancel()
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("init transactions for job %s: %w", opt.Job, unreachable(err))
	}
	if err := s.subscribe(); err != nil {
		s.p.Close()
		return nil, err
	}
	s.reader, err = newModelReader(opt.Options, &s.count, fetchBytes(maxBytes, recordBytes), false)
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// subscribe creates the updates consumer and joins the group.
func (s *Server) subscribe() error {
	opt := s.opt
	ccm := opt.configMap(updatesConsumerConfig(s.role, fetchBytes(s.maxBytes, s.recordBytes)))
	c, err := kafka.NewConsumer(&ccm)
	if err != nil {
		return fmt.Errorf("kafka updates consumer: %w", err)
	}
	startLogs(c, ccm, opt.logger())
	if err := c.Subscribe(s.role.topic, s.rebalanced); err != nil {
		closeConsumer(c, opt.logger())
		return fmt.Errorf("subscribe %s: %w", s.role.topic, err)
	}
	s.c = c
	return nil
}

// minPrefetchBytes is the floor of the updates consumer's prefetch queue
// (see updatesConsumerConfig): 16 MiB is about 200 ms of work for an
// aggregator that validates and folds 80 MB/s (2,500 logreg updates/s), far
// more than a fetch round trip plus fetchQueueBackoff, so bounding the queue
// does not starve the round loop.
const minPrefetchBytes = 16 << 20

// fetchQueueBackoff is how long librdkafka waits, once the prefetch queue
// is full, before it looks again whether to fetch. Its default, 1 s, is
// what made a bounded queue slow (ingest fell from ~2,400 to 407 updates/s
// with an 8 MB queue): the round loop emptied the queue in a fraction of
// that second and then waited. 10 ms is a few percent of the time the loop
// takes to drain minPrefetchBytes, and costs the broker thread at most 100
// wake-ups a second while the aggregator lags.
const fetchQueueBackoff = 10 * time.Millisecond

// updatesConsumerConfig is the updates consumer's configuration, before the
// operator's properties (which win), for records of up to maxBytes.
//
// The prefetch queue (queued.max.messages.kbytes) is what keeps the
// aggregator's memory flat in the number of clients. librdkafka fetches
// ahead until its queue holds that much, 64 MiB by default; an aggregator
// that lags behind a fleet of clients holds all of it, and glibc keeps the
// freed fetch buffers, so peak RSS grew with the round's size (166 MB at
// 1,000 logreg updates a round, 278 MB at 100,000). The bound is the larger
// of minPrefetchBytes and two whole fetches (fetch.max.bytes), so that a
// fetch can always be in flight while the loop works on the one before:
// the queue is checked before each fetch, and may overshoot by one.
func updatesConsumerConfig(rl role, maxBytes int) kafka.ConfigMap {
	fetchMax := maxBytes * 2
	return kafka.ConfigMap{
		"group.id":                   rl.group,
		"enable.auto.commit":         false,
		"auto.offset.reset":          "earliest",
		"isolation.level":            "read_committed",
		"fetch.wait.max.ms":          50,
		"max.partition.fetch.bytes":  maxBytes,
		"fetch.max.bytes":            fetchMax,
		"receive.message.max.bytes":  fetchMax + 1<<20,
		"queued.max.messages.kbytes": prefetchBytes(fetchMax) >> 10,
		"fetch.queue.backoff.ms":     int(fetchQueueBackoff / time.Millisecond),
		// Static membership: a restarted aggregator takes over its
		// partitions at once instead of waiting out the dead instance's
		// session.
		"group.instance.id":     rl.instance,
		"session.timeout.ms":    10000,
		"heartbeat.interval.ms": 1000,
	}
}

// prefetchBytes bounds the updates consumer's prefetch queue for fetches of
// up to fetchMax bytes: see updatesConsumerConfig.
func prefetchBytes(fetchMax int) int { return max(minPrefetchBytes, 2*fetchMax) }

// rejoin replaces a consumer that the group coordinator fenced. When the
// broker leading the group dies, its successor can fence the static member
// (FENCED_INSTANCE_ID) although no other aggregator runs. Nothing is lost:
// the open round's records are uncommitted, so the new consumer reads them
// again from the last committed round, and the round loop rejects the ones
// it already holds as duplicates.
func (s *Server) rejoin(cause kafka.Error) error {
	if s.rejoins >= maxRejoins {
		return fmt.Errorf("consume %s: fenced %d times since the last round (another aggregator of job %s?): %w", UpdatesTopic(s.opt.Job), s.rejoins, s.opt.Job, cause)
	}
	s.rejoins++
	s.revocations++
	s.opt.logger().Warn("updates consumer fenced; rejoining the group", "job", s.opt.Job, "attempt", s.rejoins, "err", cause)
	closeConsumer(s.c, s.opt.logger())
	s.consumed = map[int32]kafka.Offset{}
	s.updates.forget(nil)
	return s.subscribe()
}

// rebalanced forgets uncommitted positions of partitions taken away from us:
// their records will be re-delivered to whoever owns them next.
func (s *Server) rebalanced(c *kafka.Consumer, ev kafka.Event) error {
	if as, ok := ev.(kafka.AssignedPartitions); ok {
		s.assigned.Store(int32(len(as.Partitions)))
	}
	if rev, ok := ev.(kafka.RevokedPartitions); ok {
		s.revocations++
		s.assigned.Add(-int32(len(rev.Partitions)))
		for _, tp := range rev.Partitions {
			delete(s.consumed, tp.Partition)
			s.updates.forget(&tp.Partition)
		}
	}
	return nil
}

// Latest implements channel.Server: it walks back from the newest record
// to the newest one that verifies and that valid accepts.
func (s *Server) Latest(ctx context.Context, valid func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error) {
	s.reader.valid = valid
	defer func() { s.reader.valid = nil }()
	m, err := s.reader.latest(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore from %s: %w", ModelTopic(s.opt.Job), err)
	}
	// The aggregator reads the model topic only to restore. Left
	// assigned, the reader would prefetch every model the aggregator
	// then publishes (each with its round's contributor list, ~0.7 MB at
	// 100,000 clients) into a queue nobody polls, up to librdkafka's
	// 64 MiB.
	if err := s.reader.c.Unassign(); err != nil {
		return nil, fmt.Errorf("release %s after the restore: %w", ModelTopic(s.opt.Job), err)
	}
	return m, nil
}

// Next implements channel.Server.
func (s *Server) Next(ctx context.Context) (channel.Delivery, error) {
	for {
		if len(s.queued) > 0 {
			d := s.queued[0]
			s.queued = s.queued[1:]
			return d, nil
		}
		if err := ctx.Err(); err != nil {
			return channel.Delivery{}, err
		}
		switch ev := s.c.Poll(int(pollInterval / time.Millisecond)).(type) {
		case *kafka.Message:
			tp := ev.TopicPartition
			if tp.Error != nil {
				return channel.Delivery{}, fmt.Errorf("consume %s: %w", UpdatesTopic(s.opt.Job), tp.Error)
			}
			s.consumed[tp.Partition] = tp.Offset + 1
			size := len(ev.Value) + len(ev.Key)
			s.count.Received(size)
			switch {
			case isChunk(ev):
				s.dropped(s.updates.add(ev, string(ev.Key)))
				s.updates.notePeak()
				continue
			case isManifest(ev):
				if d, ok := s.streamed(ctx, ev); ok {
					s.queued = append(s.queued, d)
					continue
				}
				whole, failed := s.updates.complete(ev, string(ev.Key))
				s.dropped(failed)
				if whole != nil {
					s.queued = append(s.queued, s.delivery(ev, whole, len(whole)+len(ev.Key)))
				}
				continue
			}
			return s.delivery(ev, ev.Value, size), nil
		case kafka.Error:
			if ev.IsFatal() && ev.Code() == kafka.ErrFencedInstanceID {
				if err := s.rejoin(ev); err != nil {
					return channel.Delivery{}, err
				}
				continue
			}
			if ev.IsFatal() {
				return channel.Delivery{}, fmt.Errorf("consume %s: %w", UpdatesTopic(s.opt.Job), ev)
			}
			s.opt.logger().Debug("kafka consumer error", "err", ev)
		}
	}
}

// dropped queues a rejected delivery for every dropped update transfer, so
// that the round loop counts it under its reason.
func (s *Server) dropped(failed []*transferError) {
	for _, f := range failed {
		s.opt.logger().Warn("chunked update dropped", "topic", UpdatesTopic(s.opt.Job), "key", f.Key, "reason", f.Reason, "err", f.Detail)
		s.queued = append(s.queued, channel.Delivery{Key: f.Key, Rejection: f.rejection()})
	}
}

// delivery decodes an update, value (msg's value or, for a manifest, the
// reassembled transfer), and authenticates it by msg's MAC.
func (s *Server) delivery(msg *kafka.Message, value []byte, size int) channel.Delivery {
	tp := msg.TopicPartition
	d := channel.Delivery{Key: string(msg.Key), Size: size}
	if len(value) == 0 {
		// proto would decode it as an empty update of no job.
		d.Err = fmt.Errorf("empty record at %s[%d]@%d", *tp.Topic, tp.Partition, tp.Offset)
		return d
	}
	u := &fdxv1.Update{}
	if err := proto.Unmarshal(value, u); err != nil {
		d.Err = fmt.Errorf("decode update at %s[%d]@%d: %w", *tp.Topic, tp.Partition, tp.Offset, err)
		return d
	}
	d.Update = u
	d.Rejection = s.authenticate(msg, u)
	return d
}

// authenticate checks msg's MAC (over the record, or a transfer's
// manifest) with u's client's token, when the job has tokens.
func (s *Server) authenticate(msg *kafka.Message, u *fdxv1.Update) *rules.Rejection {
	if len(s.opt.Tokens) == 0 {
		return nil
	}
	tok, ok := s.opt.Tokens[u.GetClientId()]
	if !ok {
		return rules.Reject(rules.Unauthenticated, "client %q has no token", u.GetClientId())
	}
	if err := trust.CheckMAC(tok, msg.Value, header(msg, trust.HeaderMAC)); err != nil {
		return rules.Reject(rules.Unauthenticated, "client %q: %v", u.GetClientId(), err)
	}
	return nil
}

// Publish implements channel.Server: one transaction produces the model (in
// chunks if it is larger than a chunk) and commits the offsets of every
// update consumed since the last publish.
func (s *Server) Publish(ctx context.Context, m *fdxv1.GlobalModel) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode model round %d: %w", m.GetRound(), err)
	}
	if len(b) > s.maxBytes {
		return fmt.Errorf("model round %d is %d bytes, over the job's limit %d", m.GetRound(), len(b), s.maxBytes)
	}
	// Retries ride out a broker restart, but not for longer than two
	// transaction timeouts: past that the round is better retried by a
	// fresh process than by this producer.
	ctx, cancel := context.WithTimeout(ctx, 2*s.opt.TransactionTimeout)
	defer cancel()
	defer s.watch(ctx, fmt.Sprintf("round %d transaction", m.GetRound()), 0)()
	for attempt := 0; ; attempt++ {
		records, err := s.modelRecords(m.GetRound(), b)
		if err != nil {
			return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
		}
		err = s.transact(ctx, m.GetRound(), records)
		if err == nil {
			s.consumed = map[int32]kafka.Offset{}
			s.rejoins = 0
			for _, r := range records {
				s.count.Sent(len(r.Value) + len(r.Key))
			}
			return nil
		}
		if errors.Is(err, channel.ErrOutcomeUnknown) {
			return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
		}
		// A broker restart surfaces as retriable or abortable errors:
		// keep trying until ctx gives up, so an outage only delays the job.
		var ke kafka.Error
		if ctx.Err() == nil && errors.As(err, &ke) && !ke.IsFatal() && (ke.IsRetriable() || ke.TxnRequiresAbort() || ke.IsTimeout()) {
			s.opt.logger().Warn("round transaction failed, retrying", "round", m.GetRound(), "attempt", attempt+1, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
			}
			continue
		}
		return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
	}
}

// modelRecords returns the records of one model: the record itself, or its
// chunks and manifest. The signature covers the record or the manifest.
func (s *Server) modelRecords(round int64, value []byte) ([]*kafka.Message, error) {
	topic := ModelTopic(s.opt.Job)
	key := []byte(strconv.FormatInt(round, 10))
	if len(value) > s.opt.chunkBytes() {
		chunks, manifest, err := transferRecords(topic, 0, key, value, s.opt.chunkBytes())
		if err != nil {
			return nil, err
		}
		// The manifest lists where every chunk landed, on one partition
		// as over several, so that a new client reads them from there
		// instead of reading the manifest first and then going back, and
		// it is signed once it says so (produceModel).
		spread(chunks, max(1, s.opt.ModelPartitions))
		return append(chunks, manifest), nil
	}
	last := &kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 0}, Key: key, Value: value}
	s.sign(last)
	return []*kafka.Message{last}, nil
}

// sign adds the model signature to a model record or manifest.
func (s *Server) sign(msg *kafka.Message) {
	if s.opt.Signer != nil {
		msg.Headers = append(msg.Headers,
			kafka.Header{Key: trust.HeaderSignature, Value: s.opt.Signer.Sign(msg.Value)},
			kafka.Header{Key: trust.HeaderKeyID, Value: []byte(s.opt.Signer.KeyID())})
	}
}

func (s *Server) transact(ctx context.Context, round int64, records []*kafka.Message) error {
	if err := s.p.BeginTransaction(); err != nil {
		return err
	}
	abort := func(err error) error {
		var ke kafka.Error
		if errors.As(err, &ke) && ke.IsFatal() {
			return err
		}
		if aerr := s.p.AbortTransaction(ctx); aerr != nil {
			// Nothing was committed, but a producer that cannot
			// abort cannot begin the next transaction either.
			return fmt.Errorf("%w: %w (abort: %v)", channel.ErrOutcomeUnknown, err, aerr)
		}
		return err
	}
	var after func(int)
	if s.opt.AfterChunk != nil && len(records) > 1 {
		after = func(i int) {
			if i < len(records)-1 {
				s.opt.AfterChunk(round, i)
			}
		}
	}
	if err := s.produceModel(ctx, records, after); err != nil {
		return abort(err)
	}
	if len(s.consumed) > 0 {
		offsets := make([]kafka.TopicPartition, 0, len(s.consumed))
		updates := s.role.topic
		for part, off := range s.consumed {
			// An update whose chunks are still arriving is read whole
			// again after a restart.
			if first, ok := s.updates.firstPending(part); ok && first < off {
				off = first
			}
			offsets = append(offsets, kafka.TopicPartition{Topic: &updates, Partition: part, Offset: off})
		}
		meta, err := s.c.GetConsumerGroupMetadata()
		if err != nil {
			return abort(err)
		}
		if err := s.p.SendOffsetsToTransaction(ctx, offsets, meta); err != nil {
			return abort(err)
		}
	}
	if s.opt.BeforeCommit != nil {
		s.opt.BeforeCommit(round)
	}
	for {
		err := s.p.CommitTransaction(ctx)
		if err == nil {
			return nil
		}
		var ke kafka.Error
		if errors.As(err, &ke) && ke.IsRetriable() && ctx.Err() == nil {
			continue
		}
		if errors.As(err, &ke) && ke.TxnRequiresAbort() && ctx.Err() == nil {
			return abort(err)
		}
		// A commit that timed out, was cancelled or was fenced may have
		// committed or not: never guess.
		return fmt.Errorf("commit round %d: %w: %w", round, channel.ErrOutcomeUnknown, err)
	}
}

// Stats implements channel.Server.
func (s *Server) Stats() channel.Stats { return s.count.Stats() }

// Close leaves the consumer group and closes the producer. An open
// transaction is aborted by the broker when the producer goes away or is
// fenced by the next instance.
func (s *Server) Close() error {
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.reader.close())
	}
	if s.c != nil {
		errs = append(errs, closeConsumer(s.c, s.opt.logger()))
	}
	if s.replayC != nil {
		errs = append(errs, closeConsumer(s.replayC, s.opt.logger()))
	}
	s.p.Close()
	return errors.Join(errs...)
}

// fetchBytes sizes a consumer's fetches: room for a whole record of up to
// maxBytes, but no more than 64 MiB at a time once records are chunks.
func fetchBytes(maxBytes, recordBytes int) int {
	return max(recordBytes, min(maxBytes, 64<<20))
}
