//go:build !purego

package accumulator

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestAccumulatorKernelsAgree runs the same terms through the AVX2 kernels
// and the Go ones: the exact sums must agree coordinate by coordinate.
func TestAccumulatorKernelsAgree(t *testing.T) {
	if !useAVX2 {
		t.Log("no AVX2 on this CPU: both runs use the Go kernels")
	}
	rng := rand.New(rand.NewPCG(23, 24))
	sizes := []int{1000, 17, 8, 263}
	ts := append(scaledTerms(rng, 10, sizes), randomTerms(rng, 10, sizes)...)
	vec := accumulateAll(t, sizes, ts)
	saved := useAVX2
	useAVX2 = false
	defer func() { useAVX2 = saved }()
	gen := accumulateAll(t, sizes, ts)
	for bi := range vec.blocks {
		for j := range vec.blocks[bi].n {
			if vec.exactSum(&vec.blocks[bi], j) != gen.exactSum(&gen.blocks[bi], j) {
				t.Fatalf("block %d [%d]: AVX2 and Go sums differ", bi, j)
			}
		}
	}
	for _, n := range []int{0, 15, 16, 17, 1000} {
		xs := make([]float32, n)
		for i := range xs {
			xs[i] = math.Float32frombits(rng.Uint32())
		}
		if n > 3 {
			xs[n/2] = float32(math.NaN())
		}
		useAVX2 = saved
		v := maxAbs32(xs)
		useAVX2 = false
		if g := maxAbs32(xs); v != g {
			t.Fatalf("maxAbs32 of %d values: AVX2 %#x, Go %#x", n, v, g)
		}
	}
}
