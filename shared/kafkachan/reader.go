package kafkachan

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// pollInterval is how long the model reader waits between two looks for a
// topic that does not exist yet.
const pollInterval = 100 * time.Millisecond

// modelReader reads the model topic's partition 0 with read_committed, so a
// model whose transaction aborted (an aggregator crash) is never seen.
//
// It keeps control records (transaction markers): they are never models,
// but they tell the reader how far it has read. read_committed hides
// aborted records and markers take offsets, so without them a reader could
// not tell "nothing more up to the end" from "nothing yet".
type modelReader struct {
	cl *kgo.Client
	// own: close closes cl (the client's reader shares its producer's).
	own       bool
	adm       *kadm.Client
	consuming bool
	// pending holds polled records not yet handled.
	pending  []*kgo.Record
	topic    string
	job      string
	verifier *trust.Verifier
	// valid, when set, is a further check on every model (the
	// aggregator's restore: shapes).
	valid func(*fdxv1.GlobalModel) error
	count *channel.Counter
	log   *slog.Logger
	// warn rate-limits the lines about ignored records: anyone who can
	// write the topic can cause them.
	warn *logging.Limited
	// newest is the highest verified round read so far, newestAt its
	// offset and newestSum the SHA-256 of its bytes. A reader never goes
	// back: a verified model of a lower round is a replay of a genuine
	// old record, ignored.
	newest    *fdxv1.GlobalModel
	newestAt  int64
	newestSum [sha256.Size]byte
	// conflicts holds the offsets of records counted as conflicts.
	conflicts map[int64]bool
	// full makes latest read the whole log, from fullFrom on, instead of
	// a window at its end (see latest).
	full     bool
	fullFrom int64
	// pos is the offset of the next record the reader will handle.
	pos int64
	// txnModel says that a window read a verified model produced in a
	// transaction, as the aggregator produces every model.
	txnModel bool
	started  bool
	// absent is set when the broker last said the topic does not exist.
	absent bool
	// chunks reassembles chunked models; need is where the chunks of the
	// last incomplete one would start (-1: none), so that latest can go
	// back for them.
	chunks *assembler
	need   int64
	// from is where the current readToEnd began: a chunked model whose
	// chunks lie before it is not a bad record, only out of the window.
	from int64
	// spreadOpts configure spreadC, the client that fetches a listed
	// model's chunks, made on first use.
	spreadOpts []kgo.Opt
	spreadC    *kgo.Client
	// held keeps the spread chunks of transfer heldID that partition 0's
	// reading passed, by offset, for their manifest: a waiting reader gets
	// them anyway, and need not fetch them twice. Cleared with every
	// manifest and when another transfer's chunk comes, so it holds at
	// most one model's share.
	held   map[int64]*kgo.Record
	heldID string
}

// Fetch waits of model readers. A waiting reader keeps one fetch parked on
// the broker, which answers it as soon as a new model commits, so the wait
// bounds how often an idle reader asks again, not how late it learns of a
// model. A client waits out most of a round, and 1,000 of them asking every
// 50 ms were 20,000 empty fetches a second: 500 ms halved the round time
// at 1,000 clients in one process. The aggregator's reader, which reads
// only to restore, keeps the short wait.
const (
	clientFetchWait = 500 * time.Millisecond
	serverFetchWait = 50 * time.Millisecond
)

