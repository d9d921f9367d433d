package strategy

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

func TestStalenessWeight(t *testing.T) {
	for _, tc := range []struct {
		tau  uint64
		a    float64
		want float64
	}{{0, 0.5, 1}, {3, 0.5, 0.5}, {1, 1, 0.5}, {9, 2, 0.01}, {7, 0, 1}} {
		if got := StalenessWeight(tc.tau, tc.a); math.Abs(got-tc.want) > 1e-15 {
			t.Errorf("s(%d; a=%v) = %v, want %v", tc.tau, tc.a, got, tc.want)
		}
	}
}

// TestBufferByHand: FedBuff's unweighted step, w + η·(1/K)·Σ s(τ)Δ, with
// a = 1: deltas 4 (τ 0, s 1), 6 (τ 2, s 1/3), −2 (τ 1, s 1/2) give
// (4 + 2 − 1)/3 = 5/3; with η = 0.5 the step is 5/6. Weighted by 1, 3, 2
// examples: (4 + 6 − 2)/6 = 4/3, step 2/3.
func TestBufferByHand(t *testing.T) {
	for _, tc := range []struct {
		weighted bool
		step     *big.Rat
	}{{false, big.NewRat(5, 6)}, {true, big.NewRat(2, 3)}} {
		b, err := NewBuffer([]int{1}, BufferConfig{Exponent: 1, ServerLR: 0.5, Weighted: tc.weighted})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []struct {
			n   int64
			tau uint64
			x   float32
		}{{1, 0, 4}, {3, 2, 6}, {2, 1, -2}} {
			if err := b.Add(d.n, d.tau, [][]float32{{d.x}}); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.Apply([][]float32{{10}})
		if err != nil {
			t.Fatal(err)
		}
		// 6 × 1/3 rounds to float32 first; the result is within an ulp of
		// the exact 10 + step.
		want, _ := new(big.Rat).Add(big.NewRat(10, 1), tc.step).Float32()
		if d := int64(math.Float32bits(got[0][0])) - int64(math.Float32bits(want)); d > 1 || d < -1 {
			t.Errorf("weighted=%v: %v, want %v", tc.weighted, got[0][0], want)
		}
		if b.Len() != 0 {
			t.Errorf("Apply left %d deltas in the buffer", b.Len())
		}
	}
}

// TestBufferOrderIndependent: the same deltas and staleness in any order
// give the same bits.
func TestBufferOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(100, 101))
	sizes := []int{200, 3}
	global := randomParams(rng, sizes, 0, 1)
	ups := randomUpdates(rng, 30, sizes)
	taus := make([]uint64, len(ups))
	for i := range taus {
		taus[i] = rng.Uint64N(6)
	}
	var want [2][][]float32
	for trial := range 10 {
		weighted := trial%2 == 1
		b, err := NewBuffer(sizes, BufferConfig{Weighted: weighted})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range rng.Perm(len(ups)) {
			if err := b.Add(ups[i].NumExamples, taus[i], ups[i].Params); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.Apply(global)
		if err != nil {
			t.Fatal(err)
		}
		if trial < 2 {
			want[trial] = got
			continue
		}
		assertBitEqual(t, "shuffled buffer", got, want[trial%2])
	}
}

func TestBufferRejects(t *testing.T) {
	b, err := NewBuffer([]int{2}, BufferConfig{MaxStaleness: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		n     int64
		tau   uint64
		delta [][]float32
		want  error
	}{
		{"too stale", 1, 4, [][]float32{{1, 1}}, ErrTooStale},
		{"no examples", 0, 0, [][]float32{{1, 1}}, ErrNumExamples},
		{"shape", 1, 0, [][]float32{{1}}, ErrShape},
		{"NaN", 1, 0, [][]float32{{1, float32(math.NaN())}}, ErrNonFinite},
	} {
		if err := b.Add(tc.n, tc.tau, tc.delta); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if b.Len() != 0 {
		t.Errorf("rejected deltas were folded: Len %d", b.Len())
	}
	if _, err := b.Apply([][]float32{{0, 0}}); !errors.Is(err, ErrNoUpdates) {
		t.Errorf("Apply of an empty buffer: %v", err)
	}
	if err := b.Add(1, 3, [][]float32{{1, 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply([][]float32{{0}}); !errors.Is(err, ErrShape) || b.Len() != 1 {
		t.Errorf("Apply with the wrong shape: %v, Len %d", err, b.Len())
	}
	for _, a := range []float64{math.NaN(), math.Inf(1)} {
		if _, err := NewBuffer([]int{1}, BufferConfig{Exponent: a}); err == nil {
			t.Errorf("exponent %v accepted", a)
		}
	}
}
