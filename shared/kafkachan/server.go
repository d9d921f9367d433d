package kafkachan

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/logging"
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
	// transactional step (the producer's initialization, a round's
	// transaction) runs stallGrace past its deadline: the Kafka client
	// did not return when asked to. The outcome of that step is unknown
	// and the call may never return, so the aggregator sets OnStall to
	// end the process with cli.ExitOutcomeUnknown; its supervisor
	// restarts it.
	OnStall func(step string, after time.Duration)
}

// stallGrace is how long a transactional step may overrun its deadline
// before the watchdog calls OnStall: long enough for a call that honours
// its deadline to unwind, short enough that a hung aggregator is replaced
// well within a round timeout.
const stallGrace = 15 * time.Second

// watch arms the watchdog for a step bounded by ctx's deadline plus extra
// (the time an abort may take after it). The returned function disarms it.
func (s *Server) watch(ctx context.Context, step string, extra time.Duration) func() {
	if s.opt.OnStall == nil {
		return func() {}
	}
	start := time.Now()
	limit := extra
	if dl, ok := ctx.Deadline(); ok {
		limit += time.Until(dl)
	}
	t := time.AfterFunc(limit+stallGrace, func() { s.opt.OnStall(step, time.Since(start)) })
	return func() { t.Stop() }
}

// Server is the aggregator's Kafka channel: a transactional producer for
// models and a read_committed group consumer for updates. Not safe for
// concurrent use; the round loop owns it.
type Server struct {
	opt ServerOptions
	// p is the transactional producer, c the updates consumer (a member
	// of the role's group).
	p, c     *kgo.Client
	count    channel.Counter
	consumed map[int32]int64 // next offset per partition, not yet committed
	// pending holds polled update records not yet handled.
	pending []*kgo.Record
	// maxBytes bounds a whole model or update, recordBytes one record (the
	// topics' max.message.bytes).
	maxBytes, recordBytes int
	// updates reassembles chunked updates; queued holds the deliveries of
	// transfers it dropped, returned by the next calls of Next.
	updates *assembler
	queued  []channel.Delivery
	// rejoins counts the times the group fenced the consumer since the
	// last committed round.
	rejoins int
	// role names what the server consumes and the ids it uses (role.go).
	role role
	// group receives the consumer's rebalance callbacks; revocations
	// counts the revocations drained from it (Revocations).
	group       *groupEvents
	revocations int
	// newConsumer opens an updates consumer that reports its rebalances
	// to events (rejoin).
	newConsumer func(events *groupEvents) (*kgo.Client, error)
	// replayC reads streamed update chunks again (stream.go).
	replayC *kgo.Client
	// broken, once set, is why the server may not go on: a transaction
	// whose outcome it does not know (txn.go).
	broken error
	// restored is what Latest has read of the model topic, so that the
	// next call reads only what came after.
	restoreMu sync.Mutex
	restored  restorePoint
	// warn rate-limits the lines about refused records: anyone who can
	// write the updates topic can cause them, thousands a second.
	warn *logging.Limited
}

// restorePoint is the highest verified model read up to an offset of the
// model topic.
type restorePoint struct {
	m    *fdxv1.GlobalModel
	at   int64
	sum  [sha256.Size]byte
	next int64
}

// maxRejoins bounds how often the consumer may be fenced between two
// committed rounds: a broker failover can fence it once, but a second
// aggregator of the same job would fence it again and again.
const maxRejoins = 3

var _ channel.Server = (*Server)(nil)

// NewServer creates the job's topics and opens the transactional producer.
// Initializing the producer fences any older aggregator of the same job and
// aborts its open transaction, so at most one instance ever closes a round.
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
	props, err := parseProperties(opt.Properties)
	if err != nil {
		return nil, err
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
	popts, err := opt.clientOpts(txnProducerOpts(rl, opt.TransactionTimeout, recordBytes)...)
	if err != nil {
		return nil, err
	}
	p, err := kgo.NewClient(popts...)
	if err != nil {
		return nil, fmt.Errorf("kafka transactional producer: %w", err)
	}
	s := &Server{opt: opt, p: p, consumed: map[int32]int64{}, maxBytes: maxBytes, recordBytes: recordBytes,
		updates: newAssembler(int64(maxBytes), opt.MaxPendingBytes), role: rl, group: &groupEvents{},
		warn: logging.NewLimited(opt.logger(), 0)}
	// The producer id's initialization fences the previous instance.
	initCtx, cancel := context.WithTimeout(ctx, 2*opt.TransactionTimeout)
	disarm := s.watch(initCtx, "init transactions", 0)
	err = s.initProducerID(initCtx)
	disarm()
	cancel()
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("init transactions for job %s: %w", opt.Job, unreachable(err))
	}
	s.newConsumer = func(events *groupEvents) (*kgo.Client, error) {
		copts, err := opt.clientOpts(updatesConsumerOpts(rl, fetchBytes(maxBytes, recordBytes), props, events)...)
		if err != nil {
			return nil, err
		}
		c, err := kgo.NewClient(copts...)
		if err != nil {
			return nil, fmt.Errorf("kafka updates consumer: %w", err)
		}
		return c, nil
	}
	if s.c, err = s.newConsumer(s.group); err != nil {
		p.Close()
		return nil, err
	}
	return s, nil
}

