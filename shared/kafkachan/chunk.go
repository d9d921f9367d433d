package kafkachan

// Chunked transfer. A serialized model or update larger than the chunk size
// (Options.ChunkBytes, 1 MiB by default) travels as chunk records, raw
// slices of the serialized message in order, followed by a manifest record
// (fdx.v1.TransferManifest: total size, chunk count, SHA-256 of the whole,
// CRC-32C of each chunk). The topics' max.message.bytes then stays at the
// chunk size whatever the model's size.
//
// Model chunks are produced inside the round's transaction, so a
// read_committed reader sees all of them or none: an aggregator killed
// mid-transfer leaves an aborted transaction that nobody reads. Update
// chunks are keyed by client id, so they land in one partition in order;
// the client sends the manifest only once every chunk is acknowledged, so
// the manifest follows its chunks even when librdkafka retries out of
// order. A reader keeps the chunks of one transfer per (partition, key)
// until its manifest arrives, checks every chunk and the whole, and uses the
// whole only if all match; a transfer that lacks chunks (its sender died, or
// a newer transfer of the same key started first) is dropped as
// rules.Incomplete, one that does not match as rules.Checksum. (An
// aggregator whose round folds updates piece by piece keeps no update
// chunks at all: stream.go.)
//
// The model's signature and the update's MAC are computed over the
// manifest, which carries the whole's SHA-256: they authenticate the whole.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// DefaultChunkBytes is the chunk size, and the size above which a message
// is chunked, when Options.ChunkBytes is 0.
const DefaultChunkBytes = 1 << 20

// Record headers of a chunked transfer.
const (
	// headerTransfer carries the transfer id on chunks and the manifest.
	headerTransfer = "fdx-transfer"
	// headerChunk is "index/count/total" on a chunk record.
	headerChunk = "fdx-chunk"
	// headerManifest marks the manifest record.
	headerManifest = "fdx-manifest"
	// headerSpread replaces headerChunk on the chunks of a model spread
	// over the model topic's partitions: the reader of partition 0 passes
	// them by and fetches them where the manifest says.
	headerSpread = "fdx-spread-chunk"
)

// Bounds on what a reader accepts from chunk headers before the manifest
// vouches for them: a protobuf message is at most 2 GiB, and a chunk count
// bounds the index slice a reader allocates.
const (
	maxTransferBytes = 2<<30 - 1
	maxChunks        = 1 << 16
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// chunkBytes is the effective chunk size.
func (o Options) chunkBytes() int {
	if o.ChunkBytes > 0 {
		return o.ChunkBytes
	}
	return DefaultChunkBytes
}

// transferRecords splits whole into chunk records and the manifest record
// that closes them, all for topic's partition (byKey: by key) with key. The
// caller adds the manifest's signature or MAC.
func transferRecords(topic string, partition int32, key, whole []byte, chunkBytes int) ([]*kgo.Record, *kgo.Record, error) {
	var idb [12]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, nil, fmt.Errorf("transfer id: %w", err)
	}
	id := []byte(hex.EncodeToString(idb[:]))
	n := (len(whole) + chunkBytes - 1) / chunkBytes
	sum := sha256.Sum256(whole)
	man := &fdxv1.TransferManifest{
		TransferId: string(id), TotalSize: int64(len(whole)), ChunkCount: int32(n),
		ChunkSize: int32(chunkBytes), Sha256: sum[:], ChunkCrc32C: make([]uint32, n),
	}
	chunks := make([]*kgo.Record, n)
	for i := range n {
		part := whole[i*chunkBytes : min((i+1)*chunkBytes, len(whole))]
		man.ChunkCrc32C[i] = crc32.Checksum(part, castagnoli)
		chunks[i] = &kgo.Record{
			Topic:     topic,
			Partition: partition,
			Key:       key,
			Value:     part,
			Headers: []kgo.RecordHeader{
				{Key: headerTransfer, Value: id},
				{Key: headerChunk, Value: fmt.Appendf(nil, "%d/%d/%d", i, n, len(whole))},
			},
		}
	}
	mb, err := proto.Marshal(man)
	if err != nil {
		return nil, nil, fmt.Errorf("encode manifest: %w", err)
	}
	manifest := &kgo.Record{
		Topic:     topic,
		Partition: partition,
		Key:       key,
		Value:     mb,
		Headers:   []kgo.RecordHeader{{Key: headerTransfer, Value: id}, {Key: headerManifest, Value: []byte("1")}},
	}
	return chunks, manifest, nil
}

