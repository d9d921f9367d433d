package tensor

// Compressed encodings of float32 values: IEEE 754 binary16, and int8 with
// one scale per tensor. Clients use them for the delta of an update from the
// global model (small values, where their error is small next to the
// weights); the aggregator decodes them with Float32s.

import (
	"encoding/binary"
	"fmt"
	"math"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// maxHalf is the largest finite binary16 value.
const maxHalf = 65504

// FromFloat16 encodes data as a binary16 tensor, rounding to nearest even
// and saturating at ±65504, so that every finite input stays finite. It
// panics if len(data) does not match shape.
func FromFloat16(name string, shape []int64, data []float32) *fdxv1.Tensor {
	if numElements(shape) != len(data) {
		panic(fmt.Sprintf("tensor %q: %d values for shape %v", name, len(data), shape))
	}
	buf := make([]byte, 2*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint16(buf[2*i:], toHalf(max(-maxHalf, min(maxHalf, v))))
	}
	return &fdxv1.Tensor{Name: name, Shape: append([]int64(nil), shape...), Dtype: fdxv1.DType_DTYPE_FLOAT16, Data: buf}
}

// FromInt8 encodes data as int8 with the per-tensor scale max|v|/127,
// rounding to nearest. It panics if len(data) does not match shape.
func FromInt8(name string, shape []int64, data []float32) *fdxv1.Tensor {
	if numElements(shape) != len(data) {
		panic(fmt.Sprintf("tensor %q: %d values for shape %v", name, len(data), shape))
	}
	var maxAbs float32
	for _, v := range data {
		maxAbs = max(maxAbs, float32(math.Abs(float64(v))))
	}
	scale := maxAbs / 127
	buf := make([]byte, len(data))
	if scale > 0 {
		for i, v := range data {
			q := math.Round(float64(v / scale))
			buf[i] = byte(int8(max(-127, min(127, q))))
		}
	}
	return &fdxv1.Tensor{Name: name, Shape: append([]int64(nil), shape...), Dtype: fdxv1.DType_DTYPE_INT8, Data: buf, Scale: scale}
}

// EncodeAs is Encode in dtype: FLOAT32 (or UNSPECIFIED), FLOAT16 or INT8.
func EncodeAs(values [][]float32, specs []Spec, dtype fdxv1.DType) ([]*fdxv1.Tensor, error) {
	enc := FromFloat32
	switch dtype {
	case fdxv1.DType_DTYPE_UNSPECIFIED, fdxv1.DType_DTYPE_FLOAT32:
	case fdxv1.DType_DTYPE_FLOAT16:
		enc = FromFloat16
	case fdxv1.DType_DTYPE_INT8:
		enc = FromInt8
	default:
		return nil, fmt.Errorf("tensor: unsupported encoding %v", dtype)
	}
	out := make([]*fdxv1.Tensor, len(specs))
	for i, sp := range specs {
		out[i] = enc(sp.Name, sp.Shape, values[i])
	}
	return out, nil
}

// toHalf converts a finite float32 to binary16, rounding to nearest even.
func toHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case exp >= 0x1f:
		return sign | 0x7c00 // overflow (callers saturate first)
	case exp <= 0:
		// Subnormal half (or zero): shift the mantissa with its implicit
		// bit right, rounding to nearest even.
		if exp < -10 {
			return sign
		}
		m := mant | 0x800000
		shift := uint(14 - exp)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		if rem := m & (1<<shift - 1); rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	if rem := mant & 0x1fff; rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, which is the correct rounding
	}
	return sign | uint16(r)
}

// fromHalf converts binary16 to float32 exactly.
func fromHalf(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13) // Inf or NaN
	case exp == 0:
		// Zero or subnormal: mant × 2^-24.
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// halfOverflow is the smallest float32 magnitude that binary16 rounding
// takes to infinity: halfway between 65504 and the next binade's 65536.
const halfOverflow = 65520

// SnapHalf rounds every value in place to the nearest binary16 value (ties
// to even), so that FromFloat16 then encodes it without loss. A model kept
// this way is published as float16 exactly. It refuses, changing nothing,
// values that binary16 cannot hold (|v| ≥ 65520, or non-finite), where
// saturating would silently move a weight.
func SnapHalf(values [][]float32) error {
	for i, v := range values {
		for j, x := range v {
			if a := math.Abs(float64(x)); a >= halfOverflow || math.IsNaN(a) {
				return fmt.Errorf("tensor %d: value %v at %d is outside the float16 range (±65504)", i, x, j)
			}
		}
	}
	for _, v := range values {
		for j, x := range v {
			v[j] = fromHalf(toHalf(x))
		}
	}
	return nil
}