// readerOpts are the kgo options of a model reader whose records are at
// most maxBytes, whose fetches the broker parks for wait.
func readerOpts(maxBytes int, wait time.Duration) []kgo.Opt {
	fetchMax := min(2*maxBytes, 1<<30)
	return []kgo.Opt{
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(wait),
		kgo.FetchMaxPartitionBytes(int32(maxBytes)),
		kgo.FetchMaxBytes(int32(fetchMax)),
		kgo.BrokerMaxReadBytes(int32(fetchMax + 1<<20)),
		// An offset the log no longer holds (retention) reads from its
		// start.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}
}

// newModelReader reads with cl, which readerOpts configured; own says
// whether close closes it.
func newModelReader(cl *kgo.Client, own bool, o Options, count *channel.Counter, maxBytes int) (*modelReader, error) {
	spreadOpts, err := o.clientOpts(readerOpts(min(maxBytes, positionalFetchBytes), positionalFetchWait)...)
	if err != nil {
		return nil, err
	}
	return &modelReader{cl: cl, own: own, adm: kadm.NewClient(cl), spreadOpts: spreadOpts, held: map[int64]*kgo.Record{},
		topic: ModelTopic(o.Job), job: o.Job, verifier: o.Verifier, count: count, log: o.logger(), warn: logging.NewLimited(o.logger(), 0), conflicts: map[int64]bool{},
		chunks: newAssembler(maxTransferBytes, maxTransferBytes), need: -1}, nil
}

// openModelReader opens a reader with a client of its own.
func openModelReader(o Options, count *channel.Counter, maxBytes int, wait time.Duration) (*modelReader, error) {
	opts, err := o.clientOpts(readerOpts(maxBytes, wait)...)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("model reader: %w", err)
	}
	r, err := newModelReader(cl, true, o, count, maxBytes)
	if err != nil {
		cl.Close()
		return nil, err
	}
	return r, nil
}

func (r *modelReader) close() {
	if r.spreadC != nil {
		r.spreadC.Close()
	}
	if r.own {
		r.cl.Close()
	} else if r.consuming {
		r.cl.RemoveConsumePartitions(map[string][]int32{r.topic: {0}})
	}
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
		if r.absent {
			// Nothing to read or seek: the job's aggregator has not
			// created the topic (yet); await asks again.
			return nil, nil
		}
		r.started = true
		r.seek(high)
		return nil, nil
	}
	for back := int64(2); ; {
		start := max(low, high-back)
		r.chunks.forget(nil)
		clear(r.held)
		r.need = -1
		r.txnModel = false
		m, err := r.readToEnd(ctx, start, high)
		if err != nil {
			return nil, err
		}
		// A window of verified models none of which a transaction
		// produced holds only copies (the aggregator produces in
		// transactions, a replaying attacker on a plain producer does
		// not): the newest genuine model lies further back.
		if (m != nil && r.txnModel) || start == low {
			return r.newest, nil
		}
		if r.need >= 0 && r.need < start {
			back = high - r.need
		} else {
			back *= 4
		}
	}
}

// latestFull reads the log from fullFrom (or its start) to its end and
// returns that end; r.newest is then the highest verified round, seeded
// by what the caller read before.
func (r *modelReader) latestFull(ctx context.Context) (int64, error) {
	low, high, err := r.watermarks(ctx)
	if err != nil {
		return 0, err
	}
	r.started = true
	start := max(low, r.fullFrom)
	if start >= high {
		r.seek(high)
		return max(high, r.fullFrom), nil
	}
	r.chunks.forget(nil)
	clear(r.held)
	r.need = -1
	if _, err := r.readToEnd(ctx, start, high); err != nil {
		return 0, err
	}
	return high, nil
}

// watermarks returns the log start and the last stable offset (the end of
// what read_committed reads) of the model partition; both 0 when the topic
// does not exist yet. The two are asked for at once.
func (r *modelReader) watermarks(ctx context.Context) (low, high int64, err error) {
	for {
		var wg sync.WaitGroup
		var lowErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			low, lowErr = r.listOffset(ctx, r.adm.ListStartOffsets)
		}()
		high, err = r.listOffset(ctx, r.adm.ListCommittedOffsets)
		wg.Wait()
		if err == nil {
			err = lowErr
		}
		if err == nil {
			r.absent = false
			return low, high, nil
		}
		if d := denied(err); d != nil {
			return 0, 0, fmt.Errorf("read %s: %w", r.topic, d)
		}
		r.absent = errors.Is(err, kerr.UnknownTopicOrPartition)
		if r.absent {
			// The aggregator has not created the job yet: no model.
			return 0, 0, nil
		}
		if ctx.Err() != nil {
			return 0, 0, fmt.Errorf("read %s watermarks: %w", r.topic, unreachable(err))
		}
		if !kerr.IsRetriable(err) && !errors.Is(err, errNoPartition) {
			return 0, 0, fmt.Errorf("read %s watermarks: %w", r.topic, unreachable(err))
		}
		// The topic exists but its partition has no leader yet.
		select {
		case <-ctx.Done():
		case <-time.After(pollInterval):
		}
	}
}

