package kafkachan

// Streaming chunked updates: the aggregator folds a chunked update chunk
// by chunk, where the strategy allows, instead of holding the whole update.
//
// When the round loop asks for it (StreamUpdates), the server keeps none of
// an update transfer's chunk bytes. Pass 1, as the chunks arrive in order:
// it hashes them (SHA-256 of the whole, CRC-32C of each) and parses them
// with updatestream into the round's sink, which gathers what validation
// needs; it keeps each chunk's offset. The manifest comes last (the client
// sends it once every chunk is acknowledged); the server checks it as the
// assembler does (chunk count, sizes, every CRC, the SHA-256; the MAC over
// the manifest) and delivers the update's other fields with a
// channel.Stream. Pass 2, only for an update the round loop accepted:
// Replay reads the chunks again from the broker by offset (a positional
// consumer; the records are recent, usually in the page cache) and hands
// their values to the strategy's fold, checking each chunk's CRC before it
// is parsed and the SHA-256 at the end.
//
// Nothing unauthenticated or unvalidated is folded: pass 2 starts after
// the MAC and the checks passed, and re-reads records at fixed offsets,
// which Kafka never rewrites. If pass 2 still fails (the broker went away,
// a record was lost to an unclean leader election, the bytes differ), the
// round holds part of an update and must not be published: the round loop
// fails the job, and the restarted aggregator rebuilds the round from the
// offsets its last round committed.
//
// An update whose bytes the parser cannot follow (an int8 tensor, whose
// scale follows its data; fields out of the usual order) or whose chunks
// arrived out of order is read again whole at its manifest and delivered
// whole, as without streaming.

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

var _ channel.Streamer = (*Server)(nil)

// StreamUpdates implements channel.Streamer. Transfers already under way
// keep the mode they started in.
func (s *Server) StreamUpdates(newSink func() updatestream.Sink) {
	s.updates.newSink = newSink
}

// HeldUpdateBytes is the number of bytes of update transfers the server
// holds now (chunks buffered, or the parsers' state of streamed ones), and
// the most it held at once: with streaming, O(chunk) per transfer in
// flight, whatever the update's size.
func (s *Server) HeldUpdateBytes() (now, peak int64) {
	return s.updates.held(), s.updates.peak
}

// streamState is pass 1 of one streamed transfer.
type streamState struct {
	sink   updatestream.Sink
	parser *updatestream.Parser
	// digest checks the chunks against the manifest that follows them.
	digest  *transfer.Digest
	offsets []int64 // per chunk index; -1 until it arrives
	// broken says why the values could not be streamed; the update is then
	// read again whole at its manifest.
	broken error
}

func newStreamState(sink updatestream.Sink, count int) *streamState {
	st := &streamState{sink: sink, parser: updatestream.New(sink, 0), digest: transfer.NewDigest(count),
		offsets: make([]int64, count)}
	for i := range st.offsets {
		st.offsets[i] = -1
	}
	return st
}

// take is pass 1 for chunk index of msg.
func (st *streamState) take(index int, msg *kgo.Record) {
	if st.offsets[index] >= 0 {
		return // a retried duplicate: the first copy is the one read again
	}
	st.offsets[index] = msg.Offset
	inOrder := st.digest.Add(index, msg.Value)
	if st.broken != nil {
		return
	}
	if !inOrder {
		st.breakOff(fmt.Errorf("chunk %d arrived before the chunks ahead of it", index))
		return
	}
	if err := st.parser.Write(msg.Value); err != nil {
		st.breakOff(err)
	}
}

func (st *streamState) breakOff(err error) {
	st.broken, st.parser = err, nil
}

func (st *streamState) held() int64 {
	if st.parser == nil {
		return 0
	}
	return int64(st.parser.Held())
}

// held is what the assembler holds: buffered chunks and parser state.
func (a *assembler) held() int64 {
	n := a.buffered
	for _, t := range a.pending {
		if t.stream != nil {
			n += t.stream.held()
		}
	}
	return n
}

// notePeak records the most held at once.
func (a *assembler) notePeak() {
	if h := a.held(); h > a.peak {
		a.peak = h
	}
}