// txnProducerOpts configure a role's transactional producer for records of
// up to recordBytes.
//
// Its transactions are those of Kafka before KIP-890 part 2 (EndTxn and
// TxnOffsetCommit at most v4), which every broker of Kafka 2.5 on serves:
// the round's offsets join the transaction with AddOffsetsToTxn and a
// TxnOffsetCommit that carries the consumer's group generation (KIP-447,
// txn.go), requests kgo leaves to its own group sessions, so we send them.
func txnProducerOpts(rl role, timeout time.Duration, recordBytes int) []kgo.Opt {
	versions := kversion.Stable()
	versions.SetMaxKeyVersion(int16(kmsg.EndTxn), 4)
	versions.SetMaxKeyVersion(int16(kmsg.TxnOffsetCommit), 4)
	return []kgo.Opt{
		kgo.TransactionalID(rl.txID),
		kgo.TransactionTimeout(timeout),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(int32(recordBytes)),
		kgo.MaxVersions(versions),
	}
}

// updatesConsumerOpts configure the updates consumer for records of up to
// maxBytes, reporting rebalances to events.
//
// Its memory is bounded by the fetch size: kgo buffers one fetch per broker
// and fetches again only once the round loop polled it, so the consumer
// holds at most about two fetches (2 × fetch.max.bytes) however far the
// aggregator lags behind a fleet of clients.
//
// Rebalances wait while the round loop holds polled records
// (BlockRebalanceOnPoll): Next allows them only when it has handed out
// every record it polled, so a round never commits the offset of a
// partition that another member owns by then.
func updatesConsumerOpts(rl role, maxBytes int, props *properties, events *groupEvents) []kgo.Opt {
	fetchMax := min(2*maxBytes, 1<<30)
	session, heartbeat := 10*time.Second, time.Second
	if props.sessionTimeout > 0 {
		session = props.sessionTimeout
	}
	if props.heartbeat > 0 {
		heartbeat = props.heartbeat
	}
	return []kgo.Opt{
		kgo.ConsumerGroup(rl.group),
		kgo.ConsumeTopics(rl.topic),
		// Static membership: a restarted aggregator takes over its
		// partitions at once instead of waiting out the dead instance's
		// session.
		kgo.InstanceID(rl.instance),
		kgo.SessionTimeout(session),
		kgo.HeartbeatInterval(heartbeat),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(50 * time.Millisecond),
		kgo.FetchMaxPartitionBytes(int32(maxBytes)),
		kgo.FetchMaxBytes(int32(fetchMax)),
		kgo.BrokerMaxReadBytes(int32(fetchMax + 1<<20)),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(events.assigned),
		kgo.OnPartitionsRevoked(events.revoked),
		kgo.OnPartitionsLost(events.revoked),
	}
}

// groupEvents collects the consumer's rebalance callbacks, which kgo runs
// on its own goroutine, for the round loop to apply (Server.drain).
type groupEvents struct {
	mu      sync.Mutex
	revokes []int32 // partitions revoked or lost, not yet drained
	// held is the number of partitions assigned now (Assigned).
	held atomic.Int32
}

func (g *groupEvents) assigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	for _, ps := range m {
		g.held.Add(int32(len(ps)))
	}
}

func (g *groupEvents) revoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ps := range m {
		g.held.Add(-int32(len(ps)))
		g.revokes = append(g.revokes, ps...)
	}
}

// take returns the revoked partitions not yet drained.
func (g *groupEvents) take() []int32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := g.revokes
	g.revokes = nil
	return out
}

// drain applies the revocations reported since the last drain: the
// uncommitted positions and buffered records of partitions taken away from
// us are forgotten, as their records will be delivered to whoever owns
// them next (possibly us again, from the committed offset).
func (s *Server) drain() {
	revoked := s.group.take()
	if len(revoked) == 0 {
		return
	}
	s.revocations++
	for _, p := range revoked {
		delete(s.consumed, p)
		s.updates.forget(&p)
	}
	s.pending = slices.DeleteFunc(s.pending, func(r *kgo.Record) bool { return slices.Contains(revoked, r.Partition) })
}

