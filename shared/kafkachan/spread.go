package kafkachan

// Spreading a model over partitions. A single-partition model topic makes
// its leader serve every client's download. With ModelPartitions n > 1 the
// aggregator puts chunk i on partition i mod n, inside the round's
// transaction as before, and the manifest, still on partition 0 where
// readers look for the newest model, lists each chunk's partition and
// offset; a reader fetches them from every partition's leader. The
// manifest is produced after the chunks are acknowledged (their offsets
// are known only then) and signed after, so the signature covers where
// they are as well as their checksums.
//
// A model on one partition (n = 1) lists its chunks' offsets the same
// way. A new client reads the newest record, the manifest, and then reads
// the chunks where it says with a positional consumer of its own: without
// the list it had to go back and re-read the partition with the consumer
// that had just parked a long poll past the end, which the broker holds
// for the fetch's whole wait (500 ms for clients) before it answers.
// Manifests without the list (models published before it, by older
// aggregators) are read as before: chunks, then the manifest.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
)

// spread moves chunks over n partitions and marks them as spread.
func spread(chunks []*kgo.Record, n int) {
	for i, c := range chunks {
		c.Partition = int32(i % n)
		for j := range c.Headers {
			if c.Headers[j].Key == headerChunk {
				c.Headers[j].Key = headerSpread
			}
		}
	}
}

// produceModel produces a model's records inside the open transaction:
// all at once, or, for a spread model, the chunks first and then the
// manifest that says where they landed.
func (s *Server) produceModel(ctx context.Context, records []*kgo.Record, after func(int)) error {
	if len(records) < 2 || header(records[0], headerSpread) == nil {
		return produceAll(ctx, s.p, records, after)
	}
	chunks, last := records[:len(records)-1], records[len(records)-1]
	if err := produceAll(ctx, s.p, chunks, after); err != nil {
		return err
	}
	man := &fdxv1.TransferManifest{}
	if err := proto.Unmarshal(last.Value, man); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	for _, c := range chunks {
		man.ChunkPartitions = append(man.ChunkPartitions, c.Partition)
		man.ChunkOffsets = append(man.ChunkOffsets, c.Offset)
	}
	b, err := proto.Marshal(man)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	last.Value = b
	s.sign(last)
	return produceAll(ctx, s.p, []*kgo.Record{last}, nil)
}

// spreadTimeout bounds fetching a spread model's chunks once its manifest
// is read: they are committed, so only an unreachable leader delays them.
const spreadTimeout = 60 * time.Second

// positionalFetchBytes bounds one partition's share of a fetch of listed
// chunks: 16 chunks of 1 MiB.
const positionalFetchBytes = 16 << 20

