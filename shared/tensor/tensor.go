// Package tensor converts model parameters to and from the wire Tensor and
// checks received tensors against the shapes a model expects, so that no
// malformed or non-finite parameter reaches training or aggregation.
// The aggregator reads received float32 tensors in place (View, ViewOf)
// and others a block at a time (DecodeAt), so that it never copies an
// update whole (view.go).
package tensor

import (
	"encoding/binary"
	"fmt"
	"math"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// Spec names one parameter tensor and its shape.
type Spec struct {
	Name  string
	Shape []int64
}

// Size returns the number of elements of the spec's shape.
func (s Spec) Size() int { return numElements(s.Shape) }

func numElements(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// FromFloat32 encodes data as a float32 tensor. It panics if len(data) does
// not match shape, which is a programming error on the sending side.
func FromFloat32(name string, shape []int64, data []float32) *fdxv1.Tensor {
	if numElements(shape) != len(data) {
		panic(fmt.Sprintf("tensor %q: %d values for shape %v", name, len(data), shape))
	}
	buf := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return &fdxv1.Tensor{
		Name:  name,
		Shape: append([]int64(nil), shape...),
		Dtype: fdxv1.DType_DTYPE_FLOAT32,
		Data:  buf,
	}
}

// Float32s decodes t into dst (grown as needed) and returns it. It checks the
// dtype, the shape and the byte length; it does not check finiteness.
func Float32s(dst []float32, t *fdxv1.Tensor) ([]float32, error) {
	n, err := elements(t)
	if err != nil {
		return nil, err
	}
	switch t.GetDtype() {
	case fdxv1.DType_DTYPE_FLOAT32:
		if len(t.GetData()) != 4*n {
			return nil, fmt.Errorf("tensor %q: %d data bytes for shape %v (want %d)", t.GetName(), len(t.GetData()), t.GetShape(), 4*n)
		}
		dst = grow(dst, n)
		for i := range n {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
		return dst, nil
	case fdxv1.DType_DTYPE_FLOAT16:
		if len(t.GetData()) != 2*n {
			return nil, fmt.Errorf("tensor %q: %d data bytes for shape %v (want %d)", t.GetName(), len(t.GetData()), t.GetShape(), 2*n)
		}
		dst = grow(dst, n)
		for i := range n {
			dst[i] = fromHalf(binary.LittleEndian.Uint16(t.Data[2*i:]))
		}
		return dst, nil
	case fdxv1.DType_DTYPE_SPARSE_FLOAT32:
		return sparseFloat32s(dst, t, n)
	case fdxv1.DType_DTYPE_INT8:
		if len(t.GetData()) != n {
			return nil, fmt.Errorf("tensor %q: %d data bytes for shape %v (want %d)", t.GetName(), len(t.GetData()), t.GetShape(), n)
		}
		dst = grow(dst, n)
		for i := range n {
			dst[i] = float32(int8(t.Data[i])) * t.GetScale()
		}
		return dst, nil
	default:
		return nil, fmt.Errorf("tensor %q: unsupported dtype %v", t.GetName(), t.GetDtype())
	}
}

// elements returns the number of elements of t's shape, which must be
// positive in every dimension. It counts one dimension at a time, stopping
// as soon as the count exceeds what the data could hold, so a hostile shape
// can neither overflow the product nor make us allocate.
func elements(t *fdxv1.Tensor) (int, error) {
	if t == nil {
		return 0, fmt.Errorf("tensor: nil")
	}
	// A sparse tensor's data does not bound its size: its shape is capped
	// at maxSparseElements instead (callers that decode untrusted tensors
	// compare the shape with the model's first, as Decode does).
	limit := len(t.GetData())
	if t.GetDtype() == fdxv1.DType_DTYPE_SPARSE_FLOAT32 {
		limit = maxSparseElements
	}
	n := 1
	for _, d := range t.GetShape() {
		if d <= 0 || d > 1<<31 {
			return 0, fmt.Errorf("tensor %q: bad dimension %d in shape %v", t.GetName(), d, t.GetShape())
		}
		n *= int(d)
		if n > limit {
			return 0, fmt.Errorf("tensor %q: shape %v needs more than the %d data bytes", t.GetName(), t.GetShape(), len(t.GetData()))
		}
	}
	return n, nil
}

func grow(dst []float32, n int) []float32 {
	if cap(dst) < n {
		return make([]float32, n)
	}
	return dst[:n]
}

// Decode checks ts against specs (same names, same order, same shapes) and
// that every value is finite, and returns the values per tensor.
func Decode(ts []*fdxv1.Tensor, specs []Spec) ([][]float32, error) {
	if len(ts) != len(specs) {
		return nil, fmt.Errorf("got %d tensors, want %d", len(ts), len(specs))
	}
	out := make([][]float32, len(ts))
	for i, t := range ts {
		sp := specs[i]
		if err := CheckSpec(i, t, sp); err != nil {
			return nil, err
		}
		v, err := Float32s(nil, t)
		if err != nil {
			return nil, err
		}
		for j, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, fmt.Errorf("tensor %q: non-finite value %v at %d", sp.Name, x, j)
			}
		}
		out[i] = v
	}
	return out, nil
}

// CheckSpec checks that t, the i-th tensor of a message, has sp's name and
// shape (not its data: see Float32s and View).
func CheckSpec(i int, t *fdxv1.Tensor, sp Spec) error {
	if t.GetName() != sp.Name {
		return fmt.Errorf("tensor %d: name %q, want %q", i, t.GetName(), sp.Name)
	}
	if !equalShape(t.GetShape(), sp.Shape) {
		return fmt.Errorf("tensor %q: shape %v, want %v", sp.Name, t.GetShape(), sp.Shape)
	}
	return nil
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Encode is the inverse of Decode.
func Encode(values [][]float32, specs []Spec) []*fdxv1.Tensor {
	out := make([]*fdxv1.Tensor, len(specs))
	for i, sp := range specs {
		out[i] = FromFloat32(sp.Name, sp.Shape, values[i])
	}
	return out
}

// L2Norm returns the Euclidean norm over all values, in float64.
func L2Norm(values [][]float32) float64 {
	var s float64
	for _, v := range values {
		for _, x := range v {
			s += float64(x) * float64(x)
		}
	}
	return math.Sqrt(s)
}