// Latest implements channel.Server: the highest verified round of the
// model topic that valid accepts. It reads the whole log the first time
// (a window at the end could hold only replays of genuine old models, see
// modelReader.latest) and after that only what was appended since, so a
// worker may call it as often as it likes. valid must be the same on every
// call.
//
// The aggregator reads the model topic only to restore, with a reader of
// its own that it closes after: left open, it would keep fetching every
// model the aggregator then publishes.
func (s *Server) Latest(ctx context.Context, valid func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error) {
	s.restoreMu.Lock()
	defer s.restoreMu.Unlock()
	r, err := openModelReader(s.opt.Options, &s.count, fetchBytes(s.maxBytes, s.recordBytes), serverFetchWait)
	if err != nil {
		return nil, err
	}
	defer r.close()
	r.valid = valid
	r.full = true
	rp := s.restored
	r.newest, r.newestAt, r.newestSum, r.fullFrom = rp.m, rp.at, rp.sum, rp.next
	high, err := r.latestFull(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore from %s: %w", ModelTopic(s.opt.Job), err)
	}
	s.restored = restorePoint{m: r.newest, at: r.newestAt, sum: r.newestSum, next: high}
	return r.newest, nil
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
		rec, err := s.nextRecord(ctx)
		if err != nil {
			return channel.Delivery{}, fmt.Errorf("consume %s: %w", s.role.topic, err)
		}
		s.consumed[rec.Partition] = rec.Offset + 1
		size := len(rec.Value) + len(rec.Key)
		s.count.Received(size)
		switch {
		case isChunk(rec):
			if !s.chunkAuthentic(ctx, rec) {
				continue
			}
			s.dropped(s.updates.add(rec, string(rec.Key)))
			s.updates.notePeak()
			continue
		case isManifest(rec):
			if rej := s.manifestAuthentic(ctx, rec); rej != nil {
				s.queued = append(s.queued, channel.Delivery{Key: string(rec.Key), Size: size, Rejection: rej})
				continue
			}
			if d, ok := s.streamed(ctx, rec); ok {
				s.queued = append(s.queued, d)
				continue
			}
			whole, failed := s.updates.complete(rec, string(rec.Key))
			s.dropped(failed)
			if whole != nil {
				s.queued = append(s.queued, s.delivery(rec, whole, len(whole)+len(rec.Key)))
			}
			continue
		}
		return s.delivery(rec, rec.Value, size), nil
	}
}

// nextRecord returns the next polled record of the role's topic, polling
// when none is left. Rebalances run only here, between polls.
func (s *Server) nextRecord(ctx context.Context) (*kgo.Record, error) {
	for len(s.pending) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if s.c == nil {
			return nil, fmt.Errorf("no updates consumer: its rejoin failed")
		}
		s.c.AllowRebalance()
		fs := s.c.PollFetches(ctx)
		s.drain()
		var failed, fenced error
		fs.EachError(func(topic string, p int32, err error) {
			var gs *kgo.ErrGroupSession
			switch {
			case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, kgo.ErrClientClosed):
				failed = err
			case errors.As(err, &gs) && errors.Is(err, kerr.FencedInstanceID):
				fenced = err
			case denied(err) != nil:
				failed = denied(err)
			case errors.As(err, &gs):
				s.opt.logger().Warn("updates consumer left the group; rejoining", "job", s.opt.Job, "err", err)
			default:
				s.opt.logger().Debug("kafka fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		if fenced != nil && failed == nil {
			// When the broker leading the group dies, its successor can
			// fence the static member although no other aggregator
			// runs. Nothing is lost: the open round's records are
			// uncommitted, so they come again from the last committed
			// round, and the round loop rejects those it holds as
			// duplicates. The records of this poll come again too.
			s.rejoins++
			s.opt.logger().Warn("updates consumer fenced; rejoining the group", "job", s.opt.Job, "attempt", s.rejoins, "err", fenced)
			if s.rejoins > maxRejoins {
				return nil, fmt.Errorf("fenced %d times since the last round (another aggregator of job %s?): %w", s.rejoins, s.opt.Job, fenced)
			}
			if err := s.rejoin(); err != nil {
				return nil, err
			}
			continue
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Topic == s.role.topic {
				s.pending = append(s.pending, r)
			}
		})
		if failed != nil && len(s.pending) == 0 {
			return nil, failed
		}
	}
	r := s.pending[0]
	s.pending[0] = nil
	s.pending = s.pending[1:]
	return r, nil
}

