// Package transfer splits a serialized message into chunks described by a
// manifest (fdx.v1.TransferManifest: total size, chunk count and size,
// CRC-32C of each chunk, SHA-256 of the whole) and checks chunks against
// it, one at a time as they arrive. Both channels move large models and
// updates this way, the Kafka channel as records and the gRPC channel as
// stream messages; this package is the one place that says what a
// consistent manifest is and when a transfer is whole.
//
// Checks return a *rules.Rejection: rules.Oversize for a transfer over the
// reader's limit, rules.Undecodable for a manifest that cannot describe a
// whole, rules.Incomplete for missing chunks, rules.Checksum for a chunk or
// whole that does not match.
package transfer

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Bounds on what a reader accepts before the chunks vouch for a manifest:
// a protobuf message is at most 2 GiB, and the chunk count bounds the
// checksum list and the index slices a reader allocates.
const (
	MaxBytes  = 2<<30 - 1
	MaxChunks = 1 << 16
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C is a chunk's checksum as manifests carry it.
func CRC32C(chunk []byte) uint32 { return crc32.Checksum(chunk, castagnoli) }

// Split describes whole in chunks of chunkBytes: a manifest with a fresh
// random transfer id. Chunk(whole, i, chunkBytes) is chunk i.
func Split(whole []byte, chunkBytes int) (*fdxv1.TransferManifest, error) {
	if chunkBytes < 1 {
		return nil, fmt.Errorf("transfer: chunk size %d", chunkBytes)
	}
	n := max(1, (len(whole)+chunkBytes-1)/chunkBytes)
	if n > MaxChunks || len(whole) > MaxBytes {
		return nil, fmt.Errorf("transfer of %d bytes needs %d chunks of %d, over %d", len(whole), n, chunkBytes, MaxChunks)
	}
	var idb [12]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("transfer id: %w", err)
	}
	sum := sha256.Sum256(whole)
	man := &fdxv1.TransferManifest{
		TransferId: hex.EncodeToString(idb[:]), TotalSize: int64(len(whole)), ChunkCount: int32(n),
		ChunkSize: int32(chunkBytes), Sha256: sum[:], ChunkCrc32C: make([]uint32, n),
	}
	for i := range n {
		man.ChunkCrc32C[i] = CRC32C(Chunk(whole, i, chunkBytes))
	}
	return man, nil
}

// Chunk is chunk i of whole in chunks of chunkBytes.
func Chunk(whole []byte, i, chunkBytes int) []byte {
	return whole[min(i*chunkBytes, len(whole)):min((i+1)*chunkBytes, len(whole))]
}

// CheckManifest checks that man describes a whole of at most maxWhole
// bytes that its chunk count and size make up, with a checksum per chunk
// and a SHA-256: what a reader needs before it places or checks a chunk.
func CheckManifest(man *fdxv1.TransferManifest, maxWhole int64) *rules.Rejection {
	n, size, total := int64(man.GetChunkCount()), int64(man.GetChunkSize()), man.GetTotalSize()
	id := man.GetTransferId()
	switch {
	case total > min(maxWhole, MaxBytes):
		return rules.Reject(rules.Oversize, "transfer %s of %d bytes, over the limit %d", id, total, min(maxWhole, MaxBytes))
	case n < 1 || n > MaxChunks || size < 1 || total < 0 || n != max(1, (total+size-1)/size) ||
		int64(len(man.GetChunkCrc32C())) != n || len(man.GetSha256()) != sha256.Size:
		return rules.Reject(rules.Undecodable, "transfer %s: inconsistent manifest (%d chunks of %d bytes, %d in all)", id, n, size, total)
	}
	return nil
}

// ChunkLen is the length of chunk i of the whole man describes.
func ChunkLen(man *fdxv1.TransferManifest, i int) int64 {
	size := int64(man.GetChunkSize())
	return max(0, min(size, man.GetTotalSize()-int64(i)*size))
}

// CheckChunk checks chunk i's length and CRC-32C against man, which
// CheckManifest accepted.
func CheckChunk(man *fdxv1.TransferManifest, i int, chunk []byte) *rules.Rejection {
	n := int(man.GetChunkCount())
	if want := ChunkLen(man, i); int64(len(chunk)) != want {
		return rules.Reject(rules.Checksum, "transfer %s: chunk %d of %d holds %d bytes, the manifest says %d", man.GetTransferId(), i, n, len(chunk), want)
	}
	if CRC32C(chunk) != man.GetChunkCrc32C()[i] {
		return rules.Reject(rules.Checksum, "transfer %s: chunk %d of %d does not match its CRC-32C", man.GetTransferId(), i, n)
	}
	return nil
}