// errNoPartition: the model topic has no partition 0 in the answer.
var errNoPartition = errors.New("no partition 0")

// listOffset returns partition 0's offset from a kadm listing.
func (r *modelReader) listOffset(ctx context.Context, list func(context.Context, ...string) (kadm.ListedOffsets, error)) (int64, error) {
	ctx, cancel := withDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := list(ctx, r.topic)
	if err != nil {
		return 0, err
	}
	if lo, ok := res.Lookup(r.topic, -1); ok && lo.Err != nil {
		return 0, lo.Err // the topic itself: unknown or denied
	}
	lo, ok := res.Lookup(r.topic, 0)
	if !ok {
		return 0, errNoPartition
	}
	return lo.Offset, lo.Err
}

// seek makes the reader read partition 0 from offset on.
func (r *modelReader) seek(offset int64) {
	r.pending = nil
	r.pos = offset
	if !r.consuming {
		r.cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{r.topic: {0: kgo.NewOffset().At(offset)}})
		r.consuming = true
		return
	}
	r.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.topic: {0: {Epoch: -1, Offset: offset}}})
}

// readToEnd reads from offset up to high, the last stable offset queried
// just before, and returns the highest round found (nil if none). The read
// ends at the record at high-1: every offset below the last stable one
// holds a committed record, an aborted one (skipped) or a marker, and the
// last is never an aborted record, whose abort marker would follow it.
func (r *modelReader) readToEnd(ctx context.Context, offset, high int64) (*fdxv1.GlobalModel, error) {
	r.seek(offset)
	r.started, r.from = true, offset
	var best *fdxv1.GlobalModel
	for {
		m, at, err := r.next(ctx)
		if err != nil {
			return nil, err
		}
		if m != nil && (best == nil || m.GetRound() > best.GetRound()) {
			best = m
		}
		if at >= high-1 {
			return best, nil
		}
	}
}

// next returns the model of the next record, if it holds one to trust, and
// the record's offset.
func (r *modelReader) next(ctx context.Context) (*fdxv1.GlobalModel, int64, error) {
	rec, err := r.nextRecord(ctx)
	if err != nil {
		return nil, -1, err
	}
	at := rec.Offset
	r.pos = at + 1
	if rec.Attrs.IsControl() {
		return nil, at, nil
	}
	r.count.Received(len(rec.Value) + len(rec.Key))
	if header(rec, headerSpread) != nil {
		if id := string(header(rec, headerTransfer)); id != r.heldID {
			clear(r.held)
			r.heldID = id
		}
		if len(r.held) < maxChunks {
			r.held[at] = rec // used with its manifest
		}
		return nil, at, nil
	}
	if isChunk(rec) {
		for _, f := range r.chunks.add(rec, "") {
			r.count.Rejected()
			r.log.Warn("chunked model dropped", "topic", r.topic, "offset", at, "reason", f.Reason, "err", f.Detail)
		}
		return nil, at, nil
	}
	m, sum, err := r.decode(ctx, rec)
	var te *transferError
	if errors.As(err, &te) && te.Need >= 0 && te.Need < r.from {
		// Its chunks precede the window: latest reads them next.
		return nil, at, nil
	}
	if err != nil {
		// Anyone who can reach the broker may write here: ignore the
		// record and keep reading, rather than train on it, end on it or
		// wedge on it.
		r.count.Rejected()
		r.warn.Warn(ctx, "model_ignored", "model record ignored", "topic", r.topic, "offset", at, "err", err)
		return nil, at, nil
	}
	if rec.Attrs.IsTransactional() {
		r.txnModel = true
	}
	switch n := r.newest; {
	case n == nil || m.GetRound() > n.GetRound():
		r.newest, r.newestAt, r.newestSum = m, at, sum
	case m.GetRound() == n.GetRound() && sum != r.newestSum:
		// Two signed models of one round: raise the alarm and keep the
		// one earlier in the log (a reader going back through windows
		// may meet the later one first).
		later := max(at, r.newestAt)
		if !r.conflicts[later] {
			// Once per record, though windows read it again.
			r.conflicts[later] = true
			r.count.Conflict()
			r.warn.Warn(ctx, "model_conflict", "two verified models of one round with different bytes; keeping the earlier",
				"topic", r.topic, "round", m.GetRound(), "offset", later, "earlier_offset", min(at, r.newestAt))
		}
		if at >= r.newestAt {
			return nil, at, nil
		}
		r.newest, r.newestAt, r.newestSum = m, at, sum
	case m.GetRound() < n.GetRound() && at > r.newestAt:
		// Older than a model before it: a genuine record replayed.
		r.count.Rejected()
		r.warn.Warn(ctx, "model_replayed", "model older than one read before it ignored",
			"topic", r.topic, "round", m.GetRound(), "offset", at, "newest_round", n.GetRound(), "newest_offset", r.newestAt)
		return nil, at, nil
	}
	return m, at, nil
}