// rejoin replaces the fenced updates consumer with a new member. kgo
// would rejoin with the member id the group no longer knows for the
// static instance and be fenced again and again; a new client joins
// without one and takes the static membership over. What the old member
// read and did not commit is forgotten: its partitions are read again
// from the committed offsets.
func (s *Server) rejoin() error {
	// The old client's last callbacks (its lost partitions) go to its
	// own events, which are dropped with it.
	s.c.CloseAllowingRebalance()
	s.group = &groupEvents{}
	s.revocations++
	s.consumed = map[int32]int64{}
	s.pending = nil
	s.queued = nil
	s.updates.forget(nil)
	c, err := s.newConsumer(s.group)
	if err != nil {
		s.c = nil
		return fmt.Errorf("rejoin the group %s: %w", s.role.group, err)
	}
	s.c = c
	return nil
}

// dropped queues a rejected delivery for every dropped update transfer, so
// that the round loop counts it under its reason.
func (s *Server) dropped(failed []*transferError) {
	for _, f := range failed {
		s.warn.Warn(context.Background(), "dropped_"+string(f.Reason), "chunked update dropped", "topic", UpdatesTopic(s.opt.Job), "key", f.Key, "err", f.Detail)
		s.queued = append(s.queued, channel.Delivery{Key: f.Key, Rejection: f.rejection()})
	}
}

// delivery decodes an update, value (msg's value or, for a manifest, the
// reassembled transfer), and authenticates it by msg's MAC.
func (s *Server) delivery(msg *kgo.Record, value []byte, size int) channel.Delivery {
	tp := msg
	d := channel.Delivery{Key: string(msg.Key), Size: size}
	if len(value) == 0 {
		// proto would decode it as an empty update of no job.
		d.Err = fmt.Errorf("empty record at %s[%d]@%d", tp.Topic, tp.Partition, tp.Offset)
		return d
	}
	u := &fdxv1.Update{}
	if err := proto.Unmarshal(value, u); err != nil {
		d.Err = fmt.Errorf("decode update at %s[%d]@%d: %w", tp.Topic, tp.Partition, tp.Offset, err)
		return d
	}
	d.Update = u
	d.Rejection = s.authenticate(msg, u)
	return d
}

// chunkAuthentic reports whether an update chunk may enter reassembly:
// with tokens, only a chunk whose MAC (trust.ChunkMAC) verifies with the
// token of the client its key names. Another principal's chunks keyed by a
// victim's id would otherwise replace the victim's transfer in progress
// and stall its update. A refused chunk is counted and dropped, with no
// delivery: it is no one's update.
func (s *Server) chunkAuthentic(ctx context.Context, msg *kgo.Record) bool {
	if len(s.opt.Tokens) == 0 {
		return true
	}
	key := string(msg.Key)
	err := errors.New("no token for its key")
	if tok, ok := s.opt.Tokens[key]; ok {
		id, index, _, _, perr := parseChunk(msg)
		switch {
		case perr != nil:
			err = perr
		case !hmac.Equal(header(msg, trust.HeaderMAC), trust.ChunkMAC(tok, id, index, msg.Value)):
			err = fmt.Errorf("transfer %s chunk %d: MAC does not verify", id, index)
		default:
			return true
		}
	}
	s.count.Rejected()
	s.warn.Warn(ctx, "chunk_unauthenticated", "update chunk refused", "topic", msg.Topic, "partition", msg.Partition, "offset", msg.Offset, "key", key, "err", err)
	return false
}

// manifestAuthentic checks, with tokens, the MAC of an update manifest
// with the token of the client its key names, before the manifest may
// close (or supersede) that client's transfer.
func (s *Server) manifestAuthentic(ctx context.Context, msg *kgo.Record) *rules.Rejection {
	if len(s.opt.Tokens) == 0 {
		return nil
	}
	key := string(msg.Key)
	tok, ok := s.opt.Tokens[key]
	var rej *rules.Rejection
	if !ok {
		rej = rules.Reject(rules.Unauthenticated, "manifest keyed %q: no token", key)
	} else if err := trust.CheckMAC(tok, msg.Value, header(msg, trust.HeaderMAC)); err != nil {
		rej = rules.Reject(rules.Unauthenticated, "manifest keyed %q: %v", key, err)
	} else {
		return nil
	}
	s.warn.Warn(ctx, "manifest_unauthenticated", "update manifest refused", "topic", msg.Topic, "offset", msg.Offset, "key", key, "err", rej.Detail)
	return rej
}

