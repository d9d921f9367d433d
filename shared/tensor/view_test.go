package tensor

import (
	"math"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// TestViewReadsInPlaceOrCopies: aligned float32 data is read in place,
// data at an odd address and other dtypes are decoded; all give Float32s's
// values bit for bit, and View refuses what Float32s refuses.
func TestViewReadsInPlaceOrCopies(t *testing.T) {
	vals := []float32{1.5, -0, float32(math.Inf(1)), float32(math.NaN()), 0x1p-149, -3e38}
	aligned := FromFloat32("w", []int64{2, 3}, vals)
	odd := FromFloat32("w", []int64{2, 3}, vals)
	buf := make([]byte, len(odd.Data)+1)
	copy(buf[1:], odd.Data)
	odd.Data = buf[1:]
	for _, tc := range []struct {
		name        string
		t           *fdxv1.Tensor
		wantAliased bool
	}{
		{"aligned float32", aligned, nativeLittleEndian()},
		{"unaligned float32", odd, false},
		{"float16", FromFloat16("w", []int64{2}, vals[:2]), false},
		{"int8", FromInt8("w", []int64{6}, []float32{1, -1, 0.5, 0, 2, -2}), false},
	} {
		got, aliased, err := View(tc.t)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if aliased != tc.wantAliased {
			t.Errorf("%s: aliased %v, want %v", tc.name, aliased, tc.wantAliased)
		}
		want, err := Float32s(nil, tc.t)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", tc.name, len(got), len(want))
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Errorf("%s: value %d = %v, want %v", tc.name, i, got[i], want[i])
			}
		}
	}
	short := FromFloat32("w", []int64{6}, vals)
	short.Data = short.Data[:20]
	for _, bad := range []*fdxv1.Tensor{nil, short, {Name: "w", Shape: []int64{0}, Dtype: fdxv1.DType_DTYPE_FLOAT32}} {
		if _, _, err := View(bad); err == nil {
			t.Errorf("View(%v) accepted", bad)
		}
	}
}