// fetchSpread reads the chunks a listing manifest names, from every
// partition they are on (those of partition 0 that reading it passed are
// held already), and returns the verified whole. Each chunk goes into the
// whole as it arrives (see wholeBuilder), so the whole is ready, hashed,
// soon after the last chunk.
func (r *modelReader) fetchSpread(ctx context.Context, man *fdxv1.TransferManifest, manifestAt int64) ([]byte, *transferError) {
	defer clear(r.held)
	n := int(man.GetChunkCount())
	fail := func(reason rules.Reason, format string, args ...any) *transferError {
		return &transferError{Reason: reason, Detail: fmt.Sprintf("spread transfer %s: ", man.GetTransferId()) + fmt.Sprintf(format, args...), Need: -1}
	}
	if !listingConsistent(man) {
		return nil, fail(rules.Undecodable, "inconsistent manifest (%d chunks of %d bytes, %d in all)", n, man.GetChunkSize(), man.GetTotalSize())
	}
	// want maps each chunk still to fetch, by partition and offset, to its
	// index; from and last are the lowest and highest such offsets per
	// partition; held are the chunks partition 0's reading passed.
	type at struct {
		p int32
		o int64
	}
	want := map[at]int{}
	from, last := map[int32]int64{}, map[int32]int64{}
	held := map[int][]byte{}
	for i := range n {
		p, o := man.GetChunkPartitions()[i], man.GetChunkOffsets()[i]
		if p < 0 || o < 0 {
			return nil, fail(rules.Undecodable, "chunk %d at partition %d offset %d", i, p, o)
		}
		if msg, ok := r.held[o]; ok && p == 0 && string(header(msg, headerTransfer)) == man.GetTransferId() {
			held[i] = msg.Value
			continue
		}
		want[at{p, o}] = i
		if f, ok := from[p]; !ok || o < f {
			from[p] = o
		}
		last[p] = max(last[p], o)
	}
	// The whole is allocated once the chunks' fetch is under way: zeroing
	// it (about 10 ms per 100 MB) overlaps the first fetch.
	var w *wholeBuilder
	var bad error
	begin := func() {
		w = newWholeBuilder(man)
		for i, c := range held {
			if err := w.put(i, c); err != nil && bad == nil {
				bad = err
			}
		}
		clear(r.held) // copied: let them go
	}
	defer func() {
		if w != nil {
			w.close()
		}
	}()
	if len(want) == 0 {
		begin()
	} else if err := r.fetchChunks(ctx, manifestAt, begin, func(p int32, o int64, msg *kgo.Record) (bool, bool) {
		i, ok := want[at{p, o}]
		if ok && bad == nil && !w.has(i) && string(header(msg, headerTransfer)) == man.GetTransferId() {
			bad = w.put(i, msg.Value)
		}
		return bad != nil || w.complete(), o >= last[p]
	}, from, last); err != nil {
		got := 0
		if w != nil {
			got = w.got
		}
		return nil, fail(rules.Incomplete, "%d of %d chunks: %v", got, n, err)
	}
	if bad != nil {
		return nil, fail(rules.Checksum, "%v", bad)
	}
	if !w.complete() {
		return nil, fail(rules.Incomplete, "%d of %d chunks", w.got, n)
	}
	whole, err := w.finish()
	if err != nil {
		return nil, fail(rules.Checksum, "%v", err)
	}
	return whole, nil
}

// listingConsistent reports whether a manifest that lists its chunks'
// places describes a whole that its chunk count and size can make up, so
// that a reader may allocate the whole and place every chunk in it before
// the chunks are checked.
func listingConsistent(man *fdxv1.TransferManifest) bool {
	n := int(man.GetChunkCount())
	return transfer.CheckManifest(man, maxTransferBytes) == nil && man.GetTotalSize() > 0 &&
		len(man.GetChunkPartitions()) == n && len(man.GetChunkOffsets()) == n
}

// positionalFetchWait is how long the broker may park a fetch of listed
// chunks. The chunks are committed records: a fetch never needs to wait for
// data, and one parked past the last chunk would delay the next model's
// positional read by its whole wait.
const positionalFetchWait = 10 * time.Millisecond

