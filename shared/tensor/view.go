package tensor

// Zero-copy access to float32 tensors, for the aggregator's ingest path:
// an update's values are read in place, from the bytes the protobuf
// decoder already holds, instead of being copied into a new []float32.

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// View returns t's values, checked as Float32s checks them (dtype, shape,
// byte length; not finiteness). For a float32 tensor on a little-endian
// machine whose data is 4-byte aligned, which is the usual case (the
// protobuf decoder allocates each bytes field on its own, and Go's
// allocator aligns those to 8 bytes), the values are t.Data itself,
// reinterpreted without a copy, and aliased is true. Otherwise (another
// dtype, a big-endian machine, data at an odd address) they are decoded
// into a new slice, and aliased is false.
//
// An aliased view shares t.Data's memory: the caller must never write into
// it (a write would change the message), and must not use it after t.Data
// is modified. The garbage collector keeps t.Data alive while the view is.
func View(t *fdxv1.Tensor) (vals []float32, aliased bool, err error) {
	if t.GetDtype() != fdxv1.DType_DTYPE_FLOAT32 || !viewable(t.GetData()) {
		vals, err = Float32s(nil, t)
		return vals, false, err
	}
	n, err := elements(t)
	if err != nil {
		return nil, false, err
	}
	if len(t.GetData()) != 4*n {
		return nil, false, fmt.Errorf("tensor %q: %d data bytes for shape %v (want %d)", t.GetName(), len(t.GetData()), t.GetShape(), 4*n)
	}
	return viewFloat32(t.GetData()), true, nil
}

// viewable reports whether data can be read in place as float32s: the
// machine stores float32 little-endian, as the wire does, and data starts
// on a 4-byte boundary, as a *float32 must.
func viewable(data []byte) bool {
	return nativeLittleEndian() && uintptr(unsafe.Pointer(unsafe.SliceData(data)))%4 == 0
}

// nativeLittleEndian reports whether the machine is little-endian.
func nativeLittleEndian() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}

// viewFloat32 reinterprets data, 4-byte aligned and of a length that is a
// multiple of 4, as float32s. The one unsafe conversion of the package.
func viewFloat32(data []byte) []float32 {
	if len(data) == 0 {
		return []float32{}
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(data))), len(data)/4)
}

// Len checks t as Float32s does (shape, dtype, byte length), without
// decoding it, and returns its number of values.
func Len(t *fdxv1.Tensor) (int, error) {
	n, err := elements(t)
	if err != nil {
		return 0, err
	}
	var width int
	switch t.GetDtype() {
	case fdxv1.DType_DTYPE_FLOAT32:
		width = 4
	case fdxv1.DType_DTYPE_FLOAT16:
		width = 2
	case fdxv1.DType_DTYPE_INT8:
		width = 1
	case fdxv1.DType_DTYPE_SPARSE_FLOAT32:
		if err := checkSparse(t, n); err != nil {
			return 0, err
		}
		return n, nil
	default:
		return 0, fmt.Errorf("tensor %q: unsupported dtype %v", t.GetName(), t.GetDtype())
	}
	if len(t.GetData()) != width*n {
		return 0, fmt.Errorf("tensor %q: %d data bytes for shape %v (want %d)", t.GetName(), len(t.GetData()), t.GetShape(), width*n)
	}
	return n, nil
}

// ViewOf returns the values of t, which Len accepted, read in place (see
// View), or nil when they cannot be: t is not float32, or its data is
// not 4-byte aligned, or the machine is big-endian. Then DecodeAt reads
// them.
func ViewOf(t *fdxv1.Tensor) []float32 {
	if t.GetDtype() != fdxv1.DType_DTYPE_FLOAT32 || !viewable(t.GetData()) || len(t.GetData())%4 != 0 {
		return nil
	}
	return viewFloat32(t.GetData())
}

// DecodeAt decodes values [off, off+len(dst)) of t into dst, for a tensor
// that View or Float32s accepted (its dtype and byte length are right) and
// a range inside it. It lets a reader take a float16 or int8 tensor a block
// at a time, without a float32 copy of the whole tensor. It returns an error,
// never panics, for a tensor or range that does not fit.
func DecodeAt(dst []float32, t *fdxv1.Tensor, off int) error {
	data := t.GetData()
	n := len(dst)
	if off < 0 {
		return fmt.Errorf("tensor %q: negative offset %d", t.GetName(), off)
	}
	switch t.GetDtype() {
	case fdxv1.DType_DTYPE_FLOAT32:
		if 4*(off+n) > len(data) {
			return fmt.Errorf("tensor %q: values [%d, %d) beyond its %d bytes", t.GetName(), off, off+n, len(data))
		}
		src := data[4*off : 4*(off+n)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case fdxv1.DType_DTYPE_FLOAT16:
		if 2*(off+n) > len(data) {
			return fmt.Errorf("tensor %q: values [%d, %d) beyond its %d bytes", t.GetName(), off, off+n, len(data))
		}
		src := data[2*off : 2*(off+n)]
		for i := range dst {
			dst[i] = fromHalf(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case fdxv1.DType_DTYPE_INT8:
		if off+n > len(data) {
			return fmt.Errorf("tensor %q: values [%d, %d) beyond its %d bytes", t.GetName(), off, off+n, len(data))
		}
		src, scale := data[off:off+n], t.GetScale()
		for i := range dst {
			dst[i] = float32(int8(src[i])) * scale
		}
	case fdxv1.DType_DTYPE_SPARSE_FLOAT32:
		sparseAt(dst, data, off)
	default:
		return fmt.Errorf("tensor %q: unsupported dtype %v", t.GetName(), t.GetDtype())
	}
	return nil
}
