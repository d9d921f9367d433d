package accumulator

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/tensortest"
)

// term is one weighted vector for the accumulator tests.
type term struct {
	w int64
	x [][]float32
}

// randomValue draws from a mix that exercises every path of the
// accumulator: zeros of both signs, subnormals, tiny and ordinary normals,
// and values large enough to sit in the top words.
func randomValue(rng *rand.Rand) float32 {
	sign := float32(1)
	if rng.IntN(2) == 0 {
		sign = -1
	}
	switch rng.IntN(10) {
	case 0:
		return sign * 0
	case 1: // subnormal
		return sign * math.Float32frombits(rng.Uint32N(1<<23))
	case 2: // tiny normal
		return sign * float32(math.Ldexp(1+rng.Float64(), -126+rng.IntN(40)))
	case 3: // large, still |x| < 2^48 so weight × x < 2^80
		return sign * float32(math.Ldexp(1+rng.Float64(), rng.IntN(47)))
	default: // typical model weights
		return float32(rng.NormFloat64() * 0.1)
	}
}

func randomWeight(rng *rand.Rand) int64 {
	switch rng.IntN(8) {
	case 0:
		return MaxWeight - rng.Int64N(1000)
	case 1:
		return 1
	default:
		return 1 + rng.Int64N(60000)
	}
}

func randomTerms(rng *rand.Rand, n int, sizes []int) []term {
	ts := make([]term, n)
	for i := range ts {
		ts[i].w = randomWeight(rng)
		ts[i].x = make([][]float32, len(sizes))
		for t, sz := range sizes {
			ts[i].x[t] = make([]float32, sz)
			for j := range ts[i].x[t] {
				ts[i].x[t][j] = randomValue(rng)
			}
		}
	}
	return ts
}

func mustAccumulator(t testing.TB, sizes []int) *Accumulator {
	t.Helper()
	a, err := New(sizes)
	if err != nil {
		t.Fatalf("New(%v): %v", sizes, err)
	}
	return a
}

func accumulateAll(t testing.TB, sizes []int, ts []term) *Accumulator {
	t.Helper()
	a := mustAccumulator(t, sizes)
	for i, tm := range ts {
		if err := a.Add(tm.w, tm.x); err != nil {
			t.Fatalf("Add(term %d): %v", i, err)
		}
	}
	return a
}

// bigMean is the reference: the exact weighted mean as a rational.
func bigMean(ts []term, tensor, j int) *big.Rat {
	s := new(big.Rat)
	var total int64
	for _, tm := range ts {
		x := new(big.Rat).SetFloat64(float64(tm.x[tensor][j]))
		s.Add(s, x.Mul(x, new(big.Rat).SetInt64(tm.w)))
		total += tm.w
	}
	return s.Quo(s, new(big.Rat).SetInt64(total))
}

func TestAccumulatorMatchesBig(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{300, 7, 0, 50}
	for trial := range 20 {
		ts := randomTerms(rng, 1+rng.IntN(12), sizes)
		t.Run(fmt.Sprint("trial ", trial), func(t *testing.T) {
			checkAgainstBig(t, accumulateAll(t, sizes, ts), ts, sizes)
		})
	}
}

// TestAccumulatorSubnormalRounding pins the rounding at the bottom of the
// float32 range, where the result has fewer than 24 significant bits.
func TestAccumulatorSubnormalRounding(t *testing.T) {
	tiny := math.Float32frombits(1) // 2^-149
	for _, tc := range []struct {
		name  string
		terms []term
		want  float32
	}{
		{"half the smallest subnormal ties to 0", []term{{1, [][]float32{{tiny}}}, {1, [][]float32{{0}}}}, 0},
		{"three quarters rounds up", []term{{3, [][]float32{{tiny}}}, {1, [][]float32{{0}}}}, tiny},
		{"one and a half ties to even 2", []term{{1, [][]float32{{tiny}}}, {1, [][]float32{{2 * tiny}}}}, 2 * tiny},
		{"two and a half ties to even 2", []term{{1, [][]float32{{2 * tiny}}}, {1, [][]float32{{3 * tiny}}}}, 2 * tiny},
		{"just above half rounds up", []term{{1000001, [][]float32{{tiny}}}, {1000000, [][]float32{{0}}}}, tiny},
		// Rounding to 24 bits first would land on the tie and then go to 0.
		{"2^-31 above half rounds up", []term{{1<<30 + 1, [][]float32{{tiny}}}, {1<<30 - 1, [][]float32{{0}}}}, tiny},
		{"negative", []term{{3, [][]float32{{-tiny}}}, {1, [][]float32{{0}}}}, -tiny},
		{"far below", []term{{1, [][]float32{{tiny}}}, {MaxWeight, [][]float32{{0}}}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := accumulateAll(t, []int{1}, tc.terms)
			got, err := a.Mean()
			if err != nil {
				t.Fatal(err)
			}
			if math.Float32bits(got[0][0]) != math.Float32bits(tc.want) {
				t.Errorf("Mean = %g, want %g", got[0][0], tc.want)
			}
			ref, _ := bigMean(tc.terms, 0, 0).Float32()
			if math.Float32bits(ref) != math.Float32bits(tc.want) {
				t.Errorf("test expectation %g disagrees with math/big %g", tc.want, ref)
			}
		})
	}
}

