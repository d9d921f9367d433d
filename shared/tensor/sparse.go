package tensor

// Top-k sparsification: a client sends only the k entries of largest
// magnitude of each tensor of its delta, as DTYPE_SPARSE_FLOAT32 (indices,
// then values). With error feedback (Residual) what it leaves out is added
// to its next delta, so that small steps accumulate until they are sent
// rather than being lost (Stich et al., "Sparsified SGD with memory", 2018).

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// maxSparseElements bounds the elements of one sparse tensor: 2^28, a
// 1 GiB float32 tensor.
const maxSparseElements = 1 << 28

// TopKCount is how many of n entries a fraction keeps: at least one (a
// tensor is never sent empty), at most n.
func TopKCount(n int, fraction float64) int {
	k := int(math.Ceil(fraction * float64(n)))
	return max(1, min(n, k))
}

// TopK returns the indices of the k entries of data with the largest
// magnitude, in increasing order. Ties go to the lower index, so the choice
// depends on the values alone.
func TopK(data []float32, k int) []int {
	k = max(0, min(k, len(data)))
	idx := make([]int, len(data))
	for i := range idx {
		idx[i] = i
	}
	// A full sort costs O(n log n); models here are at most a few
	// hundred MB, and the client spends far longer training.
	slices.SortFunc(idx, func(a, b int) int {
		if c := cmp.Compare(math.Abs(float64(data[b])), math.Abs(float64(data[a]))); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	idx = idx[:k]
	slices.Sort(idx)
	return idx
}

// FromSparse encodes the entries of data at idx (increasing, as TopK
// returns them) as a DTYPE_SPARSE_FLOAT32 tensor. It panics if len(data)
// does not match shape.
func FromSparse(name string, shape []int64, data []float32, idx []int) *fdxv1.Tensor {
	if numElements(shape) != len(data) {
		panic(fmt.Sprintf("tensor %q: %d values for shape %v", name, len(data), shape))
	}
	k := len(idx)
	buf := make([]byte, 8*k)
	for j, i := range idx {
		binary.LittleEndian.PutUint32(buf[4*j:], uint32(i))
		binary.LittleEndian.PutUint32(buf[4*k+4*j:], math.Float32bits(data[i]))
	}
	return &fdxv1.Tensor{Name: name, Shape: append([]int64(nil), shape...), Dtype: fdxv1.DType_DTYPE_SPARSE_FLOAT32, Data: buf}
}

// sparseFloat32s decodes a DTYPE_SPARSE_FLOAT32 tensor of n elements into
// dst, refusing a layout a hostile sender could use to write out of range
// or twice to one entry.
func sparseFloat32s(dst []float32, t *fdxv1.Tensor, n int) ([]float32, error) {
	data := t.GetData()
	if len(data)%8 != 0 || len(data)/8 > n {
		return nil, fmt.Errorf("tensor %q: %d sparse data bytes for %d elements (want 8 per entry sent, at most %d entries)", t.GetName(), len(data), n, n)
	}
	k := len(data) / 8
	dst = grow(dst, n)
	clear(dst)
	prev := -1
	for j := range k {
		i := int(binary.LittleEndian.Uint32(data[4*j:]))
		if i <= prev || i >= n {
			return nil, fmt.Errorf("tensor %q: sparse index %d after %d (want increasing, below %d)", t.GetName(), i, prev, n)
		}
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*k+4*j:]))
		prev = i
	}
	return dst, nil
}

// checkSparse checks a DTYPE_SPARSE_FLOAT32 tensor of n elements as
// sparseFloat32s does, without decoding it.
func checkSparse(t *fdxv1.Tensor, n int) error {
	data := t.GetData()
	if len(data)%8 != 0 || len(data)/8 > n {
		return fmt.Errorf("tensor %q: %d sparse data bytes for %d elements (want 8 per entry sent, at most %d entries)", t.GetName(), len(data), n, n)
	}
	prev := -1
	for j := range len(data) / 8 {
		i := int(binary.LittleEndian.Uint32(data[4*j:]))
		if i <= prev || i >= n {
			return fmt.Errorf("tensor %q: sparse index %d after %d (want increasing, below %d)", t.GetName(), i, prev, n)
		}
		prev = i
	}
	return nil
}

// sparseAt decodes elements [off, off+len(dst)) of sparse data that
// checkSparse accepted: the indices are sorted, so the range's entries are
// found by binary search.
func sparseAt(dst []float32, data []byte, off int) {
	clear(dst)
	k := len(data) / 8
	index := func(j int) int { return int(binary.LittleEndian.Uint32(data[4*j:])) }
	lo, hi := 0, k
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if index(m) < off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for j := lo; j < k; j++ {
		i := index(j)
		if i >= off+len(dst) {
			break
		}
		dst[i-off] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*k+4*j:]))
	}
}

// Residual is a client's error-feedback memory for top-k updates: what it
// computed but did not send. Not safe for concurrent use; one per client.
type Residual struct {
	r [][]float32
}

// EncodeTopK adds the residual to step (in place), sends the top fraction
// of each tensor, and keeps the rest as the new residual. A nil Residual
// encodes without memory (a serverless client has none between calls).
// A residual of other shapes (a new job's model) is dropped.
func (res *Residual) EncodeTopK(step [][]float32, specs []Spec, fraction float64) ([]*fdxv1.Tensor, error) {
	if len(step) != len(specs) {
		return nil, fmt.Errorf("tensor: %d tensors for %d specs", len(step), len(specs))
	}
	if !(fraction > 0 && fraction <= 1) {
		return nil, fmt.Errorf("tensor: top-k fraction %v outside (0, 1]", fraction)
	}
	if res != nil && !sameShapes(res.r, step) {
		res.r = nil
	}
	out := make([]*fdxv1.Tensor, len(specs))
	for i, sp := range specs {
		v := step[i]
		if len(v) != sp.Size() {
			return nil, fmt.Errorf("tensor %q: %d values for shape %v", sp.Name, len(v), sp.Shape)
		}
		if res != nil && res.r != nil {
			for j, x := range res.r[i] {
				v[j] += x
			}
		}
		idx := TopK(v, TopKCount(len(v), fraction))
		out[i] = FromSparse(sp.Name, sp.Shape, v, idx)
		if res != nil {
			for _, j := range idx {
				v[j] = 0
			}
		}
	}
	if res != nil {
		// What was not sent; step now holds exactly that.
		res.r = step
	}
	return out, nil
}

func sameShapes(a, b [][]float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
	}
	return true
}