// authenticate checks msg's MAC (over the record, or a transfer's
// manifest) with u's client's token, when the job has tokens.
func (s *Server) authenticate(msg *kgo.Record, u *fdxv1.Update) *rules.Rejection {
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
// update consumed since the last publish (txn.go).
func (s *Server) Publish(ctx context.Context, m *fdxv1.GlobalModel) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode model round %d: %w", m.GetRound(), err)
	}
	if len(b) > s.maxBytes {
		return fmt.Errorf("model round %d is %d bytes, over the job's limit %d", m.GetRound(), len(b), s.maxBytes)
	}
	claims := trust.ModelClaims{Job: s.opt.Job, Topic: ModelTopic(s.opt.Job), Round: m.GetRound(), Final: m.GetFinal()}
	err = s.commitRound(ctx, m.GetRound(), func() ([]*kgo.Record, error) { return s.modelRecords(claims, b) })
	if err != nil {
		return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
	}
	return nil
}

// modelRecords returns the records of one model: the record itself, or its
// chunks and manifest. The record or the manifest carries the claims'
// round and final flag, which its signature binds (sign).
func (s *Server) modelRecords(claims trust.ModelClaims, value []byte) ([]*kgo.Record, error) {
	topic := claims.Topic
	key := []byte(strconv.FormatInt(claims.Round, 10))
	round, final := claims.Headers()
	claimed := []kgo.RecordHeader{{Key: trust.HeaderRound, Value: round}, {Key: trust.HeaderFinal, Value: final}}
	if len(value) > s.opt.chunkBytes() {
		chunks, manifest, err := transferRecords(topic, 0, key, value, s.opt.chunkBytes())
		if err != nil {
			return nil, err
		}
		manifest.Headers = append(manifest.Headers, claimed...)
		// The manifest lists where every chunk landed, on one partition
		// as over several, so that a new client reads them from there
		// instead of reading the manifest first and then going back, and
		// it is signed once it says so (produceModel).
		spread(chunks, max(1, s.opt.ModelPartitions))
		return append(chunks, manifest), nil
	}
	last := &kgo.Record{Topic: topic, Partition: 0, Key: key, Value: value, Headers: claimed}
	s.sign(last)
	return []*kgo.Record{last}, nil
}

// sign adds the model signature to a model record or manifest: it binds
// the job, the topic, the round and final flag of the record's headers
// (modelRecords) and the digest of its value, so that a genuine record
// replayed under another round, job or topic does not verify.
func (s *Server) sign(msg *kgo.Record) {
	if s.opt.Signer == nil {
		return
	}
	claims, err := trust.ParseClaims(s.opt.Job, msg.Topic, header(msg, trust.HeaderRound), header(msg, trust.HeaderFinal))
	if err != nil {
		// modelRecords always sets them: a bug, and an unsigned record
		// that every verifying reader refuses.
		s.opt.logger().Error("model record without its claims; left unsigned", "topic", msg.Topic, "err", err)
		return
	}
	msg.Headers = append(msg.Headers,
		kgo.RecordHeader{Key: trust.HeaderSignature, Value: s.opt.Signer.SignModel(claims, msg.Value)},
		kgo.RecordHeader{Key: trust.HeaderKeyID, Value: []byte(s.opt.Signer.KeyID())})
}

// Stats implements channel.Server.
func (s *Server) Stats() channel.Stats { return s.count.Stats() }

// Close closes the consumer (a static member: its partitions wait for its
// successor, up to the session timeout) and the producer. An open
// transaction is aborted by the broker when it times out or by the next
// instance, which fences this one.
func (s *Server) Close() error {
	if s.replayC != nil {
		s.replayC.Close()
	}
	if s.c != nil {
		s.c.CloseAllowingRebalance()
	}
	s.p.Close()
	return nil
}

// fetchBytes sizes a consumer's fetches: room for a whole record of up to
// maxBytes, but no more than 64 MiB at a time once records are chunks.
func fetchBytes(maxBytes, recordBytes int) int {
	return max(recordBytes, min(maxBytes, 64<<20))
}

// initProducerID initializes the transactional producer id, retrying
// until ctx ends. The transaction coordinator may be moving when this
// runs: an aggregator restarted because its broker died finds the
// coordinator's new leader only once the cluster has elected one, seconds
// later. A refusal (authorization, a transaction timeout the broker does
// not allow) is final.
func (s *Server) initProducerID(ctx context.Context) error {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		_, _, err := s.p.ProducerID(ctx)
		switch {
		case err == nil:
			return nil
		case denied(err) != nil:
			return denied(err)
		case errors.Is(err, kerr.InvalidTransactionTimeout), ctx.Err() != nil:
			return err
		}
		s.opt.logger().Warn("initializing the transactional producer failed; retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
	}
}