// TestAccumulatorMatchesBigSubnormal compares means that land in the
// float32 subnormal range, where rounding to 24 bits first and then to the
// subnormal grid (double rounding) would be wrong now and then.
func TestAccumulatorMatchesBigSubnormal(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const size = 4000
	ts := make([]term, 3)
	for i := range ts {
		ts[i].w = 1 + rng.Int64N(MaxWeight)
		x := make([]float32, size)
		for j := range x {
			x[j] = math.Float32frombits(rng.Uint32N(1<<24) | rng.Uint32N(2)<<31) // subnormal or just above
		}
		ts[i].x = [][]float32{x}
	}
	got, err := accumulateAll(t, []int{size}, ts).Mean()
	if err != nil {
		t.Fatal(err)
	}
	for j := range size {
		want, _ := bigMean(ts, 0, j).Float32()
		if math.Float32bits(got[0][j]) != math.Float32bits(want) {
			t.Fatalf("[%d]: Mean %g (%#x), exact rounding %g (%#x)", j, got[0][j], math.Float32bits(got[0][j]), want, math.Float32bits(want))
		}
	}
}

func TestAccumulatorOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sizes := []int{64, 5}
	ts := randomTerms(rng, 9, sizes)
	want, err := accumulateAll(t, sizes, ts).Mean()
	if err != nil {
		t.Fatal(err)
	}
	for p := range 50 {
		rng.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		got, err := accumulateAll(t, sizes, ts).Mean()
		if err != nil {
			t.Fatal(err)
		}
		if i, j, ok := tensortest.FirstBitDiff(got, want); !ok {
			t.Fatalf("permutation %d: tensor %d [%d] = %g, first order gave %g", p, i, j, got[i][j], want[i][j])
		}
	}
}

// TestAccumulatorCancellation shows what a float sum gets wrong: large
// values that cancel must not swallow a small one, in any order.
func TestAccumulatorCancellation(t *testing.T) {
	big := float32(math.Ldexp(1, 48))
	terms := []term{
		{MaxWeight, [][]float32{{big, -1.5}}},
		{1, [][]float32{{1, -2.5}}},
		{MaxWeight, [][]float32{{-big, -1.5}}},
	}
	for _, order := range [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {2, 1, 0}} {
		a := mustAccumulator(t, []int{2})
		for _, i := range order {
			if err := a.Add(terms[i].w, terms[i].x); err != nil {
				t.Fatal(err)
			}
		}
		got, err := a.Mean()
		if err != nil {
			t.Fatal(err)
		}
		for j := range 2 {
			want, _ := bigMean(terms, 0, j).Float32()
			if got[0][j] != want {
				t.Errorf("order %v [%d]: mean %g, want %g", order, j, got[0][j], want)
			}
		}
		if got[0][0] == 0 {
			t.Errorf("order %v: the small term was lost", order)
		}
	}
}

func TestAccumulatorNegativeByHand(t *testing.T) {
	a := accumulateAll(t, []int{4}, []term{
		{3, [][]float32{{-3, -1.5, 1, -0.25}}},
		{1, [][]float32{{1, -2.5, -3, -0.25}}},
	})
	got, err := a.Mean()
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{-2, -1.75, 0, -0.25}
	for j := range want {
		if got[0][j] != want[j] || math.Signbit(float64(got[0][j])) != math.Signbit(float64(want[j])) {
			t.Errorf("[%d] = %g, want %g", j, got[0][j], want[j])
		}
	}
}

func TestAccumulatorIdenticalInputsComeBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, 2000)
	for i := range x {
		x[i] = randomValue(rng)
	}
	a := mustAccumulator(t, []int{len(x)})
	for range 7 {
		if err := a.Add(randomWeight(rng), [][]float32{x}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.Mean()
	if err != nil {
		t.Fatal(err)
	}
	for i := range x {
		// A zero mean is always +0: the sign of a zero sum is not kept.
		want := x[i]
		if want == 0 {
			want = 0
		}
		if math.Float32bits(got[0][i]) != math.Float32bits(want) {
			t.Fatalf("[%d] = %g (%#x), input %g (%#x)", i, got[0][i], math.Float32bits(got[0][i]), x[i], math.Float32bits(x[i]))
		}
	}
}

func TestAccumulatorRange(t *testing.T) {
	limit := float32(math.Ldexp(1, MaxTermLog2))
	below := math.Nextafter32(limit, 0)
	x49 := float32(math.Ldexp(1, 49))
	for _, tc := range []struct {
		name string
		w    int64
		x    float32
		ok   bool
	}{
		{"just below 2^80", 1, below, true},
		{"exactly 2^80", 1, limit, false},
		{"negative 2^80", 1, -limit, false},
		{"2 × 2^79", 2, limit / 2, false},
		{"max weight × 2^49", MaxWeight, x49, true},
		{"max weight × next float after 2^49", MaxWeight, math.Nextafter32(x49, limit), false},
		{"largest float32", 1, math.MaxFloat32, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := accumulateAll(t, []int{3}, []term{{5, [][]float32{{1, 2, 3}}}})
			err := a.Add(tc.w, [][]float32{{0.5, tc.x, -0.5}})
			if tc.ok {
				if err != nil {
					t.Fatalf("Add: %v", err)
				}
				got, _ := a.Mean()
				ref, _ := bigMean([]term{{5, [][]float32{{1, 2, 3}}}, {tc.w, [][]float32{{0.5, tc.x, -0.5}}}}, 0, 1).Float32()
				if got[0][1] != ref {
					t.Errorf("Mean %g, want %g", got[0][1], ref)
				}
				return
			}
			if !errors.Is(err, ErrOverflow) {
				t.Fatalf("Add = %v, want ErrOverflow", err)
			}
			// A rejected Add changes nothing.
			if a.Count() != 1 || a.Weight() != 5 {
				t.Errorf("after rejection Count %d Weight %d, want 1 and 5", a.Count(), a.Weight())
			}
			got, _ := a.Mean()
			if got[0][0] != 1 || got[0][1] != 2 || got[0][2] != 3 {
				t.Errorf("after rejection Mean = %v, want [1 2 3]", got[0])
			}
		})
	}
}

// TestAccumulatorFullHeadroom adds MaxTerms of the largest admissible term:
// the sum must neither overflow nor lose a bit, and one more Add is refused.
func TestAccumulatorFullHeadroom(t *testing.T) {
	if testing.Short() {
		t.Skip("adds 8M terms")
	}
	x := math.Nextafter32(float32(math.Ldexp(1, 49)), 0)
	a := mustAccumulator(t, []int{1})
	p := [][]float32{{x}}
	for range MaxTerms {
		if err := a.Add(MaxWeight, p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := a.Mean()
	if err != nil {
		t.Fatal(err)
	}
	if got[0][0] != x {
		t.Errorf("mean of %d copies of %g = %g", MaxTerms, x, got[0][0])
	}
	if err := a.Add(1, p); !errors.Is(err, ErrOverflow) {
		t.Errorf("Add beyond MaxTerms = %v, want ErrOverflow", err)
	}
}

func TestAccumulatorRejects(t *testing.T) {
	a := mustAccumulator(t, []int{2, 1})
	ok := [][]float32{{1, 2}, {3}}
	for _, tc := range []struct {
		name string
		w    int64
		x    [][]float32
		want error
	}{
		{"zero weight", 0, ok, ErrNumExamples},
		{"negative weight", -4, ok, ErrNumExamples},
		{"weight above MaxWeight", MaxWeight + 1, ok, ErrNumExamples},
		{"too few tensors", 1, ok[:1], ErrShape},
		{"too many tensors", 1, append(ok, []float32{1}), ErrShape},
		{"short tensor", 1, [][]float32{{1}, {3}}, ErrShape},
		{"NaN", 1, [][]float32{{1, float32(math.NaN())}, {3}}, ErrNonFinite},
		{"+Inf", 1, [][]float32{{1, 2}, {float32(math.Inf(1))}}, ErrNonFinite},
		{"-Inf", 1, [][]float32{{float32(math.Inf(-1)), 2}, {3}}, ErrNonFinite},
	} {
		if err := a.Add(tc.w, tc.x); !errors.Is(err, tc.want) {
			t.Errorf("%s: Add = %v, want %v", tc.name, err, tc.want)
		}
	}
	if a.Count() != 0 {
		t.Errorf("Count = %d after only rejected adds", a.Count())
	}
	if _, err := a.Mean(); !errors.Is(err, ErrNoUpdates) {
		t.Errorf("Mean of empty = %v, want ErrNoUpdates", err)
	}
	if _, err := New([]int{3, -1}); err == nil {
		t.Error("New with a negative size succeeded")
	}
}

func TestAccumulatorReset(t *testing.T) {
	a := accumulateAll(t, []int{2}, []term{{4, [][]float32{{1, -7}}}})
	a.Reset()
	if a.Count() != 0 || a.Weight() != 0 {
		t.Fatalf("after Reset Count %d Weight %d", a.Count(), a.Weight())
	}
	if err := a.Add(2, [][]float32{{0.5, 3}}); err != nil {
		t.Fatal(err)
	}
	got, _ := a.Mean()
	if got[0][0] != 0.5 || got[0][1] != 3 {
		t.Errorf("Mean after Reset = %v, want [0.5 3]", got[0])
	}
}