// fetchChunks reads the model topic's partitions from the offsets in from
// (the manifest being at manifestAt of partition 0), calls begin once the
// fetch is under way, and hands every record to take, which says whether
// all are read (done) and whether the record's partition is past its last
// chunk (passed). A partition passed before done is an error: the chunks
// are not where the manifest says. Markers count as records here: an
// aborted chunk is never delivered, but the marker after it is.
func (r *modelReader) fetchChunks(ctx context.Context, manifestAt int64, begin func(), take func(p int32, o int64, msg *kgo.Record) (done, passed bool), from, last map[int32]int64) error {
	if r.spreadC == nil {
		c, err := kgo.NewClient(r.spreadOpts...)
		if err != nil {
			return fmt.Errorf("chunk reader: %w", err)
		}
		r.spreadC = c
	}
	// A chunk past a partition's end is not there (yet): a forged manifest
	// can point anywhere, and a genuine one can be read a moment before
	// the other partitions' leaders show its chunks (each partition's end
	// moves on its own). So the ends are asked again for a short while,
	// then the manifest is refused rather than waited on for
	// spreadTimeout. Partition 0 holds records up to the manifest's offset
	// at least: no need to ask for it (one round trip less for a new
	// client of a one-partition model).
	check := false
	for p := range from {
		check = check || p != 0 || last[p] >= manifestAt
	}
	if check {
		if err := r.awaitEnds(ctx, from, last); err != nil {
			return err
		}
	}
	at := map[int32]kgo.Offset{}
	parts := make([]int32, 0, len(from))
	for p, o := range from {
		at[p] = kgo.NewOffset().At(o)
		parts = append(parts, p)
	}
	r.spreadC.AddConsumePartitions(map[string]map[int32]kgo.Offset{r.topic: at})
	defer r.spreadC.RemoveConsumePartitions(map[string][]int32{r.topic: parts})
	begin()
	ctx, cancel := context.WithTimeout(ctx, spreadTimeout)
	defer cancel()
	passed := map[int32]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		fs := r.spreadC.PollFetches(ctx)
		if err := fetchFailure(ctx, fs); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		for it := fs.RecordIter(); !it.Done(); {
			rec := it.Next()
			if rec.Topic != r.topic || passed[rec.Partition] || rec.Offset < from[rec.Partition] {
				continue
			}
			var done, past bool
			if rec.Attrs.IsControl() {
				past = rec.Offset >= last[rec.Partition]
			} else {
				r.count.Received(len(rec.Value) + len(rec.Key))
				done, past = take(rec.Partition, rec.Offset, rec)
			}
			if done {
				return nil
			}
			if past {
				passed[rec.Partition] = true
				if len(passed) == len(from) {
					return errors.New("not where the manifest says")
				}
			}
		}
	}
}

// spreadManifest returns msg's manifest if it is one of a spread model.
func spreadManifest(msg *kgo.Record) *fdxv1.TransferManifest {
	if !isManifest(msg) {
		return nil
	}
	man := &fdxv1.TransferManifest{}
	if proto.Unmarshal(msg.Value, man) != nil || len(man.GetChunkPartitions()) == 0 {
		return nil
	}
	return man
}

// fetchFailure returns the error of fs that ends a read: a client-wide one
// (partition -1) or a refused authorization. The others are retried by the
// client on the next poll, and a poll cut short by ctx is the caller's to
// report.
func fetchFailure(ctx context.Context, fs kgo.Fetches) error {
	var failed error
	fs.EachError(func(_ string, p int32, err error) {
		if ctx.Err() == nil && (p < 0 || denied(err) != nil) {
			failed = err
		}
	})
	return failed
}

// endsGrace is how long fetchChunks waits for the partitions' ends to
// reach a manifest's chunks before it refuses the manifest.
const endsGrace = 2 * time.Second

// awaitEnds returns once every partition of from ends past its last
// chunk, or an error naming one that does not within endsGrace.
func (r *modelReader) awaitEnds(ctx context.Context, from, last map[int32]int64) error {
	deadline := time.Now().Add(endsGrace)
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		ends, err := kadm.NewClient(r.spreadC).ListEndOffsets(ctx, r.topic)
		if err != nil {
			return fmt.Errorf("partition ends: %w", err)
		}
		var short error
		for p := range from {
			end, ok := ends.Lookup(r.topic, p)
			switch {
			case !ok:
				return fmt.Errorf("partition %d: no such partition", p)
			case end.Err != nil:
				return fmt.Errorf("partition %d: %w", p, end.Err)
			case last[p] >= end.Offset:
				short = fmt.Errorf("a chunk at offset %d of partition %d, which ends at %d", last[p], p, end.Offset)
			}
		}
		if short == nil {
			return nil
		}
		if time.Now().Add(wait).After(deadline) {
			return short
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", short, ctx.Err())
		case <-time.After(wait):
		}
	}
}
