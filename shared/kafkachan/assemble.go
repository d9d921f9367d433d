package kafkachan

// Reassembling chunked transfers read from a partition, grouped by sender.

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/transfer"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// pendingKey groups the chunks of one sender: its partition and record key.
type pendingKey struct {
	partition int32
	key       string
}

// inflight is one transfer being reassembled.
type inflight struct {
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
	pending map[pendingKey]*inflight
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
}

func newAssembler(maxWhole, limit int64) *assembler {
	return &assembler{pending: map[pendingKey]*inflight{}, maxWhole: maxWhole, limit: limit}
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
func (a *assembler) free(t *inflight) {
	a.buffered -= t.bytes
	t.chunks, t.bytes = nil, 0
}

// drop lets t's chunks go and remembers why.
func (a *assembler) drop(t *inflight, e *transferError) {
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
	if t != nil && t.id != id {
		if !t.done {
			out = append(out, a.superseded(t, key))
		}
		a.free(t)
		t = nil
	}
	if t == nil {
		t = &inflight{id: id, count: count, total: total, chunks: make([][]byte, count), first: tp.Offset}
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

func (a *assembler) superseded(t *inflight, key string) *transferError {
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
	if t != nil && t.id != man.GetTransferId() {
		if !t.done {
			out = append(out, a.superseded(t, key))
		}
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
	}()
	if t.dropped != nil {
		return nil, append(out, t.dropped)
	}
	if n != t.count || man.GetTotalSize() != t.total {
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
	v, rej := transfer.NewVerifier(man, a.maxWhole)
	if rej != nil {
		return nil, append(out, rejected(rej, key))
	}
	whole := make([]byte, 0, t.total)
	for _, c := range t.chunks {
		if rej := v.Write(c); rej != nil {
			return nil, append(out, rejected(rej, key))
		}
		whole = append(whole, c...)
	}
	if rej := v.Finish(); rej != nil {
		return nil, append(out, rejected(rej, key))
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
}
