//go:build !purego

package accumulator

import "golang.org/x/sys/cpu"

// useAVX2 selects the vector kernels; it is fixed for the process.
var useAVX2 = cpu.X86.HasAVX2

// foldWindow adds the values of x that lie in the window with bottom
// exponent field e0, times scale = w / U, into hi and lo (see Accumulator),
// and returns how many values it folded: it stops at the end of x or
// before a value that is neither in the window nor zero. The AVX2 kernel
// works on groups of 8 and may stop up to 7 values before such a value, or
// before a tail shorter than 8; the caller folds those one by one.
func foldWindow(x []float32, hi, lo []float64, scale float64, e0 uint32) int {
	if useAVX2 {
		if len(hi) < len(x) || len(lo) < len(x) {
			panic("strategy: foldWindow: short sums") // unreachable: callers slice them to len(x)
		}
		return foldWindowAVX2(x, hi, lo, scale, e0)
	}
	return foldWindowGeneric(x, hi, lo, scale, e0)
}

// maxAbs32 returns the largest |x| over xs as float32 bits (NaNs order
// above infinity).
func maxAbs32(xs []float32) uint32 {
	if !useAVX2 {
		return maxAbsGeneric(xs)
	}
	n := len(xs) &^ 15
	return max(maxAbsAVX2(xs[:n]), maxAbsGeneric(xs[n:]))
}

// foldWindowAVX2 is foldWindow on 8 values at a time.
//
//go:noescape
func foldWindowAVX2(x []float32, hi, lo []float64, scale float64, e0 uint32) int

// maxAbsAVX2 is maxAbs32 for len(xs) a multiple of 16.
//
//go:noescape
func maxAbsAVX2(xs []float32) uint32
