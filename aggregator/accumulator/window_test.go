package accumulator

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/tensortest"
)

// scaledTerms draws terms whose values sit around 2^shift for a shift that
// changes from term to term, so that later terms fall outside the windows
// the first ones chose (above and below), and weights that need several
// folds (above maxPartWeight).
func scaledTerms(rng *rand.Rand, n int, sizes []int) []term {
	ts := make([]term, n)
	for i := range ts {
		ts[i].w = randomWeight(rng)
		shift := rng.IntN(80) - 60
		ts[i].x = make([][]float32, len(sizes))
		for t, sz := range sizes {
			ts[i].x[t] = make([]float32, sz)
			for j := range ts[i].x[t] {
				v := float32(math.Ldexp(rng.NormFloat64(), shift))
				if rng.IntN(20) == 0 {
					v = randomValue(rng)
				}
				ts[i].x[t][j] = v
			}
		}
	}
	return ts
}

// checkAgainstBig compares every coordinate of a's Mean and Mean64 with the
// exactly rounded mean of ts.
func checkAgainstBig(t *testing.T, a *Accumulator, ts []term, sizes []int) {
	t.Helper()
	got32, err := a.Mean()
	if err != nil {
		t.Fatal(err)
	}
	got64, err := a.Mean64()
	if err != nil {
		t.Fatal(err)
	}
	for tn := range sizes {
		for j := range sizes[tn] {
			want := bigMean(ts, tn, j)
			w32, _ := want.Float32()
			w64, _ := want.Float64()
			if math.Float32bits(got32[tn][j]) != math.Float32bits(w32) || math.Float64bits(got64[tn][j]) != math.Float64bits(w64) {
				t.Fatalf("tensor %d [%d]: Mean %g / Mean64 %g, exact roundings %g / %g", tn, j, got32[tn][j], got64[tn][j], w32, w64)
			}
		}
	}
}

// TestAccumulatorOutsideWindows sends values far above and below the
// windows the first update chose, so both the dense sums and the wide
// fallback hold parts of the same coordinates.
func TestAccumulatorOutsideWindows(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	sizes := []int{600, 13, 256, 1}
	for range 5 {
		ts := scaledTerms(rng, 10, sizes)
		checkAgainstBig(t, accumulateAll(t, sizes, ts), ts, sizes)
	}
}

// TestAccumulatorManyHeavyFolds makes lo carry into hi many times
// (renormEvery) with the largest weights, whose folds are split in parts,
// and values at the top of their windows.
func TestAccumulatorManyHeavyFolds(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	sizes := []int{40}
	ts := make([]term, 300)
	for i := range ts {
		x := make([]float32, sizes[0])
		for j := range x {
			// Just below 2^(top−127) for a window chosen at 2^-1: its top.
			x[j] = float32(math.Ldexp(1-rng.Float64()/1e6, winHeadroom)) * float32(1-2*rng.IntN(2))
		}
		x[0] = 0.5
		ts[i] = term{w: MaxWeight - rng.Int64N(3), x: [][]float32{x}}
	}
	checkAgainstBig(t, accumulateAll(t, sizes, ts), ts, sizes)
}

// TestAccumulatorDenseWeightLimit folds more weight than the dense sums
// may hold, so they are moved into the wide ones along the way.
func TestAccumulatorDenseWeightLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	sizes := []int{9}
	n := int(denseWeightLimit/MaxWeight) + 50
	ts := make([]term, n)
	for i := range ts {
		x := make([]float32, sizes[0])
		for j := range x {
			x[j] = float32(rng.NormFloat64())
		}
		ts[i] = term{w: MaxWeight, x: [][]float32{x}}
	}
	a := accumulateAll(t, sizes, ts)
	if a.denseWeight >= int64(n)*MaxWeight {
		t.Fatalf("dense weight %d: the dense sums were never moved out", a.denseWeight)
	}
	checkAgainstBig(t, a, ts, sizes)
}

