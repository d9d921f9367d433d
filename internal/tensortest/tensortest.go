// Package tensortest compares models bit for bit in tests: determinism
// here means identical float32 bits, not values that are close.
package tensortest

import "math"

// FirstBitDiff reports whether a and b hold the same tensors bit for bit;
// if not, it returns the first differing tensor and coordinate, j = -1
// when the tensors' lengths differ, and i = -1 when their counts do.
func FirstBitDiff(a, b [][]float32) (i, j int, same bool) {
	if len(a) != len(b) {
		return -1, -1, false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return i, -1, false
		}
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				return i, j, false
			}
		}
	}
	return 0, 0, true
}