// chunkSpan says where a verified transfer's chunks are and what they must
// match.
type chunkSpan struct {
	topic     string
	partition int32
	id        string
	offsets   []int64
	man       *fdxv1.TransferManifest
}

// streamed completes a streamed transfer at its manifest msg. ok is false
// when msg is not the manifest of a pending streamed transfer: the
// assembler's complete then handles it as before.
func (s *Server) streamed(ctx context.Context, msg *kgo.Record) (d channel.Delivery, ok bool) {
	tp := msg
	key := string(msg.Key)
	t := s.updates.pending[pendingKey{tp.Partition, key}]
	if t == nil || t.stream == nil || t.done || t.dropped != nil {
		return d, false
	}
	man := &fdxv1.TransferManifest{}
	if proto.Unmarshal(msg.Value, man) != nil || man.GetTransferId() != t.id {
		return d, false
	}
	st := t.stream
	t.done, t.stream = true, nil
	drop := func(f *transferError) channel.Delivery {
		s.warn.Warn(ctx, "dropped_"+string(f.Reason), "chunked update dropped", "topic", UpdatesTopic(s.opt.Job), "key", key, "err", f.Detail)
		return channel.Delivery{Key: key, Rejection: f.rejection()}
	}
	fail := func(r rules.Reason, format string, args ...any) channel.Delivery {
		return drop(&transferError{Reason: r, Detail: fmt.Sprintf("transfer %s: ", t.id) + fmt.Sprintf(format, args...), Key: key, Need: -1})
	}
	n := int(man.GetChunkCount())
	if n != t.count || man.GetTotalSize() != t.total {
		return fail(rules.Checksum, "manifest (%d chunks, %d bytes) does not describe its chunks (%d, %d bytes)", n, man.GetTotalSize(), t.count, t.total), true
	}
	ordered, rej := st.digest.Check(man)
	if rej != nil {
		return drop(rejected(rej, key)), true
	}
	span := chunkSpan{topic: tp.Topic, partition: tp.Partition, id: t.id, offsets: st.offsets, man: man}
	if st.broken != nil || !ordered {
		// Not streamable: read it again whole and deliver it as before.
		s.opt.logger().Debug("chunked update not streamable; reading it whole", "key", key, "why", st.broken)
		whole, err := s.readWhole(ctx, span)
		if err != nil {
			return fail(rules.Incomplete, "reading the chunks again: %v", err), true
		}
		return s.delivery(msg, whole, len(whole)+len(msg.Key)), true
	}
	d = channel.Delivery{Key: key, Size: int(t.total) + len(msg.Key)}
	u, err := st.parser.Close()
	if err != nil {
		d.Err = fmt.Errorf("decode update at %s[%d]@%d: %w", tp.Topic, tp.Partition, tp.Offset, err)
		return d, true
	}
	d.Update = u
	d.Rejection = s.authenticate(msg, u)
	if d.Rejection == nil {
		d.Stream = &channel.Stream{
			Sink: st.sink,
			Replay: func(ctx context.Context, sink updatestream.Sink) error {
				return s.replay(ctx, span, sink)
			},
			Whole: func(ctx context.Context) (*fdxv1.Update, error) {
				b, err := s.readWhole(ctx, span)
				if err != nil {
					return nil, err
				}
				u := &fdxv1.Update{}
				if err := proto.Unmarshal(b, u); err != nil {
					return nil, fmt.Errorf("decode update read again: %w", err)
				}
				return u, nil
			},
		}
	}
	return d, true
}

// replay is pass 2: it parses the chunks of span again into sink, checking
// each chunk's CRC before parsing it and the SHA-256 of the whole at the
// end.
func (s *Server) replay(ctx context.Context, span chunkSpan, sink updatestream.Sink) error {
	p := updatestream.New(sink, 0)
	v, rej := transfer.NewVerifier(span.man, maxTransferBytes)
	if rej != nil {
		return fmt.Errorf("replay update transfer %s: %w", span.id, rej)
	}
	err := s.readChunks(ctx, span, func(i int, b []byte) error {
		if i != v.Chunks() {
			return fmt.Errorf("chunk %d read before chunk %d", i, v.Chunks())
		}
		if rej := v.Write(b); rej != nil {
			return rej
		}
		return p.Write(b)
	})
	if err == nil {
		_, err = p.Close()
	}
	if err == nil {
		if rej := v.Finish(); rej != nil {
			err = rej
		}
	}
	if err != nil {
		return fmt.Errorf("replay update transfer %s: %w", span.id, err)
	}
	return nil
}