// TestAccumulatorMerge splits terms among workers, merges the partials in
// several groupings and orders, and expects the bits of one accumulator.
func TestAccumulatorMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	sizes := []int{700, 3, 0, 260}
	ts := append(randomTerms(rng, 12, sizes), scaledTerms(rng, 12, sizes)...)
	one := accumulateAll(t, sizes, ts)
	want, err := one.Mean()
	if err != nil {
		t.Fatal(err)
	}
	want64, _ := one.Mean64()
	for trial := range 6 {
		rng.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		workers := 1 + trial
		parts := make([]*Accumulator, workers)
		for w := range parts {
			parts[w] = mustAccumulator(t, sizes)
		}
		for i, tm := range ts {
			if err := parts[rng.IntN(workers)].Add(tm.w, tm.x); err != nil {
				t.Fatalf("term %d: %v", i, err)
			}
		}
		leader := mustAccumulator(t, sizes)
		for _, w := range rng.Perm(workers) {
			if err := leader.Merge(parts[w]); err != nil {
				t.Fatal(err)
			}
		}
		if leader.Count() != one.Count() || leader.Weight() != one.Weight() {
			t.Fatalf("%d workers: Count %d Weight %d, want %d %d", workers, leader.Count(), leader.Weight(), one.Count(), one.Weight())
		}
		got, err := leader.Mean()
		if err != nil {
			t.Fatal(err)
		}
		if i, j, ok := tensortest.FirstBitDiff(got, want); !ok {
			t.Fatalf("%d workers: tensor %d [%d] = %g, one accumulator %g", workers, i, j, got[i][j], want[i][j])
		}
		got64, _ := leader.Mean64()
		for i := range got64 {
			for j := range got64[i] {
				if math.Float64bits(got64[i][j]) != math.Float64bits(want64[i][j]) {
					t.Fatalf("%d workers: Mean64 tensor %d [%d] = %g, one accumulator %g", workers, i, j, got64[i][j], want64[i][j])
				}
			}
		}
		// A merged accumulator keeps accumulating exactly.
		extra := randomTerms(rng, 2, sizes)
		for _, tm := range extra {
			if err := leader.Add(tm.w, tm.x); err != nil {
				t.Fatal(err)
			}
		}
		checkAgainstBig(t, leader, append(append([]term(nil), ts...), extra...), sizes)
	}
}

func TestAccumulatorMergeRejects(t *testing.T) {
	a := accumulateAll(t, []int{2, 1}, []term{{3, [][]float32{{1, 2}, {3}}}})
	if err := a.Merge(mustAccumulator(t, []int{2, 2})); !errors.Is(err, ErrShape) {
		t.Errorf("Merge of other shapes = %v, want ErrShape", err)
	}
	if err := a.Merge(mustAccumulator(t, []int{2})); !errors.Is(err, ErrShape) {
		t.Errorf("Merge of fewer tensors = %v, want ErrShape", err)
	}
	if err := a.Merge(a); err == nil {
		t.Error("Merge with itself succeeded")
	}
	full := mustAccumulator(t, []int{2, 1})
	full.count = MaxTerms
	if err := a.Merge(full); !errors.Is(err, ErrOverflow) {
		t.Errorf("Merge beyond MaxTerms = %v, want ErrOverflow", err)
	}
	if err := a.Merge(mustAccumulator(t, []int{2, 1})); err != nil {
		t.Errorf("Merge of an empty accumulator: %v", err)
	}
	got, _ := a.Mean()
	if a.Count() != 1 || got[0][0] != 1 || got[0][1] != 2 || got[1][0] != 3 {
		t.Errorf("after rejected merges Count %d Mean %v", a.Count(), got)
	}
}

func TestAccumulatorMarshalRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	sizes := []int{530, 0, 7}
	ts := append(scaledTerms(rng, 8, sizes), randomTerms(rng, 8, sizes)...)
	a := accumulateAll(t, sizes, ts)
	data, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := a.Mean()
	for name, into := range map[string]*Accumulator{"zero value": new(Accumulator), "shaped": mustAccumulator(t, sizes)} {
		if err := into.UnmarshalBinary(data); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if into.Count() != a.Count() || into.Weight() != a.Weight() {
			t.Fatalf("%s: Count %d Weight %d, want %d %d", name, into.Count(), into.Weight(), a.Count(), a.Weight())
		}
		got, err := into.Mean()
		if err != nil {
			t.Fatal(err)
		}
		if i, j, ok := tensortest.FirstBitDiff(got, want); !ok {
			t.Fatalf("%s: tensor %d [%d] = %g, want %g", name, i, j, got[i][j], want[i][j])
		}
		again, _ := into.MarshalBinary()
		if string(again) != string(data) {
			t.Fatalf("%s: re-marshalled state differs", name)
		}
		// The decoded state accumulates and merges on, exactly.
		extra := scaledTerms(rng, 3, sizes)
		for _, tm := range extra {
			if err := into.Add(tm.w, tm.x); err != nil {
				t.Fatal(err)
			}
		}
		checkAgainstBig(t, into, append(append([]term(nil), ts...), extra...), sizes)
	}
	empty, _ := mustAccumulator(t, sizes).MarshalBinary()
	e := new(Accumulator)
	if err := e.UnmarshalBinary(empty); err != nil || e.Count() != 0 {
		t.Fatalf("empty round trip: %v, Count %d", err, e.Count())
	}
}

