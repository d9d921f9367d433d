package updatestream

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// collect is a Sink that rebuilds the tensors it is handed.
type collect struct {
	names  []string
	shapes [][]int64
	vals   [][]float32
}

func (c *collect) Tensor(i int, name string, shape []int64, dtype fdxv1.DType, n int) error {
	if i != len(c.names) {
		return errors.New("tensor out of order")
	}
	c.names, c.shapes, c.vals = append(c.names, name), append(c.shapes, shape), append(c.vals, nil)
	return nil
}

func (c *collect) Values(i, off int, vals []float32) error {
	if off != len(c.vals[i]) {
		return errors.New("values out of order")
	}
	c.vals[i] = append(c.vals[i], vals...)
	return nil
}

func sample(r *rand.Rand) *fdxv1.Update {
	vals := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	return &fdxv1.Update{
		Job: "job", ClientId: "c1", BaseRound: 3, NumExamples: 17,
		Params: []*fdxv1.Tensor{
			tensor.FromFloat32("w", []int64{30, 70}, vals(2100)),
			tensor.FromFloat16("b", []int64{333}, vals(333)),
			tensor.FromFloat32("one", []int64{1}, vals(1)),
		},
		IsDelta: true, Metrics: map[string]float64{"loss": 0.5, "accuracy": 0.9},
		Timings: &fdxv1.Timings{ModelReceived: timestamppb.Now()},
	}
}

// TestParsePieces parses updates cut at random points and gets back the
// same tensors and the same other fields as proto.Unmarshal.
func TestParsePieces(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		u := sample(r)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		c := &collect{}
		p := New(c, 0)
		for rest := b; len(rest) > 0; {
			n := min(len(rest), 1+r.IntN(1+[]int{3, 50, 5000}[trial%3]))
			if err := p.Write(rest[:n]); err != nil {
				t.Fatalf("trial %d: Write: %v", trial, err)
			}
			rest = rest[n:]
		}
		env, err := p.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(u).(*fdxv1.Update)
		ts := want.Params
		want.Params = nil
		if !proto.Equal(env, want) {
			t.Fatalf("trial %d: envelope %v, want %v", trial, env, want)
		}
		for i, tt := range ts {
			v, _ := tensor.Float32s(nil, tt)
			if c.names[i] != tt.GetName() || !slices.Equal(c.shapes[i], tt.GetShape()) || !slices.Equal(c.vals[i], v) {
				t.Fatalf("trial %d: tensor %d differs", trial, i)
			}
		}
		if p.Held() > 200<<10 {
			t.Errorf("parser holds %d bytes", p.Held())
		}
	}
}

// TestNotStreamable: an int8 tensor (its scale follows its data) and a
// truncated message are refused, not misread.
func TestNotStreamable(t *testing.T) {
	u := &fdxv1.Update{Job: "j", Params: []*fdxv1.Tensor{tensor.FromInt8("q", []int64{4}, []float32{1, -2, 3, 4})}}
	b, _ := proto.Marshal(u)
	if err := New(&collect{}, 0).Write(b); !errors.Is(err, ErrNotStreamable) {
		t.Errorf("int8 tensor: Write = %v, want ErrNotStreamable", err)
	}
	u = sample(rand.New(rand.NewPCG(3, 4)))
	b, _ = proto.Marshal(u)
	p := New(&collect{}, 0)
	if err := p.Write(b[:len(b)/2]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Close(); err == nil {
		t.Error("Close of half a message succeeded")
	}
	// Garbage fails in Write or Close, never panics.
	for i := range 200 {
		g := slices.Clone(b)
		g[rand.New(rand.NewPCG(uint64(i), 0)).IntN(len(g))] ^= 0xff
		p := New(&collect{}, 0)
		if p.Write(g) == nil {
			p.Close()
		}
	}
}

// TestUnknownDtypeNotStreamable: data of an encoding the parser does not
// decode is left to the whole decoder.
func TestUnknownDtypeNotStreamable(t *testing.T) {
	u := &fdxv1.Update{Job: "j", Params: []*fdxv1.Tensor{{Name: "s", Shape: []int64{2}, Dtype: 77, Data: []byte{1, 2, 3, 4}}}}
	b, _ := proto.Marshal(u)
	if err := New(&collect{}, 0).Write(b); !errors.Is(err, ErrNotStreamable) {
		t.Errorf("dtype 77: Write = %v, want ErrNotStreamable", err)
	}
}