// nextRecord returns the next record of partition 0, waiting for one until
// ctx ends.
func (r *modelReader) nextRecord(ctx context.Context) (*kgo.Record, error) {
	for len(r.pending) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fs := r.cl.PollFetches(ctx)
		var failed error
		fs.EachError(func(topic string, p int32, err error) {
			switch {
			case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
				failed = err
			case errors.Is(err, kgo.ErrClientClosed):
				failed = fmt.Errorf("read %s: %w", r.topic, err)
			case denied(err) != nil:
				failed = fmt.Errorf("read %s: %w", r.topic, denied(err))
			default:
				r.log.Debug("kafka fetch error", "topic", topic, "partition", p, "err", err)
			}
		})
		fs.EachRecord(func(rec *kgo.Record) {
			if rec.Topic == r.topic && rec.Partition == 0 {
				r.pending = append(r.pending, rec)
			}
		})
		if failed != nil && len(r.pending) == 0 {
			return nil, failed
		}
	}
	rec := r.pending[0]
	r.pending[0] = nil
	r.pending = r.pending[1:]
	return rec, nil
}

// decode returns the model a record holds if it is one to trust, and the
// SHA-256 of its bytes: its signature verifies (with a verifier) over the
// job, topic, round and final flag it claims, it decodes to a model that
// says the same, it belongs to the job with a round inside it, and valid
// accepts it. A manifest's signature covers the manifest, whose SHA-256
// covers the reassembled model.
func (r *modelReader) decode(ctx context.Context, msg *kgo.Record) (*fdxv1.GlobalModel, [sha256.Size]byte, error) {
	var none [sha256.Size]byte
	var claims *trust.ModelClaims
	if r.verifier != nil {
		c, err := trust.ParseClaims(r.job, r.topic, header(msg, trust.HeaderRound), header(msg, trust.HeaderFinal))
		if err != nil {
			return nil, none, fmt.Errorf("signature: %w", err)
		}
		if err := r.verifier.VerifyModel(c, msg.Value, header(msg, trust.HeaderSignature), string(header(msg, trust.HeaderKeyID))); err != nil {
			return nil, none, fmt.Errorf("signature: %w", err)
		}
		claims = &c
	}
	value := msg.Value
	var m *fdxv1.GlobalModel
	if man := spreadManifest(msg); man != nil {
		whole, failed := r.fetchSpread(ctx, man, msg.Offset)
		if failed != nil {
			return nil, none, failed
		}
		var err error
		if m, err = unmarshalModel(whole); err != nil {
			return nil, none, fmt.Errorf("undecodable: %w", err)
		}
		value = whole
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
				return nil, none, errors.New("repeated manifest")
			}
			return nil, none, failed[len(failed)-1]
		}
		value = whole
	}
	if m == nil {
		if len(value) == 0 {
			return nil, none, errors.New("empty record")
		}
		m = &fdxv1.GlobalModel{}
		if err := proto.Unmarshal(value, m); err != nil {
			return nil, none, fmt.Errorf("undecodable: %w", err)
		}
	}
	if claims != nil && (m.GetJob() != claims.Job || m.GetRound() != claims.Round || m.GetFinal() != claims.Final) {
		return nil, none, fmt.Errorf("%w: model says job %q round %d final %t, its signature job %q round %d final %t",
			trust.ErrBadSignature, m.GetJob(), m.GetRound(), m.GetFinal(), claims.Job, claims.Round, claims.Final)
	}
	if err := rules.CheckModel(m, r.job); err != nil {
		return nil, none, err
	}
	if r.valid != nil {
		if err := r.valid(m); err != nil {
			return nil, none, err
		}
	}
	return m, sha256.Sum256(value), nil
}

