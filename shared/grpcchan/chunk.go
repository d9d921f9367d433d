package grpcchan

// Chunked transfer over gRPC. A serialized model or update larger than the
// chunk size (1 MiB by default) travels on a stream of fdx.v1.TransferPart
// messages: the manifest (fdx.v1.TransferManifest: total size, chunk count,
// SHA-256 of the whole, CRC-32C per chunk, the same manifest as on Kafka),
// then the chunks in order. No message is then larger than a chunk, so the
// gRPC message-size limit stays where it is whatever the model's size.
//
// The reader checks each chunk's CRC-32C as it arrives and the whole's
// SHA-256 at the end (package transfer, as the Kafka channel does), and decodes the whole only if everything matches; a
// stream that ends early is rules.Incomplete, a mismatch rules.Checksum.

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
)

// DefaultChunkBytes is the chunk size, and the size above which an update
// is sent in chunks, when the options leave it 0.
const DefaultChunkBytes = 1 << 20

const (
	// maxTransferBytes is protobuf's bound on one message.
	maxTransferBytes = transfer.MaxBytes
	// partOverhead is what a TransferPart adds to its chunk (tag, length),
	// with room to spare.
	partOverhead = 64
	// initialCap bounds what a reader allocates before the bytes arrive:
	// a manifest's total size alone does not make it allocate 2 GiB.
	initialCap = 64 << 20
)

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
	man, err := transfer.Split(whole, chunkBytes)
	if err != nil {
		return nil, err
	}
	return &encoded{whole: whole, man: man}, nil
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
		part := transfer.Chunk(x.whole, i, int(x.man.GetChunkSize()))
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
	v, rej := transfer.NewVerifier(man, maxWhole)
	if rej != nil {
		return nil, rej, nil
	}
	n, id := int(man.GetChunkCount()), man.GetTransferId()
	whole := make([]byte, 0, min(man.GetTotalSize(), initialCap))
	for i := range n {
		p, err := recv()
		if errors.Is(err, io.EOF) {
			return nil, rules.Reject(rules.Incomplete, "transfer %s: stream ended after %d of %d chunks", id, i, n), nil
		}
		if err != nil {
			return nil, nil, err
		}
		if _, ok := p.GetPart().(*fdxv1.TransferPart_Chunk); !ok {
			return nil, rules.Reject(rules.Checksum, "transfer %s: part %d of %d is not a chunk", id, i, n), nil
		}
		if rej := v.Write(p.GetChunk()); rej != nil {
			return nil, rej, nil
		}
		whole = append(whole, p.GetChunk()...)
	}
	if rej := v.Finish(); rej != nil {
		return nil, rej, nil
	}
	return whole, nil, nil
}
