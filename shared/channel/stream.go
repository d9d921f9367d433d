package channel

import (
	"context"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// Streamer is a Server that can deliver a large (chunked) update without
// ever holding it whole: the Kafka channel, whose broker keeps the chunks,
// so they can be read again. The gRPC channel receives a streamed update
// into memory whole and does not implement it.
type Streamer interface {
	// StreamUpdates makes the server hand the values of every chunked
	// update whose transfer starts from now on to a sink newSink returns,
	// as its chunks arrive, keeping none of their bytes; such an update is
	// delivered with a Stream. nil turns streaming off: updates are then
	// delivered whole. An update the parser cannot follow (see package
	// updatestream) is delivered whole too.
	StreamUpdates(newSink func() updatestream.Sink)
}

// Stream is an update the server did not hold whole. The Delivery's Update
// then carries every field but Params; the transfer was complete and its
// checksums and MAC verified before the delivery was made.
type Stream struct {
	// Sink is the sink that saw every value of the update (pass 1).
	Sink updatestream.Sink
	// Replay reads the update's values again, chunk by chunk, into sink
	// (pass 2), checking every chunk and the whole against the checksums
	// the MAC covers. On error the values sink took are untrustworthy:
	// whatever it folded must be thrown away.
	Replay func(ctx context.Context, sink updatestream.Sink) error
	// Whole reads the update again and decodes it whole, for a caller
	// that cannot use Sink's figures (they belong to another round).
	Whole func(ctx context.Context) (*fdxv1.Update, error)
}
