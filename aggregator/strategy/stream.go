package strategy

import (
	"fmt"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
)

// Fold folds one update's values into a round, piece by piece (see
// accumulator.StreamAdd).
type Fold interface {
	Fold(tensor, off int, vals []float32) error
	End() error
	// Abort gives up a fold that cannot be completed (its values could
	// not be read): part of the update may be in the round, which is
	// broken from then on. It returns the round's error.
	Abort(cause error) error
}

// StreamRound is a Round that can fold an update piece by piece: the mean
// strategies (FedAvg, FedProx and the server optimizers), whose rounds
// keep only an accumulator.Accumulator. Robust and DP strategies see each update whole
// (sorting, clipping) and do not stream.
type StreamRound interface {
	Round
	// Streams reports whether BeginStream works for this round.
	Streams() bool
	// BeginStream starts folding a validated update of numExamples
	// examples. If the fold fails once begun, the round is broken: Add,
	// BeginStream and Finish fail from then on with accumulator.ErrPartialFold.
	BeginStream(clientID string, numExamples int64) (Fold, error)
}

// accumulating is a round implementation whose whole state is an
// accumulator.Accumulator fed by Add(NumExamples, Params).
type accumulating interface {
	accumulator() *accumulator.Accumulator
}

func (m meanRound) accumulator() *accumulator.Accumulator { return m.acc }
func (r *optRound) accumulator() *accumulator.Accumulator { return r.acc }

var _ StreamRound = (*round)(nil)

// Streams implements StreamRound.
func (r *round) Streams() bool {
	_, ok := r.impl.(accumulating)
	return ok && !r.done
}

// BeginStream implements StreamRound.
func (r *round) BeginStream(clientID string, numExamples int64) (Fold, error) {
	if r.done {
		return nil, fmt.Errorf("strategy %s: update from %q: %w", r.name, clientID, ErrRoundFinished)
	}
	acc, ok := r.impl.(accumulating)
	if !ok {
		return nil, fmt.Errorf("strategy %s does not fold updates piece by piece", r.name)
	}
	s, err := acc.accumulator().BeginStream(numExamples)
	if err != nil {
		return nil, fmt.Errorf("strategy %s: update from %q: %w", r.name, clientID, err)
	}
	return &roundFold{r: r, s: s, client: clientID}, nil
}

// roundFold counts a streamed update in its round once it ends, and breaks
// the round if it fails.
type roundFold struct {
	r      *round
	s      *accumulator.StreamAdd
	client string
}

func (f *roundFold) Fold(t, off int, vals []float32) error {
	if err := f.s.Fold(t, off, vals); err != nil {
		return f.fail(err)
	}
	return nil
}

func (f *roundFold) End() error {
	if err := f.s.End(); err != nil {
		return f.fail(err)
	}
	f.r.count++
	return nil
}

func (f *roundFold) Abort(cause error) error {
	return f.fail(fmt.Errorf("%w: %w", accumulator.ErrPartialFold, cause))
}

func (f *roundFold) fail(err error) error {
	err = fmt.Errorf("strategy %s: update from %q: %w", f.r.name, f.client, err)
	f.r.impl = broken{err}
	return err
}

// broken is a round a streamed update left half folded.
type broken struct{ err error }

func (b broken) add(Update) error             { return b.err }
func (b broken) finish() ([][]float32, error) { return nil, b.err }