// await returns the newest model with round >= minRound (or a final one),
// reading new records as the aggregator publishes them.
//
// A reader that has read before (a warm function instance's) first reads
// up to the current end, as a new reader would: what it read last time may
// be long superseded, even final.
func (r *modelReader) await(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	if r.started {
		if err := r.catchUp(ctx); err != nil {
			return nil, err
		}
	}
	// Until the topic exists there is no partition to consume: ask for it
	// again rather than consume a partition the client does not know, whose
	// creation it may learn of only at its next metadata refresh.
	for !r.started {
		if _, err := r.latest(ctx); err != nil {
			return nil, err
		}
		if r.started {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for model round %d on %s: %w (no aggregator created it): %w", minRound, r.topic, channel.ErrJobNotFound, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	for {
		if m := r.newest; m != nil && (m.GetRound() >= minRound || m.GetFinal()) {
			return m, nil
		}
		if _, _, err := r.next(ctx); err != nil {
			if ctx.Err() == nil {
				return nil, err
			}
			if r.newest == nil && r.topicAbsent() {
				return nil, fmt.Errorf("wait for model round %d on %s: %w (no aggregator created it): %w", minRound, r.topic, channel.ErrJobNotFound, ctx.Err())
			}
			return nil, fmt.Errorf("wait for model round %d on %s: %w", minRound, r.topic, ctx.Err())
		}
	}
}

// topicAbsent reports whether the broker says the model topic does not
// exist. It is asked once a wait for the job's first model has run out,
// to tell "no such job" (the caller's error: a 404 for the function) from
// "no model yet"; the caller's context is done by then, so the question
// has a short deadline of its own.
func (r *modelReader) topicAbsent() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := r.listOffset(ctx, r.adm.ListEndOffsets)
	return errors.Is(err, kerr.UnknownTopicOrPartition)
}

// catchUp reads on from where the reader stands to the last stable offset
// of now.
func (r *modelReader) catchUp(ctx context.Context) error {
	_, high, err := r.watermarks(ctx)
	if err != nil {
		return err
	}
	for r.pos < high {
		if _, _, err := r.next(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("read %s up to offset %d: %w", r.topic, high, ctx.Err())
			}
			return err
		}
	}
	return nil
}

// History reads every committed model of a job, oldest first: the job's
// audit trail (each model names its contributors).
func History(ctx context.Context, o Options) ([]*fdxv1.GlobalModel, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var count channel.Counter
	r, err := openModelReader(o, &count, 64<<20, serverFetchWait)
	if err != nil {
		return nil, err
	}
	defer r.close()
	low, high, err := r.watermarks(ctx)
	if err != nil || high <= low {
		return nil, err
	}
	r.seek(low)
	r.started, r.from = true, low
	var out []*fdxv1.GlobalModel
	for {
		m, at, err := r.next(ctx)
		if err != nil {
			return nil, err
		}
		if m != nil {
			out = append(out, m)
		}
		if at >= high-1 {
			return out, nil
		}
	}
}