func TestAccumulatorUnmarshalRejects(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	sizes := []int{300, 5}
	a := accumulateAll(t, sizes, scaledTerms(rng, 4, sizes))
	data, _ := a.MarshalBinary()
	for n := range len(data) {
		if err := new(Accumulator).UnmarshalBinary(data[:n]); !errors.Is(err, ErrBadState) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrBadState", n, len(data), err)
		}
	}
	if err := new(Accumulator).UnmarshalBinary(append(append([]byte(nil), data...), 0)); !errors.Is(err, ErrBadState) {
		t.Errorf("trailing byte: %v", err)
	}
	if err := mustAccumulator(t, []int{300, 6}).UnmarshalBinary(data); !errors.Is(err, ErrShape) {
		t.Errorf("other shapes: %v, want ErrShape", err)
	}
	// A dense lo beyond its bound would let later folds round.
	b := mustAccumulator(t, []int{1})
	if err := b.Add(1, [][]float32{{1}}); err != nil {
		t.Fatal(err)
	}
	good, _ := b.MarshalBinary()
	bad := append([]byte(nil), good...)
	loAt := len(bad) - 8
	copyFloat(bad[loAt:], math.Ldexp(1, loBits))
	if err := new(Accumulator).UnmarshalBinary(bad); !errors.Is(err, ErrBadState) {
		t.Errorf("lo out of range: %v", err)
	}
	copyFloat(bad[loAt:], 0.5)
	if err := new(Accumulator).UnmarshalBinary(bad); !errors.Is(err, ErrBadState) {
		t.Errorf("lo not an integer: %v", err)
	}
	copyFloat(bad[loAt:], math.NaN())
	if err := new(Accumulator).UnmarshalBinary(bad); !errors.Is(err, ErrBadState) {
		t.Errorf("lo NaN: %v", err)
	}
	// Random corruption: an error or a state within bounds, never a panic.
	for range 2000 {
		c := append([]byte(nil), data...)
		c[rng.IntN(len(c))] ^= byte(1 << rng.IntN(8))
		var d Accumulator
		if err := d.UnmarshalBinary(c); err == nil && d.Count() > 0 {
			if _, err := d.Mean(); err != nil {
				t.Fatalf("accepted corrupt state fails Mean: %v", err)
			}
		}
	}
	// The state is unchanged by a failed unmarshal.
	before, _ := a.Mean()
	if err := a.UnmarshalBinary(data[:10]); err == nil {
		t.Fatal("truncated input accepted")
	}
	after, _ := a.Mean()
	if _, _, ok := tensortest.FirstBitDiff(before, after); !ok {
		t.Error("a failed unmarshal changed the accumulator")
	}
}

func copyFloat(b []byte, v float64) {
	u := math.Float64bits(v)
	for i := range 8 {
		b[i] = byte(u >> (8 * i))
	}
}

// TestAccumulatorCarries repeats a term whose low part is odd and just
// below 2^(L-1): without the carries into hi every renormEvery folds, lo
// would pass 2^53 and round.
func TestAccumulatorCarries(t *testing.T) {
	// w × m = 2^47 − 1 with m a float32 significand and w < 2^29.
	const m, w = 13264529, 2351 * 4513
	// x[0] = 1 sets the window to e0 = 127 + 4 − 31; x[1] = m × 2^(e0−150)
	// sits at its bottom, so its t is w × m itself.
	x := [][]float32{{1, float32(math.Ldexp(m, 127+winHeadroom-winBinades+1-150))}}
	a := mustAccumulator(t, []int{2})
	ts := make([]term, 5*renormEvery)
	for i := range ts {
		ts[i] = term{w, x}
		if err := a.Add(w, x); err != nil {
			t.Fatal(err)
		}
	}
	if a.blocks[0].e0 != 127+winHeadroom-winBinades+1 {
		t.Fatalf("window e0 = %d, the test assumes %d", a.blocks[0].e0, 127+winHeadroom-winBinades+1)
	}
	checkAgainstBig(t, a, ts, []int{2})
}
