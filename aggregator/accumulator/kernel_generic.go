//go:build !amd64 || purego

package accumulator

// foldWindow adds the values of x that lie in the window with bottom
// exponent field e0, times scale = w / U, into hi and lo (see Accumulator),
// and returns how many values it folded: it stops at the end of x or at a
// value that is neither in the window nor zero.
func foldWindow(x []float32, hi, lo []float64, scale float64, e0 uint32) int {
	return foldWindowGeneric(x, hi, lo, scale, e0)
}

// maxAbs32 returns the largest |x| over xs as float32 bits (NaNs order
// above infinity).
func maxAbs32(xs []float32) uint32 { return maxAbsGeneric(xs) }
