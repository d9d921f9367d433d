package dataset

import (
	"fmt"
	"math"
)

// Holdout splits a client's shard into the examples it trains on and the
// ones it holds out for federated evaluation: example i is held out when
// ⌊(i+1)·fraction⌋ > ⌊i·fraction⌋, which spreads the held-out examples
// evenly through the shard, so a label-sorted shard keeps its label mix in
// both parts. The split depends on the shard alone: the same examples are
// held out in every round. A fraction of 0 holds nothing out (held is
// empty); fraction must be in [0, 1). The first example always trains, so
// only an empty shard is an error.
func Holdout(s *Set, fraction float64) (train, held *Set, err error) {
	if !(fraction >= 0 && fraction < 1) {
		return nil, nil, fmt.Errorf("holdout fraction %v outside [0, 1)", fraction)
	}
	var trainIdx, heldIdx []int
	for i := range s.Len() {
		if math.Floor(float64(i+1)*fraction) > math.Floor(float64(i)*fraction) {
			heldIdx = append(heldIdx, i)
		} else {
			trainIdx = append(trainIdx, i)
		}
	}
	if len(trainIdx) == 0 {
		return nil, nil, fmt.Errorf("holdout fraction %v of %d examples leaves none to train on", fraction, s.Len())
	}
	if train, err = s.Subset(trainIdx); err != nil {
		return nil, nil, err
	}
	if held, err = s.Subset(heldIdx); err != nil {
		return nil, nil, err
	}
	return train, held, nil
}
