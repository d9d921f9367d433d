package tensor

import (
	"encoding/binary"
	"fmt"
	"math"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// DecodeValues decodes whole float32 or float16 elements of a tensor's
// data, a piece of it as it streams in, into dst (len(dst) elements; data
// holds exactly that many). It is Float32s without the shape, for a reader
// that never holds the whole tensor; int8 needs the scale, which follows
// the data on the wire, and is not decoded here.
func DecodeValues(dst []float32, data []byte, dtype fdxv1.DType) ([]float32, error) {
	switch dtype {
	case fdxv1.DType_DTYPE_FLOAT32:
		if len(data) != 4*len(dst) {
			return nil, fmt.Errorf("tensor: %d bytes for %d float32 values", len(data), len(dst))
		}
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
	case fdxv1.DType_DTYPE_FLOAT16:
		if len(data) != 2*len(dst) {
			return nil, fmt.Errorf("tensor: %d bytes for %d float16 values", len(data), len(dst))
		}
		for i := range dst {
			dst[i] = fromHalf(binary.LittleEndian.Uint16(data[2*i:]))
		}
	default:
		return nil, fmt.Errorf("tensor: cannot decode %v values piecewise", dtype)
	}
	return dst, nil
}
