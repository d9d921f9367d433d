package grpcchan

// Chunked transfer over gRPC. A serialized model or update larger than the
// chunk size (1 MiB by default) travels on a stream of fdx.v1.TransferPart
// messages: the manifest (fdx.v1.TransferManifest: total size, chunk count,
// SHA-256 of the whole, CRC-32C per chunk, the same manifest as on Kafka),
// then the chunks in order. No message is then larger than a chunk, so the
// gRPC message-size limit stays where it is whatever the model's size.
//
// The reader checks each chunk's CRC-32C as it arrives and the whole's
// SHA-256 at the end, and decodes the whole only if everything matches; a
// stream that ends early is rules.Incomplete, a mismatch rules.Checksum.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// DefaultChunkBytes is the chunk size, and the size above which an update
// is sent in chunks, when the options leave it 0.
const DefaultChunkBytes = 1 << 20

const (
	// maxTransferBytes is protobuf's bound on one message.
	maxTransferBytes = 2<<30 - 1
	// maxChunks bounds the checksum list a reader accepts.
	maxChunks = 1 << 16
	// partOverhead is what a TransferPart adds to its chunk (tag, length),
	// with room to spare.
	partOverhead = 64
	// initialCap bounds what a reader allocates before the bytes arrive:
	// a manifest's total size alone does not make it allocate 2 GiB.
	initialCap = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// chunkSize is the chunk size for options asking for chunk bytes under a
// message limit of maxMsg: a chunk and its framing always fit one message.
func chunkSize(chunk, maxMsg int) (int, error) {
	if chunk <= 0 {
		chunk = DefaultChunkBytes
	}
	chunk = min(chunk, maxMsg-partOverhead)
	if chunk < 1024 {
		return 0, fmt.Errorf("grpc: message limit of %d bytes leaves no room for chunks", maxMsg)
	}
	return chunk, nil
}

// encoded is a message serialized for a chunked transfer.
type encoded struct {
	whole []byte
	man   *fdxv1.TransferManifest
}

// encode serializes m and describes it in chunks of chunkBytes.
func encode(m proto.Message, chunkBytes int) (*encoded, error) {
	whole, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode for transfer: %w", err)
	}
	var idb [12]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("transfer id: %w", err)
	}
	n := max(1, (len(whole)+chunkBytes-1)/chunkBytes)
	if n > maxChunks {
		return nil, fmt.Errorf("transfer of %d bytes needs %d chunks of %d, over %d", len(whole), n, chunkBytes, maxChunks)
	}
	sum := sha256.Sum256(whole)
	man := &fdxv1.TransferManifest{
		TransferId: hex.EncodeToString(idb[:]), TotalSize: int64(len(whole)), ChunkCount: int32(n),
		ChunkSize: int32(chunkBytes), Sha256: sum[:], ChunkCrc32C: make([]uint32, n),
	}
	for i := range n {
		man.ChunkCrc32C[i] = crc32.Checksum(chunkAt(whole, i, chunkBytes), castagnoli)
	}
	return &encoded{whole: whole, man: man}, nil
}

// chunkAt is chunk i of whole.
func chunkAt(whole []byte, i, chunkBytes int) []byte {
	return whole[min(i*chunkBytes, len(whole)):min((i+1)*chunkBytes, len(whole))]
}

// send writes the manifest, then the chunks, to a stream; a message of
// one chunk goes whole, as the only part.
func (x *encoded) send(send func(*fdxv1.TransferPart) error) error {
	if x.man.GetChunkCount() == 1 {
		return send(&fdxv1.TransferPart{Part: &fdxv1.TransferPart_Whole{Whole: x.whole}})
	}
	if err := send(&fdxv1.TransferPart{Part: &fdxv1.TransferPart_Manifest{Manifest: x.man}}); err != nil {
		return err
	}
	for i := range int(x.man.GetChunkCount()) {
		part := chunkAt(x.whole, i, int(x.man.GetChunkSize()))
		if err := send(&fdxv1.TransferPart{Part: &fdxv1.TransferPart_Chunk{Chunk: part}}); err != nil {
			return err
		}
	}
	return nil
}

// receive reads one transfer from a stream and returns the verified whole.
// A transfer that is refused (too large, short, corrupt) returns a
// rejection; a broken stream its error. maxWhole bounds the whole's size.
func receive(recv func() (*fdxv1.TransferPart, error), maxWhole int64) ([]byte, *rules.Rejection, error) {
	first, err := recv()
	if errors.Is(err, io.EOF) {
		return nil, rules.Reject(rules.Incomplete, "stream ended before the manifest"), nil
	}
	if err != nil {
		return nil, nil, err
	}
	if w, ok := first.GetPart().(*fdxv1.TransferPart_Whole); ok {
		if int64(len(w.Whole)) > maxWhole {
			return nil, rules.Reject(rules.Oversize, "message of %d bytes, over the limit %d", len(w.Whole), maxWhole), nil
		}
		return w.Whole, nil, nil
	}
	man := first.GetManifest()
	if man == nil {
		return nil, rules.Reject(rules.Undecodable, "transfer does not start with a manifest"), nil
	}
	n, size, total := int(man.GetChunkCount()), int64(man.GetChunkSize()), man.GetTotalSize()
	id := man.GetTransferId()
	switch {
	case total > maxWhole:
		return nil, rules.Reject(rules.Oversize, "transfer %s of %d bytes, over the limit %d", id, total, maxWhole), nil
	case n < 1 || n > maxChunks || size < 1 || total < 0 || int64(n) != max(1, (total+size-1)/size) ||
		len(man.GetChunkCrc32C()) != n || len(man.GetSha256()) != sha256.Size:
		return nil, rules.Reject(rules.Undecodable, "transfer %s: inconsistent manifest (%d chunks of %d, %d bytes)", id, n, size, total), nil
	}
	whole := make([]byte, 0, min(total, initialCap))
	for i := range n {
		p, err := recv()
		if errors.Is(err, io.EOF) {
			return nil, rules.Reject(rules.Incomplete, "transfer %s: stream ended after %d of %d chunks", id, i, n), nil
		}
		if err != nil {
			return nil, nil, err
		}
		c := p.GetChunk()
		want := min(size, total-int64(i)*size)
		if _, ok := p.GetPart().(*fdxv1.TransferPart_Chunk); !ok || int64(len(c)) != want {
			return nil, rules.Reject(rules.Checksum, "transfer %s: chunk %d of %d has %d bytes, the manifest says %d", id, i, n, len(c), want), nil
		}
		if crc32.Checksum(c, castagnoli) != man.GetChunkCrc32C()[i] {
			return nil, rules.Reject(rules.Checksum, "transfer %s: chunk %d of %d does not match its CRC-32C", id, i, n), nil
		}
		whole = append(whole, c...)
	}
	if sum := sha256.Sum256(whole); !bytes.Equal(sum[:], man.GetSha256()) {
		return nil, rules.Reject(rules.Checksum, "transfer %s: SHA-256 of the reassembled %d bytes does not match", id, len(whole)), nil
	}
	return whole, nil, nil
}