// Verifier checks the chunks of a transfer whose manifest came first, in
// order, as they arrive: each chunk against its length and CRC-32C, and
// the whole's SHA-256 once the last is in, without holding the chunks.
type Verifier struct {
	man  *fdxv1.TransferManifest
	next int
	sum  hash.Hash
}

// NewVerifier checks man (see CheckManifest) and starts verifying its
// chunks.
func NewVerifier(man *fdxv1.TransferManifest, maxWhole int64) (*Verifier, *rules.Rejection) {
	if rej := CheckManifest(man, maxWhole); rej != nil {
		return nil, rej
	}
	return &Verifier{man: man, sum: sha256.New()}, nil
}

// Write checks the next chunk.
func (v *Verifier) Write(chunk []byte) *rules.Rejection {
	if v.next >= int(v.man.GetChunkCount()) {
		return rules.Reject(rules.Checksum, "transfer %s: more than its %d chunks", v.man.GetTransferId(), v.man.GetChunkCount())
	}
	if rej := CheckChunk(v.man, v.next, chunk); rej != nil {
		return rej
	}
	v.next++
	v.sum.Write(chunk)
	return nil
}

// Chunks is the number of chunks written and checked so far.
func (v *Verifier) Chunks() int { return v.next }

// Finish checks that every chunk came and that the whole's SHA-256 is the
// manifest's.
func (v *Verifier) Finish() *rules.Rejection {
	if n := int(v.man.GetChunkCount()); v.next < n {
		return rules.Reject(rules.Incomplete, "transfer %s: %d of %d chunks", v.man.GetTransferId(), v.next, n)
	}
	if !bytes.Equal(v.sum.Sum(nil), v.man.GetSha256()) {
		return rules.Reject(rules.Checksum, "transfer %s: SHA-256 of the reassembled %d bytes does not match", v.man.GetTransferId(), v.man.GetTotalSize())
	}
	return nil
}

// Digest checks the chunks of a transfer whose manifest comes last, as
// Kafka's do: it takes each chunk once as it arrives, in any order,
// keeping its CRC-32C and, while they arrive in order, the running
// SHA-256, and compares them with the manifest when it comes.
type Digest struct {
	crcs  []uint32
	have  []bool
	got   int
	bytes int64
	next  int
	sum   hash.Hash
}

// NewDigest starts a digest of count chunks (at most MaxChunks).
func NewDigest(count int) *Digest {
	return &Digest{crcs: make([]uint32, count), have: make([]bool, count), sum: sha256.New()}
}

// Add takes chunk i; a repeated chunk is ignored. It reports whether the
// chunk came in order (after every chunk before it): only then does the
// running SHA-256 cover it.
func (d *Digest) Add(i int, chunk []byte) (inOrder bool) {
	if d.have[i] {
		return false
	}
	d.have[i], d.crcs[i] = true, CRC32C(chunk)
	d.got++
	d.bytes += int64(len(chunk))
	if i != d.next {
		return false
	}
	d.next++
	d.sum.Write(chunk)
	return true
}

// Has reports whether chunk i came.
func (d *Digest) Has(i int) bool { return d.have[i] }

// Chunks is the number of distinct chunks that came.
func (d *Digest) Chunks() int { return d.got }

// Check compares the chunks with man, which arrived after them: their
// count and total size, every chunk's CRC-32C, and, when all came in
// order, the whole's SHA-256. ordered reports whether the SHA-256 was
// checked; if not, the caller checks the whole it reassembles.
func (d *Digest) Check(man *fdxv1.TransferManifest) (ordered bool, rej *rules.Rejection) {
	n := len(d.crcs)
	id := man.GetTransferId()
	if int(man.GetChunkCount()) != n || len(man.GetChunkCrc32C()) != n || len(man.GetSha256()) != sha256.Size {
		return false, rules.Reject(rules.Checksum, "transfer %s: manifest (%d chunks, %d bytes) does not describe its %d chunks", id, man.GetChunkCount(), man.GetTotalSize(), n)
	}
	if d.got < n {
		return false, rules.Reject(rules.Incomplete, "transfer %s: %d of %d chunks missing", id, n-d.got, n)
	}
	if d.bytes != man.GetTotalSize() {
		return false, rules.Reject(rules.Checksum, "transfer %s: chunks hold %d bytes, manifest says %d", id, d.bytes, man.GetTotalSize())
	}
	for i, c := range d.crcs {
		if c != man.GetChunkCrc32C()[i] {
			return false, rules.Reject(rules.Checksum, "transfer %s: chunk %d of %d does not match its CRC-32C", id, i, n)
		}
	}
	if d.next < n {
		return false, nil
	}
	if !bytes.Equal(d.sum.Sum(nil), man.GetSha256()) {
		return true, rules.Reject(rules.Checksum, "transfer %s: SHA-256 of the %d bytes does not match", id, d.bytes)
	}
	return true, nil
}