// produceAll produces recs and waits for every acknowledgement; after,
// when set, runs after the i-th one (fault injection). It returns the first
// error that is not the consequence of another record's failure. kgo sets
// each record's Partition and Offset where it landed.
func produceAll(ctx context.Context, cl *kgo.Client, recs []*kgo.Record, after func(i int)) error {
	done := make(chan error, len(recs))
	for _, r := range recs {
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) { done <- err })
	}
	var first error
	for i := range recs {
		select {
		case err := <-done:
			// Once one record of a transaction fails, kgo fails the
			// records buffered behind it as aborting: the cause is the
			// one that is not.
			if err != nil && (first == nil || errors.Is(first, kgo.ErrAborting)) {
				first = err
			}
			if after != nil && first == nil {
				after(i)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return first
}

// isChunk and isManifest tell the records of a chunked transfer apart.
func isChunk(r *kgo.Record) bool    { return header(r, headerChunk) != nil }
func isManifest(r *kgo.Record) bool { return header(r, headerManifest) != nil }

// header returns the value of r's first header named key, nil if none.
func header(r *kgo.Record, key string) []byte {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// transferError is a dropped transfer: why, and, for an incomplete one, the
// offset where its chunks should start (-1 if unknown), so that a reader
// that started reading after them can go back.
type transferError struct {
	Reason rules.Reason
	Detail string
	Key    string
	// Need is where the transfer's chunks would start if they are
	// contiguous and just before the manifest; -1 when unknown.
	Need int64
}

func (e *transferError) Error() string { return string(e.Reason) + ": " + e.Detail }

// rejection is e as an update rejection.
func (e *transferError) rejection() *rules.Rejection {
	return &rules.Rejection{Reason: e.Reason, Detail: e.Detail}
}

// pendingKey groups the chunks of one sender: its partition and record key.
type pendingKey struct {
	partition int32
	key       string
}

// transfer is one transfer being reassembled.
type transfer struct {
	id     string
	count  int
	total  int64
	chunks [][]byte
	bytes  int64
	// first is the lowest offset of its chunks: where a consumer must
	// restart to read it whole.
	first int64
	// done: completed or reported; later chunks of the same id (retried
	// duplicates) are ignored.
	done bool
	// dropped, when set, says why the chunks were let go before the
	// manifest (oversize, over the buffer limit, inconsistent headers).
	dropped *transferError
	// stream, when set, streams the transfer instead of buffering its
	// chunks (stream.go).
	stream *streamState
}

// assembler reassembles chunked transfers. Not safe for concurrent use.
type assembler struct {
	pending map[pendingKey]*transfer
	// maxWhole bounds one transfer's total size; bigger ones are dropped as
	// rules.Oversize before they are buffered.
	maxWhole int64
	// limit bounds the bytes buffered over all transfers; a chunk that
	// would exceed it drops its transfer as rules.Incomplete.
	limit    int64
	buffered int64
	// newSink, when set, streams the transfers that start (stream.go);
	// peak is the most bytes held at once.
	newSink func() updatestream.Sink
	peak    int64
	// ended remembers the last transfer ids of each sender that were
	// completed, dropped or superseded. A chunk of one of them is a
	// retried duplicate or a replay of a genuine old chunk (whose MAC
	// verifies): it must not supersede the sender's transfer in progress.
	ended map[pendingKey][]string
}

// Bounds on the remembered ended transfers: per sender, and senders in all
// (past it the memory starts over: without tokens anyone can invent
// senders).
const (
	endedPerSender = 8
	endedSenders   = 1 << 16
)

func newAssembler(maxWhole, limit int64) *assembler {
	return &assembler{pending: map[pendingKey]*transfer{}, maxWhole: maxWhole, limit: limit, ended: map[pendingKey][]string{}}
}

// end remembers that transfer id of pk is over.
func (a *assembler) end(pk pendingKey, id string) {
	ids := a.ended[pk]
	if slices.Contains(ids, id) {
		return
	}
	if len(ids) >= endedPerSender {
		ids = ids[1:]
	} else if ids == nil && len(a.ended) >= endedSenders {
		clear(a.ended)
	}
	a.ended[pk] = append(ids, id)
}

// parseChunk reads a chunk record's headers.
func parseChunk(msg *kgo.Record) (id string, index, count int, total int64, err error) {
	id = string(header(msg, headerTransfer))
	f := strings.Split(string(header(msg, headerChunk)), "/")
	if id == "" || len(f) != 3 {
		return "", 0, 0, 0, fmt.Errorf("chunk headers %q", header(msg, headerChunk))
	}
	index, e1 := strconv.Atoi(f[0])
	count, e2 := strconv.Atoi(f[1])
	total, e3 := strconv.ParseInt(f[2], 10, 64)
	if e1 != nil || e2 != nil || e3 != nil || count < 1 || count > maxChunks || index < 0 || index >= count || total < 0 {
		return "", 0, 0, 0, fmt.Errorf("chunk header %q", header(msg, headerChunk))
	}
	return id, index, count, total, nil
}

// free releases t's chunks.
func (a *assembler) free(t *transfer) {
	a.buffered -= t.bytes
	t.chunks, t.bytes = nil, 0
}

// drop lets t's chunks go and remembers why.
func (a *assembler) drop(t *transfer, e *transferError) {
	a.free(t)
	if t.dropped == nil {
		t.dropped = e
	}
}

// add takes a chunk record, grouped under key. It returns the transfers it
// dropped: one of the same key left unfinished, which this chunk's newer
// transfer supersedes.
func (a *assembler) add(msg *kgo.Record, key string) []*transferError {
	tp := msg
	pk := pendingKey{tp.Partition, key}
	id, index, count, total, err := parseChunk(msg)
	if err != nil {
		return []*transferError{{Reason: rules.Undecodable, Detail: fmt.Sprintf("offset %d: %v", tp.Offset, err), Key: key, Need: -1}}
	}
	var out []*transferError
	t := a.pending[pk]
	if (t == nil || t.id != id) && slices.Contains(a.ended[pk], id) {
		return nil
	}
	if t != nil && t.id != id {
		if !t.done {
			out = append(out, a.superseded(t, key))
		}
		a.end(pk, t.id)
		a.free(t)
		t = nil
	}
	if t == nil {
		t = &transfer{id: id, count: count, total: total, chunks: make([][]byte, count), first: tp.Offset}
		a.pending[pk] = t
		if a.newSink != nil && total <= a.maxWhole {
			t.stream = newStreamState(a.newSink(), count)
		}
		if total > a.maxWhole {
			a.drop(t, &transferError{Reason: rules.Oversize, Detail: fmt.Sprintf("transfer %s of %d bytes, over the limit %d", id, total, a.maxWhole), Key: key, Need: -1})
		}
	}
	t.first = min(t.first, tp.Offset)
	switch {
	case t.done || t.dropped != nil:
		return out
	case count != t.count || total != t.total:
		a.drop(t, &transferError{Reason: rules.Undecodable, Detail: fmt.Sprintf("transfer %s: chunk headers disagree (%d/%d/%d after %d chunks of %d bytes)", id, index, count, total, t.count, t.total), Key: key, Need: -1})
		return out
	case t.stream != nil:
		t.stream.take(index, msg)
		return out
	case a.buffered+int64(len(msg.Value))-int64(len(t.chunks[index])) > a.limit:
		a.drop(t, &transferError{Reason: rules.Incomplete, Detail: fmt.Sprintf("transfer %s dropped: chunks buffered over the limit of %d bytes", id, a.limit), Key: key, Need: -1})
		return out
	}
	a.buffered += int64(len(msg.Value)) - int64(len(t.chunks[index]))
	t.bytes += int64(len(msg.Value)) - int64(len(t.chunks[index]))
	t.chunks[index] = msg.Value
	return out
}

func (a *assembler) superseded(t *transfer, key string) *transferError {
	if t.dropped != nil {
		return t.dropped
	}
	have := 0
	for i, c := range t.chunks {
		if c != nil || (t.stream != nil && t.stream.offsets[i] >= 0) {
			have++
		}
	}
	return &transferError{Reason: rules.Incomplete, Detail: fmt.Sprintf("transfer %s has %d of %d chunks and a newer transfer started", t.id, have, t.count), Key: key, Need: -1}
}

// complete takes a manifest record, grouped under key, and returns the
// reassembled whole, or why the transfer is dropped. Dropped, too, is an
// unfinished transfer of the same key that the manifest does not close.
// A repeated manifest of a finished transfer returns neither.
func (a *assembler) complete(msg *kgo.Record, key string) ([]byte, []*transferError) {
	tp := msg
	pk := pendingKey{tp.Partition, key}
	man := &fdxv1.TransferManifest{}
	if err := proto.Unmarshal(msg.Value, man); err != nil {
		return nil, []*transferError{{Reason: rules.Undecodable, Detail: fmt.Sprintf("manifest at offset %d: %v", tp.Offset, err), Key: key, Need: -1}}
	}
	n := int(man.GetChunkCount())
	fail := func(r rules.Reason, format string, args ...any) *transferError {
		need := int64(-1)
		if r == rules.Incomplete && n > 0 && n <= maxChunks {
			need = tp.Offset - int64(n)
		}
		return &transferError{Reason: r, Detail: fmt.Sprintf("transfer %s: ", man.GetTransferId()) + fmt.Sprintf(format, args...), Key: key, Need: need}
	}
	var out []*transferError
	t := a.pending[pk]
	if (t == nil || t.id != man.GetTransferId()) && slices.Contains(a.ended[pk], man.GetTransferId()) {
		// A manifest of a transfer already over: repeated or replayed.
		return nil, nil
	}
	if t != nil && t.id != man.GetTransferId() {
		if !t.done {
			out = append(out, a.superseded(t, key))
		}
		a.end(pk, t.id)
		a.free(t)
		delete(a.pending, pk)
		t = nil
	}
	if t != nil && t.done {
		// A retried manifest of a transfer already used or reported.
		return nil, out
	}
	if t == nil {
		return nil, append(out, fail(rules.Incomplete, "manifest without chunks (%d expected)", n))
	}
	defer func() {
		a.free(t)
		t.done = true
		a.end(pk, t.id)
	}()
	if t.dropped != nil {
		return nil, append(out, t.dropped)
	}
	if n != t.count || man.GetTotalSize() != t.total || len(man.GetChunkCrc32C()) != n || len(man.GetSha256()) != sha256.Size {
		return nil, append(out, fail(rules.Checksum, "manifest (%d chunks, %d bytes) does not describe its chunks (%d, %d bytes)", n, man.GetTotalSize(), t.count, t.total))
	}
	missing := 0
	for _, c := range t.chunks {
		if c == nil {
			missing++
		}
	}
	if missing > 0 {
		return nil, append(out, fail(rules.Incomplete, "%d of %d chunks missing", missing, n))
	}
	if t.bytes != t.total {
		return nil, append(out, fail(rules.Checksum, "chunks hold %d bytes, manifest says %d", t.bytes, t.total))
	}
	whole := make([]byte, 0, t.total)
	for i, c := range t.chunks {
		if crc32.Checksum(c, castagnoli) != man.GetChunkCrc32C()[i] {
			return nil, append(out, fail(rules.Checksum, "chunk %d of %d does not match its CRC-32C", i, n))
		}
		whole = append(whole, c...)
	}
	if sum := sha256.Sum256(whole); !bytes.Equal(sum[:], man.GetSha256()) {
		return nil, append(out, fail(rules.Checksum, "SHA-256 of the reassembled %d bytes does not match", len(whole)))
	}
	return whole, out
}

// firstPending returns the lowest offset of an unfinished transfer's chunks
// in partition, if any: the aggregator commits no further than that, so
// that a restart reads the transfer whole again.
func (a *assembler) firstPending(partition int32) (int64, bool) {
	var first int64
	found := false
	for pk, t := range a.pending {
		if pk.partition != partition || t.done || t.dropped != nil {
			continue
		}
		if !found || t.first < first {
			first, found = t.first, true
		}
	}
	return first, found
}

// forget drops every transfer of partition (nil: of all partitions)
// without reporting them: their records will be read again from the
// committed offset, by us or by the partition's next owner.
func (a *assembler) forget(partition *int32) {
	for pk, t := range a.pending {
		if partition == nil || pk.partition == *partition {
			a.free(t)
			delete(a.pending, pk)
		}
	}
	// Those records come again and must not look like replays.
	for pk := range a.ended {
		if partition == nil || pk.partition == *partition {
			delete(a.ended, pk)
		}
	}
}

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
// that had just parked a long poll past the end, which librdkafka lets
// finish (fetch.wait.max.ms, 500 ms for clients) before it fetches again.
// Manifests without the list (models published before it, by older
// aggregators) are read as before: chunks, then the manifest.

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
	n, size, total := int64(man.GetChunkCount()), int64(man.GetChunkSize()), man.GetTotalSize()
	return n >= 1 && n <= maxChunks && size > 0 && total > 0 && total <= maxTransferBytes &&
		(n-1)*size < total && total <= n*size &&
		int64(len(man.GetChunkPartitions())) == n && int64(len(man.GetChunkOffsets())) == n &&
		int64(len(man.GetChunkCrc32C())) == n && len(man.GetSha256()) == sha256.Size
}

// wholeBuilder reassembles a transfer whose manifest is known, chunk by
// chunk in any order, into one buffer of the manifest's total size: every
// chunk is checked against its CRC-32C and copied once, to its place, and
// a goroutine hashes the whole's filled prefix meanwhile, so that the
// SHA-256 of a 100 MB model, about 60 ms on one core, overlaps the fetch
// instead of following it. The whole is allocated before any chunk is
// checked: listingConsistent bounds it by the manifest, and
// maxTransferBytes bounds that. Where models are signed the manifest is
// the aggregator's; where they are not, a forged one can make a reader
// allocate up to 2 GiB once, freed when its chunks fail to match.
type wholeBuilder struct {
	man   *fdxv1.TransferManifest
	size  int
	whole []byte
	have  []bool
	got   int
	// next is the first chunk not yet handed to the hasher, which reads
	// feed in chunk order and sends the digest on sum.
	next int
	feed chan []byte
	sum  chan []byte
	shut bool
}

// newWholeBuilder starts reassembling the transfer man describes, which
// must be listingConsistent. Call close when done.
func newWholeBuilder(man *fdxv1.TransferManifest) *wholeBuilder {
	n := int(man.GetChunkCount())
	w := &wholeBuilder{man: man, size: int(man.GetChunkSize()), whole: make([]byte, man.GetTotalSize()),
		have: make([]bool, n), feed: make(chan []byte, n), sum: make(chan []byte, 1)}
	go func() {
		h := sha256.New()
		for b := range w.feed {
			h.Write(b)
		}
		w.sum <- h.Sum(nil)
	}()
	return w
}

// part is chunk i's place in the whole.
func (w *wholeBuilder) part(i int) []byte {
	return w.whole[i*w.size : min((i+1)*w.size, len(w.whole))]
}

func (w *wholeBuilder) has(i int) bool { return w.have[i] }
func (w *wholeBuilder) complete() bool { return w.got == len(w.have) }

// put checks chunk i against the manifest and copies it to its place; a
// repeated chunk is ignored.
func (w *wholeBuilder) put(i int, chunk []byte) error {
	if w.have[i] {
		return nil
	}
	dst := w.part(i)
	if len(chunk) != len(dst) {
		return fmt.Errorf("chunk %d of %d holds %d bytes, the manifest says %d", i, len(w.have), len(chunk), len(dst))
	}
	if crc32.Checksum(chunk, castagnoli) != w.man.GetChunkCrc32C()[i] {
		return fmt.Errorf("chunk %d of %d does not match its CRC-32C", i, len(w.have))
	}
	copy(dst, chunk)
	w.have[i] = true
	w.got++
	for w.next < len(w.have) && w.have[w.next] {
		w.feed <- w.part(w.next) // never blocks: feed holds every chunk
		w.next++
	}
	return nil
}

// finish waits for the hash of the complete whole and returns the whole if
// it matches the manifest's SHA-256.
func (w *wholeBuilder) finish() ([]byte, error) {
	w.close()
	if sum := <-w.sum; !bytes.Equal(sum, w.man.GetSha256()) {
		return nil, fmt.Errorf("SHA-256 of the reassembled %d bytes does not match", len(w.whole))
	}
	return w.whole, nil
}

// close ends the hasher; the whole is not used unless finish returned it.
func (w *wholeBuilder) close() {
	if !w.shut {
		w.shut = true
		close(w.feed)
	}
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
	// A chunk past a partition's end is never coming: say so now rather
	// than wait out spreadTimeout. Partition 0 holds records up to the
	// manifest's offset at least: no need to ask for it (one round trip
	// less for a new client of a one-partition model).
	check := false
	for p := range from {
		check = check || p != 0 || last[p] >= manifestAt
	}
	if check {
		ends, err := kadm.NewClient(r.spreadC).ListEndOffsets(ctx, r.topic)
		if err != nil {
			return fmt.Errorf("partition ends: %w", err)
		}
		for p := range from {
			end, ok := ends.Lookup(r.topic, p)
			switch {
			case !ok:
				return fmt.Errorf("partition %d: no such partition", p)
			case end.Err != nil:
				return fmt.Errorf("partition %d: %w", p, end.Err)
			case last[p] >= end.Offset:
				return fmt.Errorf("a chunk at offset %d of partition %d, which ends at %d", last[p], p, end.Offset)
			}
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
		var failed error
		fs.EachError(func(_ string, p int32, err error) {
			if ctx.Err() == nil && (p < 0 || denied(err) != nil) {
				failed = err
			}
		})
		if failed != nil {
			return fmt.Errorf("read: %w", failed)
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
