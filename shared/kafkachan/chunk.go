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
// the manifest follows its chunks even when the producer retries out of
// order. A reader keeps the chunks of one transfer per (partition, key)
// until its manifest arrives, checks every chunk and the whole (package
// transfer, as the gRPC channel does), and uses the whole only if all
// match; a transfer that lacks chunks (its sender died, or
// a newer transfer of the same key started first) is dropped as
// rules.Incomplete, one that does not match as rules.Checksum. (An
// aggregator whose round folds updates piece by piece keeps no update
// chunks at all: stream.go.)
//
// The model's signature and the update's MAC are computed over the
// manifest, which carries the whole's SHA-256: they authenticate the whole.

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
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
// vouches for them.
const (
	maxTransferBytes = transfer.MaxBytes
	maxChunks        = transfer.MaxChunks
)

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
	man, err := transfer.Split(whole, chunkBytes)
	if err != nil {
		return nil, nil, err
	}
	id := []byte(man.GetTransferId())
	n := int(man.GetChunkCount())
	chunks := make([]*kgo.Record, n)
	for i := range n {
		chunks[i] = &kgo.Record{
			Topic:     topic,
			Partition: partition,
			Key:       key,
			Value:     transfer.Chunk(whole, i, chunkBytes),
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

// rejected is a transfer check's rejection as a transferError of key.
func rejected(rej *rules.Rejection, key string) *transferError {
	return &transferError{Reason: rej.Reason, Detail: rej.Detail, Key: key, Need: -1}
}

// rejection is e as an update rejection.
func (e *transferError) rejection() *rules.Rejection {
	return &rules.Rejection{Reason: e.Reason, Detail: e.Detail}
}
