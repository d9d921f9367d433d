package tensor

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

func TestTopK(t *testing.T) {
	data := []float32{0.5, -3, 1, 3, 0, -0.25, 2}
	// |−3| and |3| tie: both kept; then 2.
	if got, want := TopK(data, 3), []int{1, 3, 6}; !slices.Equal(got, want) {
		t.Fatalf("TopK = %v, want %v", got, want)
	}
	// A tie at the cut goes to the lower index.
	if got, want := TopK(data, 1), []int{1}; !slices.Equal(got, want) {
		t.Fatalf("TopK(1) = %v, want %v", got, want)
	}
	for _, c := range []struct {
		n    int
		f    float64
		want int
	}{{100, 0.01, 1}, {1000, 0.01, 10}, {3, 0.01, 1}, {10, 1, 10}, {7, 0.5, 4}} {
		if got := TopKCount(c.n, c.f); got != c.want {
			t.Errorf("TopKCount(%d, %v) = %d, want %d", c.n, c.f, got, c.want)
		}
	}
}

// TestSparseRoundTrip checks that a sparse tensor decodes to the kept
// entries and zeros elsewhere, and is 8 bytes per kept entry.
func TestSparseRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]float32, 1000)
	for i := range data {
		data[i] = float32(r.NormFloat64())
	}
	idx := TopK(data, 37)
	tn := FromSparse("w", []int64{10, 100}, data, idx)
	if len(tn.GetData()) != 8*37 {
		t.Fatalf("%d bytes for 37 entries", len(tn.GetData()))
	}
	got, err := Float32s(nil, tn)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for i, v := range got {
		if slices.Contains(idx, i) {
			if math.Float32bits(v) != math.Float32bits(data[i]) {
				t.Fatalf("entry %d: %v, want %v", i, v, data[i])
			}
			kept++
		} else if v != 0 {
			t.Fatalf("entry %d not sent but decodes as %v", i, v)
		}
	}
	if kept != 37 {
		t.Fatalf("%d entries kept", kept)
	}
}

// TestSparseHostile checks the layouts a hostile sender could use.
func TestSparseHostile(t *testing.T) {
	mk := func(idx []uint32, shape ...int64) *fdxv1.Tensor {
		buf := make([]byte, 8*len(idx))
		for j, i := range idx {
			binary.LittleEndian.PutUint32(buf[4*j:], i)
			binary.LittleEndian.PutUint32(buf[4*len(idx)+4*j:], math.Float32bits(1))
		}
		return &fdxv1.Tensor{Name: "w", Shape: shape, Dtype: fdxv1.DType_DTYPE_SPARSE_FLOAT32, Data: buf}
	}
	for name, c := range map[string]struct {
		t    *fdxv1.Tensor
		want string
	}{
		"out of range": {mk([]uint32{1, 10}, 10), "sparse index 10"},
		"repeated":     {mk([]uint32{3, 3}, 10), "sparse index 3 after 3"},
		"decreasing":   {mk([]uint32{5, 2}, 10), "sparse index 2 after 5"},
		"ragged":       {&fdxv1.Tensor{Name: "w", Shape: []int64{10}, Dtype: fdxv1.DType_DTYPE_SPARSE_FLOAT32, Data: make([]byte, 12)}, "sparse data bytes"},
		"more than n":  {mk([]uint32{0, 1, 2}, 2), "sparse data bytes"},
		"huge shape":   {mk([]uint32{0}, 1<<20, 1<<20), "needs more than"},
		"negative dim": {mk([]uint32{0}, -4), "bad dimension"},
	} {
		if _, err := Float32s(nil, c.t); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
}

// TestErrorFeedback checks that what top-k leaves out is sent later: the
// sum of everything sent plus the residual equals the sum of the steps.
func TestErrorFeedback(t *testing.T) {
	specs := []Spec{{Name: "a", Shape: []int64{50}}, {Name: "b", Shape: []int64{7}}}
	r := rand.New(rand.NewPCG(3, 4))
	var res Residual
	sent := [][]float64{make([]float64, 50), make([]float64, 7)}
	total := [][]float64{make([]float64, 50), make([]float64, 7)}
	for range 20 {
		step := [][]float32{make([]float32, 50), make([]float32, 7)}
		for i := range step {
			for j := range step[i] {
				step[i][j] = float32(r.NormFloat64())
				total[i][j] += float64(step[i][j])
			}
		}
		ts, err := res.EncodeTopK(step, specs, 0.1)
		if err != nil {
			t.Fatal(err)
		}
		for i, tn := range ts {
			v, err := Float32s(nil, tn)
			if err != nil {
				t.Fatal(err)
			}
			nz := 0
			for j, x := range v {
				sent[i][j] += float64(x)
				if x != 0 {
					nz++
				}
			}
			if want := TopKCount(specs[i].Size(), 0.1); nz > want {
				t.Fatalf("tensor %d: %d entries sent, want at most %d", i, nz, want)
			}
		}
	}
	for i := range total {
		for j := range total[i] {
			if d := math.Abs(sent[i][j] + float64(res.r[i][j]) - total[i][j]); d > 1e-3 {
				t.Fatalf("tensor %d entry %d: sent + residual differs from the steps' sum by %g", i, j, d)
			}
		}
	}
	var none *Residual
	if _, err := none.EncodeTopK([][]float32{make([]float32, 50), make([]float32, 7)}, specs, 0.1); err != nil {
		t.Fatalf("without memory: %v", err)
	}
	if _, err := res.EncodeTopK([][]float32{make([]float32, 50), make([]float32, 7)}, specs, 0); err == nil {
		t.Fatal("fraction 0 accepted")
	}
}
