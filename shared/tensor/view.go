package tensor

// Zero-copy access to float32 tensors, for the aggregator's ingest path:
// an update's values are read in place, from the bytes the protobuf
// decoder already holds, instead of being copied into a new []float32.

import (
	"encoding/binary"
	"fmt"
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
