package accumulator

// The trusted fold: an update that package validate passed is folded from
// its validate.Values, without the checks Add makes again (shapes of every
// tensor aside, which cost nothing), and a block at a time, so that a
// delta or a float16 or int8 update is never decoded into a float32 copy
// of the whole update, and full float32 weights are read straight from the
// message's bytes.

import (
	"errors"
	"fmt"
	"math"

	"github.com/fdxkafka/fdxkafka/aggregator/validate"
)

// errBroken marks an accumulator whose sums are incomplete: a fold from
// validated values stopped halfway, which only a bug can cause. Nothing
// is read from it afterwards, so the bug cannot become a wrong model.
var errBroken = errors.New("accumulator: a fold from validated values stopped halfway")

// AddChecked is Add for values package validate passed: finite, of the
// round's shapes, with MaxAbs their largest |value| and weight × MaxAbs
// within range (rules.MaxTermLog2, the accumulator's MaxTermLog2). Only
// the validator makes a *validate.Values, so AddChecked trusts the values
// and checks only what costs O(1) per tensor: the weight, the count, the
// shapes, and the range from MaxAbs. It is as atomic as Add: the one
// failure it cannot check first, a block the values do not return (a bug),
// leaves the accumulator refusing every later call. The values are read a
// block of blockLen at a time, in place or into one block of scratch, so
// a decoded update is never copied whole.
func (a *Accumulator) AddChecked(weight int64, v *validate.Values) error {
	if err := a.checkTerm(weight); err != nil {
		return err
	}
	if v.Tensors() != len(a.sizes) {
		return fmt.Errorf("%w: %d tensors, want %d", ErrShape, v.Tensors(), len(a.sizes))
	}
	for i, n := range a.sizes {
		if v.Len(i) != n {
			return fmt.Errorf("%w: tensor %d has %d elements, want %d", ErrShape, i, v.Len(i), n)
		}
	}
	mx := math.Float32bits(v.MaxAbs()) & 0x7fffffff
	if mx >= 0x7f800000 {
		return fmt.Errorf("%w: largest |value| %v", ErrNonFinite, v.MaxAbs())
	}
	if !termFits(uint64(weight), mx) {
		return fmt.Errorf("%w: |%d × %g| is not below 2^%d", ErrOverflow, weight, v.MaxAbs(), MaxTermLog2)
	}
	if a.denseWeight > denseWeightLimit-weight {
		a.spillAll()
	}
	var scratch [blockLen]float32
	for w := uint64(weight); w > 0; {
		part := min(w, maxPartWeight)
		if !a.foldChecked(part, v, scratch[:]) {
			a.broken = true
			return errBroken
		}
		w -= part
	}
	a.count++
	a.weight += weight
	a.denseWeight += weight
	return nil
}

// foldChecked is fold from v, a block at a time. It reports false if v
// did not return a block it should have (a bug: the shapes were checked).
func (a *Accumulator) foldChecked(w uint64, v *validate.Values, scratch []float32) bool {
	if a.sinceRenorm == renormEvery {
		a.renormalize()
	}
	a.sinceRenorm++
	fw := float64(w)
	for t := range a.sizes {
		for bi := a.tensorBlocks[t]; bi < a.tensorBlocks[t+1]; bi++ {
			b := &a.blocks[bi]
			start := (bi - a.tensorBlocks[t]) * blockLen
			bx := v.Block(t, start, scratch[:b.n])
			if len(bx) != b.n {
				return false
			}
			if b.e0 == 0 {
				if b.e0 = chooseWindow(bx); b.e0 == 0 {
					continue // all zero
				}
			}
			a.foldBlock(b, bx, w, fw)
		}
	}
	return true
}
