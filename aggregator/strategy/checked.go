package strategy

// The trusted fold: an update that package validate passed is folded from
// its validate.Values, without the checks accumulator.Accumulator.Add makes again
// (shapes of every tensor aside, which cost nothing), and a block at a
// time, so that a delta or a float16 or int8 update is never decoded into
// a float32 copy of the whole update, and full float32 weights are read
// straight from the message's bytes.

import (
	"fmt"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
)

// params returns u's values per tensor: Params, or the checked values
// decoded (views of full float32 weights, copies of the others).
func (u Update) params() [][]float32 {
	if u.Params == nil && u.Checked != nil {
		return u.Checked.Params()
	}
	return u.Params
}

// flatBlock is how many values flat asks of validate.Values at a time:
// any size is correct; a block keeps the scratch small.
const flatBlock = 256

// flat copies u's values, total in all, into one new slice: from Checked a
// block at a time, with no copy per tensor first.
func (u Update) flat(total int) ([]float32, error) {
	v := u.Checked
	if v == nil {
		return flatten(u.Params, total), nil
	}
	n := 0
	for t := range v.Tensors() {
		n += v.Len(t)
	}
	if n != total {
		return nil, fmt.Errorf("%w: %d values, want %d", ErrShape, n, total)
	}
	out := make([]float32, total)
	off := 0
	for t := range v.Tensors() {
		n := v.Len(t)
		for j := 0; j < n; j += flatBlock {
			dst := out[off+j : off+min(j+flatBlock, n)]
			x := v.Block(t, j, dst)
			if len(x) != len(dst) {
				return nil, fmt.Errorf("%w: tensor %d has no values at %d", ErrShape, t, j)
			}
			copy(dst, x) // a no-op when x is dst
		}
		off += n
	}
	return out, nil
}

// add folds u into acc: from u.Checked without checking the values again
// when the validator made it, else through Add, which checks them.
func addTo(acc *accumulator.Accumulator, u Update) error {
	if u.Checked != nil {
		return acc.AddChecked(u.NumExamples, u.Checked)
	}
	return acc.Add(u.NumExamples, u.Params)
}
