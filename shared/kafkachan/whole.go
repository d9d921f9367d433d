package kafkachan

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
)

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
	if rej := transfer.CheckChunk(w.man, i, chunk); rej != nil {
		return rej
	}
	copy(w.part(i), chunk)
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