// readWhole reads the chunks of span again and returns the verified whole.
func (s *Server) readWhole(ctx context.Context, span chunkSpan) ([]byte, error) {
	chunks := make([][]byte, len(span.offsets))
	if err := s.readChunks(ctx, span, func(i int, b []byte) error {
		chunks[i] = b
		return nil
	}); err != nil {
		return nil, err
	}
	v, rej := transfer.NewVerifier(span.man, maxTransferBytes)
	if rej != nil {
		return nil, rej
	}
	whole := make([]byte, 0, span.man.GetTotalSize())
	for _, c := range chunks {
		if rej := v.Write(c); rej != nil {
			return nil, rej
		}
		whole = append(whole, c...)
	}
	if rej := v.Finish(); rej != nil {
		return nil, rej
	}
	return whole, nil
}

// replayTimeout bounds reading a transfer's chunks again: they are in the
// broker's log, so only an unreachable leader delays them.
const replayTimeout = 60 * time.Second

// readChunks reads the records of span's partition from its first chunk's
// offset on and hands each chunk, CRC checked, to take, in offset order.
func (s *Server) readChunks(ctx context.Context, span chunkSpan, take func(i int, b []byte) error) error {
	if s.replayC == nil {
		c, err := s.newReplayConsumer()
		if err != nil {
			return err
		}
		s.replayC = c
	}
	at := make(map[int64]int, len(span.offsets))
	first, last := span.offsets[0], span.offsets[0]
	for i, o := range span.offsets {
		at[o] = i
		first, last = min(first, o), max(last, o)
	}
	s.replayC.AddConsumePartitions(map[string]map[int32]kgo.Offset{span.topic: {span.partition: kgo.NewOffset().At(first)}})
	defer s.replayC.RemoveConsumePartitions(map[string][]int32{span.topic: {span.partition}})
	ctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	left := len(at)
	for left > 0 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%d of %d chunks read: %w", len(at)-left, len(at), err)
		}
		fs := s.replayC.PollFetches(ctx)
		if err := fetchFailure(ctx, fs); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		for it := fs.RecordIter(); !it.Done() && left > 0; {
			rec := it.Next()
			if rec.Topic != span.topic || rec.Partition != span.partition || rec.Offset < first {
				continue
			}
			i, ok := at[rec.Offset]
			if !ok {
				if rec.Offset > last {
					return fmt.Errorf("%d chunks not at their offsets", left)
				}
				continue // another sender's record
			}
			delete(at, rec.Offset)
			left--
			if string(header(rec, headerTransfer)) != span.id || transfer.CheckChunk(span.man, i, rec.Value) != nil {
				return fmt.Errorf("chunk %d at offset %d is not the one checked", i, rec.Offset)
			}
			if err := take(i, rec.Value); err != nil {
				return err
			}
		}
	}
	return nil
}

// newReplayConsumer opens the positional consumer of pass 2: it consumes
// partitions directly, so it joins no group. It fetches a few chunks at a
// time: pass 2 reads one transfer at a time, and larger fetches would hold
// update bytes the streaming is meant not to hold. It keeps markers, so
// that a chunk never delivered (aborted) is passed by instead of waited
// for.
func (s *Server) newReplayConsumer() (*kgo.Client, error) {
	opts, err := s.opt.clientOpts(
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(50*time.Millisecond),
		kgo.FetchMaxPartitionBytes(int32(s.recordBytes)),
		kgo.FetchMaxBytes(int32(2*s.recordBytes)),
		kgo.BrokerMaxReadBytes(int32(2*s.recordBytes+1<<20)),
	)
	if err != nil {
		return nil, err
	}
	c, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("update replay consumer: %w", err)
	}
	return c, nil
}
