package coordinator

// Streamed updates, so that the aggregator's memory does not grow with the
// size of an update times the updates in a round. On a channel that can
// stream chunked updates (channel.Streamer: Kafka) and with a strategy that
// folds piece by piece (strategy.StreamRound: the mean strategies), a large
// update is never held whole. Pass 1 runs in the channel as the chunks arrive: a validate.Scan of
// this round gathers what the rules need. At the manifest the channel
// delivers the update's other fields; CheckStreamed applies the rules, the
// channel accepts it, and only then pass 2 reads the values again, chunk by
// chunk, into the strategy's fold. Robust and DP strategies, the
// asynchronous mode and gRPC updates keep the whole update, as before.
//
// A pass 2 that fails leaves part of an update in the round's sums, which
// cannot be taken out again: the job stops with an error and the round is
// never published. On Kafka the restarted aggregator resumes from the last
// committed round and reads the round's updates again from the committed
// offsets, so the model it publishes is the one it would have published.
// (Undoing the partial fold by exact subtraction would be possible, the sums
// being exact, but a pass 2 failure means the broker lost or changed
// records the round already accepted; continuing without them would publish
// a round that a restart could not reproduce.)

import (
	"context"
	"fmt"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/updatestream"
)

// streamUpdates tells a streaming channel whether, and with which round's
// scans, to stream the updates that start arriving now.
func (c *Coordinator) streamUpdates(st *roundState) {
	sc, ok := c.ch.(channel.Streamer)
	if !ok {
		return
	}
	sr, ok := st.agg.(strategy.StreamRound)
	if !ok || !sr.Streams() || c.cfg.HoldUpdates || c.cfg.Async != nil {
		sc.StreamUpdates(nil)
		return
	}
	check := st.in.Check()
	sc.StreamUpdates(func() updatestream.Sink { return check.NewScan() })
}

// foldStreamed is pass 2: the update's values, read again, into the round.
func (c *Coordinator) foldStreamed(ctx context.Context, st *roundState, sr strategy.StreamRound, d channel.Delivery) error {
	u := d.Update
	f, err := sr.BeginStream(u.GetClientId(), u.GetNumExamples())
	if err != nil {
		return err
	}
	sink := &foldSink{fold: f, delta: u.GetIsDelta(), global: st.in.Check().Global()}
	if err := d.Stream.Replay(ctx, sink); err != nil {
		return f.Abort(err)
	}
	return f.End()
}

// foldSink hands validated values to a strategy's fold; a delta becomes
// local weights as validate does (global plus delta, in float32).
type foldSink struct {
	fold   strategy.Fold
	delta  bool
	global [][]float32
}

func (s *foldSink) Tensor(int, string, []int64, fdxv1.DType, int) error { return nil }

func (s *foldSink) Values(i, off int, vals []float32) error {
	if s.delta {
		if i >= len(s.global) || off+len(vals) > len(s.global[i]) {
			return fmt.Errorf("values of tensor %d at %d outside the model", i, off)
		}
		g := s.global[i][off:]
		for j := range vals {
			vals[j] += g[j]
		}
	}
	return s.fold.Fold(i, off, vals)
}
