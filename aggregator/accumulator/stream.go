package accumulator

// Folding one update piece by piece. The aggregator receives a large update
// as chunk records (package kafkachan) and, for the mean strategies, folds
// its values as it re-reads them, chunk by chunk, instead of holding the
// whole update, so that memory per update is one chunk. The result is
// bit-identical to Add's: the
// Accumulator holds exact integer sums whatever order and grouping values
// arrive in, and the stream keeps the two invariants its exactness proof
// needs (see Accumulator):
//
//   - every coordinate is folded once per weight part (weights above
//     maxPartWeight fold in parts, as in Add), and the renormalisation
//     bookkeeping counts those folds once for the whole update, at
//     BeginStream, so no coordinate's low sum takes more than renormEvery
//     folds between carries;
//   - values are folded a whole block (blockLen coordinates) at a time, as
//     Add does: the stream buffers at most one block per update, so windows
//     are chosen from the same values as in Add.
//
// Validation comes first (package validate, from the same bytes, before the
// fold begins), but the stream checks every value again, as Add does, and
// a value it refuses mid-way leaves the accumulator holding part of the
// update: unlike Add, a stream is not atomic. The round then refuses to
// finish (see strategy's round.BeginStream), so that the model is never published and
// the aggregator rebuilds the round from its last checkpoint.

import (
	"errors"
	"fmt"
)

// ErrPartialFold: a streamed update failed after part of it was folded; the
// round cannot be finished.
var ErrPartialFold = errors.New("update partly folded")

// StreamAdd folds one update into an Accumulator piece by piece: Fold with
// the values of each tensor in order, then End. No other Add, Merge or
// stream may touch the accumulator between BeginStream and End.
type StreamAdd struct {
	a      *Accumulator
	weight int64
	// parts are the weight parts each value is folded with.
	parts []uint64
	// t and next are the tensor and coordinate the next value is for.
	t, next int
	// buf holds the values of the block being filled, when a Fold call
	// ended inside a block.
	buf  []float32
	err  error
	done bool
}

// BeginStream starts folding weight × an update's values. It checks the
// weight and the term count, as Add does; values are checked as they come.
func (a *Accumulator) BeginStream(weight int64) (*StreamAdd, error) {
	if err := a.checkTerm(weight); err != nil {
		return nil, err
	}
	if a.denseWeight > denseWeightLimit-weight {
		a.spillAll()
	}
	var parts []uint64
	for w := uint64(weight); w > 0; {
		part := min(w, maxPartWeight)
		parts = append(parts, part)
		w -= part
	}
	// Add checks for a carry before each part; here all parts of every
	// coordinate fold before the next coordinate, so make room for all of
	// them now (len(parts) ≤ 4 < renormEvery).
	if a.sinceRenorm+len(parts) > renormEvery {
		a.renormalize()
	}
	a.sinceRenorm += len(parts)
	s := &StreamAdd{a: a, weight: weight, parts: parts}
	s.skipEmpty()
	return s, nil
}

// skipEmpty moves past tensors of no coordinates.
func (s *StreamAdd) skipEmpty() {
	for s.t < len(s.a.sizes) && s.next == s.a.sizes[s.t] {
		s.t, s.next = s.t+1, 0
	}
}

// Fold folds vals, the values of tensor t from coordinate off on. Tensors
// and coordinates must come in order, each exactly once. On error the
// stream is dead and the accumulator holds part of the update.
func (s *StreamAdd) Fold(t, off int, vals []float32) error {
	if s.err != nil {
		return s.err
	}
	if err := s.fold(t, off, vals); err != nil {
		s.err = fmt.Errorf("%w: %w", ErrPartialFold, err)
	}
	return s.err
}

func (s *StreamAdd) fold(t, off int, vals []float32) error {
	a := s.a
	if s.done {
		return errors.New("stream already ended")
	}
	if t != s.t || off != s.next || t >= len(a.sizes) || len(vals) > a.sizes[t]-off {
		return fmt.Errorf("%w: values for tensor %d at %d (%d of them), expected tensor %d at %d", ErrShape, t, off, len(vals), s.t, s.next)
	}
	for len(vals) > 0 {
		bi := a.tensorBlocks[t] + s.next/blockLen
		b := &a.blocks[bi]
		inBlock := s.next % blockLen
		if inBlock == 0 && len(vals) >= b.n {
			// A whole block: fold it straight from vals.
			if err := s.foldBlock(b, vals[:b.n]); err != nil {
				return err
			}
			vals, s.next = vals[b.n:], s.next+b.n
			continue
		}
		k := min(b.n-inBlock, len(vals))
		if s.buf == nil {
			s.buf = make([]float32, 0, blockLen)
		}
		s.buf = append(s.buf, vals[:k]...)
		vals, s.next = vals[k:], s.next+k
		if len(s.buf) == b.n {
			if err := s.foldBlock(b, s.buf); err != nil {
				return err
			}
			s.buf = s.buf[:0]
		}
	}
	s.skipEmpty()
	return nil
}

// foldBlock checks one block's values as Add checks an update's, and folds
// them with every weight part.
func (s *StreamAdd) foldBlock(b *block, xs []float32) error {
	mx := maxAbs32(xs)
	if mx >= 0x7f800000 {
		return firstNonFinite([][]float32{xs})
	}
	if !termFits(uint64(s.weight), mx) {
		return fmt.Errorf("%w: |%d × value| is not below 2^%d", ErrOverflow, s.weight, MaxTermLog2)
	}
	if b.e0 == 0 {
		if b.e0 = chooseWindow(xs); b.e0 == 0 {
			return nil // all zero
		}
	}
	for _, w := range s.parts {
		s.a.foldBlock(b, xs, w, float64(w))
	}
	return nil
}

// End completes the update: every coordinate must have been folded. On
// error the accumulator holds part of the update.
func (s *StreamAdd) End() error {
	if s.err != nil {
		return s.err
	}
	if s.done {
		return errors.New("stream already ended")
	}
	if s.t != len(s.a.sizes) {
		s.err = fmt.Errorf("%w: %w: update ended at tensor %d coordinate %d of %d tensors", ErrPartialFold, ErrShape, s.t, s.next, len(s.a.sizes))
		return s.err
	}
	s.done = true
	s.a.count++
	s.a.weight += s.weight
	s.a.denseWeight += s.weight
	return nil
}

// Held is the number of value bytes the stream holds: at most one block.
func (s *StreamAdd) Held() int { return 4 * cap(s.buf) }
