package tensor

import (
	"math"
	"strings"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

var specs = []Spec{{"w", []int64{2, 3}}, {"b", []int64{3}}}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	vals := [][]float32{{1, -2, 3.5, float32(math.SmallestNonzeroFloat32), -0, 6}, {7, 8, 9}}
	got, err := Decode(Encode(vals, specs), specs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range vals {
		for j := range vals[i] {
			if math.Float32bits(got[i][j]) != math.Float32bits(vals[i][j]) {
				t.Errorf("[%d][%d] = %v, want %v", i, j, got[i][j], vals[i][j])
			}
		}
	}
	if n := L2Norm([][]float32{{3}, {4}}); n != 5 {
		t.Errorf("L2Norm = %v, want 5", n)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := func() []*fdxv1.Tensor { return Encode([][]float32{make([]float32, 6), make([]float32, 3)}, specs) }
	for _, tc := range []struct {
		name string
		mut  func([]*fdxv1.Tensor) []*fdxv1.Tensor
		want string
	}{
		{"too few", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { return ts[:1] }, "got 1 tensors"},
		{"wrong name", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { ts[1].Name = "x"; return ts }, `name "x"`},
		{"wrong shape", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { ts[0].Shape = []int64{3, 2}; return ts }, "shape"},
		{"short data", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { ts[0].Data = ts[0].Data[:5]; return ts }, "data bytes"},
		{"bad dtype", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { ts[0].Dtype = fdxv1.DType(99); return ts }, "unsupported dtype"},
		{"nan", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor {
			ts[1] = FromFloat32("b", []int64{3}, []float32{0, float32(math.NaN()), 0})
			return ts
		}, "non-finite"},
		{"inf", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor {
			ts[1] = FromFloat32("b", []int64{3}, []float32{float32(math.Inf(-1)), 0, 0})
			return ts
		}, "non-finite"},
		{"nil tensor", func(ts []*fdxv1.Tensor) []*fdxv1.Tensor { ts[0] = nil; return ts }, "name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.mut(good()), specs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := Float32s(nil, &fdxv1.Tensor{Name: "z", Shape: []int64{-1}, Dtype: fdxv1.DType_DTYPE_FLOAT32}); err == nil {
		t.Error("negative dimension accepted")
	}
}

func TestInt8Dequantizes(t *testing.T) {
	v, err := Float32s(nil, &fdxv1.Tensor{Name: "q", Shape: []int64{2}, Dtype: fdxv1.DType_DTYPE_INT8, Data: []byte{0xff, 2}, Scale: 0.5})
	if err != nil || v[0] != -0.5 || v[1] != 1 {
		t.Errorf("int8 = %v, %v; want [-0.5 1]", v, err)
	}
}
