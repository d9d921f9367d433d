package model

// Synthetic models: "synthetic:<MB>" is a Net of random parameters of the
// given size in MB (10^6 bytes of float32) with no network behind them.
// Training is a seeded perturbation and evaluation a summary of the
// weights, so a job moves models of 10 MB, 100 MB or 1 GB through its
// channel at the cost of generating random numbers, not of training: the
// transport is what such a job measures.

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// KindSyntheticPrefix starts a synthetic kind: "synthetic:100" is 100 MB.
const KindSyntheticPrefix = "synthetic:"

// Bounds of a synthetic model: its size in MB, and the values per tensor
// (4 MB), so that tensors stay well below any record or message size.
const (
	maxSyntheticMB      = 4096
	syntheticTensorVals = 1 << 20
)

// syntheticStream is the PCG stream of a synthetic model's perturbations.
const syntheticStream = 0x53594e54 // "SYNT"

// syntheticParams returns the parameter count of a synthetic kind, 0 if
// kind is not one, or an error if it is a malformed one.
func syntheticParams(kind string) (int, error) {
	mb, ok := strings.CutPrefix(kind, KindSyntheticPrefix)
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(mb)
	if err != nil || n < 1 || n > maxSyntheticMB {
		return 0, fmt.Errorf("synthetic model %q: want %s<MB> with MB in [1,%d]", kind, KindSyntheticPrefix, maxSyntheticMB)
	}
	return n * 1_000_000 / 4, nil
}

// syntheticSpecs cuts n values into tensors "synthetic.<i>" of at most
// syntheticTensorVals values.
func syntheticSpecs(n int) []tensor.Spec {
	out := make([]tensor.Spec, 0, (n+syntheticTensorVals-1)/syntheticTensorVals)
	for i, off := 0, 0; off < n; i++ {
		size := min(syntheticTensorVals, n-off)
		out = append(out, tensor.Spec{Name: fmt.Sprintf("synthetic.%d", i), Shape: []int64{int64(size)}})
		off += size
	}
	return out
}

// newSynthetic returns a synthetic Net of n values drawn from seed
// (standard normal, rounded to float32).
func newSynthetic(kind string, n, inDim, classes int, seed uint64) *Net {
	net := &Net{kind: kind, sizes: []int{inDim, classes}, params: make([]float64, n), synthetic: true}
	rng := rand.New(rand.NewPCG(seed, initStream))
	for i := range net.params {
		net.params[i] = roundToFloat32(rng.NormFloat64())
	}
	return net
}

// flatValues returns the parameters of a net stored in Specs order
// (synthetic or CNN) as float32 slices.
func (n *Net) flatValues() [][]float32 {
	sp := n.Specs()
	out := make([][]float32, len(sp))
	off := 0
	for i, s := range sp {
		v := make([]float32, s.Size())
		for j := range v {
			v[j] = float32(n.params[off+j])
		}
		out[i], off = v, off+len(v)
	}
	return out
}

// setFlatValues stores p, already checked against Specs, in a net stored
// in Specs order.
func (n *Net) setFlatValues(p [][]float32) {
	off := 0
	for _, v := range p {
		for j, x := range v {
			n.params[off+j] = float64(x)
		}
		off += len(v)
	}
}

// trainSynthetic is a synthetic model's training: every weight moves by
// learning rate × 0.01 × a standard normal drawn from opt.Seed, so that the
// update is deterministic, different per client and round, and small.
func (n *Net) trainSynthetic(ctx context.Context, set *dataset.Set, opt TrainOptions) (TrainStats, error) {
	if err := ctx.Err(); err != nil {
		return TrainStats{}, fmt.Errorf("model: train: %w", err)
	}
	if set == nil || set.Len() == 0 {
		return TrainStats{}, fmt.Errorf("model: train: empty data set")
	}
	rng := rand.New(rand.NewPCG(opt.Seed, syntheticStream))
	step := opt.LearningRate * 0.01
	for i := range n.params {
		n.params[i] = roundToFloat32(n.params[i] + step*rng.NormFloat64())
	}
	loss := n.syntheticLoss()
	return TrainStats{Examples: set.Len(), Steps: 1, Loss: loss}, nil
}

// syntheticLoss is the mean square weight: a number that moves with the
// weights, for the round log.
func (n *Net) syntheticLoss() float64 {
	var s float64
	for _, v := range n.params {
		s += v * v
	}
	return s / float64(max(len(n.params), 1))
}

// evaluateSynthetic reports the mean square weight as the loss and no
// accuracy.
func (n *Net) evaluateSynthetic(set *dataset.Set) (Metrics, error) {
	if set == nil {
		return Metrics{}, fmt.Errorf("model: evaluate: nil data set")
	}
	loss := n.syntheticLoss()
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Metrics{}, fmt.Errorf("model: evaluate: non-finite weights")
	}
	return Metrics{Loss: loss, Examples: set.Len()}, nil
}
