package tensor

import (
	"math"
	"math/rand/v2"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// TestHalfExhaustive checks every binary16 value: decoding is exact and
// encoding the decoded value gives it back.
func TestHalfExhaustive(t *testing.T) {
	for h := range 1 << 16 {
		f := fromHalf(uint16(h))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			continue
		}
		if back := toHalf(f); back != uint16(h) && !(f == 0 && back&0x7fff == 0) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f, back)
		}
	}
	for _, c := range []struct {
		in   float32
		want float32
	}{
		{1, 1}, {-2.5, -2.5}, {65504, 65504}, {1e9, 65504}, {-1e9, -65504},
		{1 + 1.0/2048, 1},                            // halfway: to even (1)
		{1 + 3.0/2048, 1 + 2.0/1024},                 // halfway: to even (up)
		{5.960464477539063e-8, 5.960464477539063e-8}, // smallest subnormal
		{2e-8, 0},
	} {
		got := fromHalf(binary16(c.in))
		if got != c.want {
			t.Errorf("float16(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func binary16(f float32) uint16 {
	return toHalf(max(-maxHalf, min(maxHalf, f)))
}

// TestEncodeAs round-trips random values through each encoding and bounds
// the error: float16's relative 2^-11, int8's half a scale step.
func TestEncodeAs(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	specs := []Spec{{Name: "w", Shape: []int64{30, 40}}, {Name: "zero", Shape: []int64{5}}}
	vals := [][]float32{make([]float32, 1200), make([]float32, 5)}
	for i := range vals[0] {
		vals[0][i] = float32(r.NormFloat64() * 0.01)
	}
	for _, c := range []struct {
		dtype fdxv1.DType
		bytes int
	}{{fdxv1.DType_DTYPE_FLOAT32, 4}, {fdxv1.DType_DTYPE_FLOAT16, 2}, {fdxv1.DType_DTYPE_INT8, 1}} {
		ts, err := EncodeAs(vals, specs, c.dtype)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts[0].GetData()) != c.bytes*1200 || ts[0].GetDtype() != c.dtype {
			t.Errorf("%v: %d bytes, dtype %v", c.dtype, len(ts[0].GetData()), ts[0].GetDtype())
		}
		got, err := Decode(ts, specs)
		if err != nil {
			t.Fatalf("%v: %v", c.dtype, err)
		}
		for i, v := range vals[0] {
			bound := float64(0)
			switch c.dtype {
			case fdxv1.DType_DTYPE_FLOAT16:
				bound = math.Abs(float64(v))/2048 + 6e-8
			case fdxv1.DType_DTYPE_INT8:
				bound = float64(ts[0].GetScale())/2 + 1e-9
			}
			if d := math.Abs(float64(got[0][i] - v)); d > bound {
				t.Fatalf("%v: value %d: %v decoded as %v, error %g over %g", c.dtype, i, v, got[0][i], d, bound)
			}
		}
		for _, v := range got[1] {
			if v != 0 {
				t.Errorf("%v: zero tensor decoded as %v", c.dtype, got[1])
			}
		}
	}
	if _, err := EncodeAs(vals, specs, fdxv1.DType(99)); err == nil {
		t.Error("EncodeAs accepted an unknown dtype")
	}
	// A float16 tensor with the wrong byte count is refused.
	bad := FromFloat16("w", []int64{3}, []float32{1, 2, 3})
	bad.Data = bad.Data[:5]
	if _, err := Float32s(nil, bad); err == nil {
		t.Error("Float32s accepted 5 bytes for 3 float16 values")
	}
}

// TestSnapHalf checks that snapped values survive a float16 round trip
// bit for bit, and that a value float16 cannot hold is refused with the
// values left as they were.
func TestSnapHalf(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	vals := [][]float32{make([]float32, 1000), {0, -0.0, 65504, 65519.99, -1e-9}}
	for i := range vals[0] {
		vals[0][i] = float32(r.NormFloat64() * 0.1)
	}
	if err := SnapHalf(vals); err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		got, err := Float32s(nil, FromFloat16("t", []int64{int64(len(v))}, v))
		if err != nil {
			t.Fatal(err)
		}
		for j := range v {
			if math.Float32bits(got[j]) != math.Float32bits(v[j]) {
				t.Fatalf("tensor %d value %d: snapped %v decodes as %v", i, j, v[j], got[j])
			}
		}
	}
	bad := [][]float32{{1.5, 65520}}
	if err := SnapHalf(bad); err == nil {
		t.Fatal("65520 was snapped; want an error")
	}
	if bad[0][0] != 1.5 {
		t.Fatalf("a refused snap changed a value: %v", bad[0][0])
	}
	if err := SnapHalf([][]float32{{float32(math.NaN())}}); err == nil {
		t.Fatal("NaN was snapped; want an error")
	}
}
