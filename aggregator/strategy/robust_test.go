package strategy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/internal/tensortest"
)

// columns makes one update per client from per-coordinate values:
// vals[c][i] is client i's value of coordinate c. Example counts vary to
// show that the coordinate-wise rules ignore them.
func columns(vals ...[]float32) []Update {
	ups := make([]Update, len(vals[0]))
	for i := range ups {
		p := make([]float32, len(vals))
		for c := range vals {
			p[c] = vals[c][i]
		}
		ups[i] = Update{ClientID: fmt.Sprintf("c%d", i), NumExamples: int64(1 + 100*i), Params: [][]float32{p}}
	}
	return ups
}

func TestMedianByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "median"})
	odd := runRound(t, s, [][]float32{{0, 0, 0}}, columns(
		[]float32{1, 3, 2},
		[]float32{5, 4, 100},
		[]float32{-2, 0, 7},
	))
	assertBitEqual(t, "odd", odd, [][]float32{{2, 5, 0}})
	even := runRound(t, s, [][]float32{{0, 0}}, columns(
		[]float32{10, 1, 3, 2},
		[]float32{-1, -1e6, 1e6, 0.5},
	))
	// Middle two: (2+3)/2 = 2.5 and (−1+0.5)/2 = −0.25.
	assertBitEqual(t, "even", even, [][]float32{{2.5, -0.25}})
}

func TestTrimmedMeanByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "trimmedmean"}) // cuts 20%
	// 5 clients: int(0.2·5) = 1 cut from each end.
	got := runRound(t, s, [][]float32{{0, 0}}, columns(
		[]float32{4, 100, 1, 3, 2},
		[]float32{1.5, 0, -10, 0.5, 1},
	))
	// (2+3+4)/3 = 3; (0+0.5+1)/3 = 0.5.
	assertBitEqual(t, "beta 0.2, n 5", got, [][]float32{{3, 0.5}})

	// 10 clients: 2 cut from each end, the middle 6 averaged.
	got = runRound(t, s, [][]float32{{0}}, columns([]float32{-1e9, -50, 1, 2, 3, 4, 5, 6, 70, 1e9}))
	assertBitEqual(t, "beta 0.2, n 10", got, [][]float32{{3.5}})

	// 4 clients: int(0.2·4) = 0, plain mean.
	got = runRound(t, s, [][]float32{{0}}, columns([]float32{1, 2, 3, 10}))
	assertBitEqual(t, "beta 0.2, n 4", got, [][]float32{{4}})

	// Cutting 40% of 5 leaves the median.
	s = mustNew(t, Config{Name: "trimmedmean", TrimFraction: 0.4})
	got = runRound(t, s, [][]float32{{0}}, columns([]float32{9, -7, 1, 1000, 2}))
	assertBitEqual(t, "beta 0.4", got, [][]float32{{2}})
}

// krumUpdates returns 5 honest updates close to one another and 2 far
// outliers, the honest ones first.
func krumUpdates(rng *rand.Rand, sizes []int) (honest, all []Update) {
	for i := range 5 {
		honest = append(honest, Update{
			ClientID:    fmt.Sprintf("honest-%d", i),
			NumExamples: int64(10 + 7*i),
			Params:      randomParams(rng, sizes, 1, 0.01),
		})
	}
	all = append(all, honest...)
	for i := range 2 {
		all = append(all, Update{
			ClientID:    fmt.Sprintf("byzantine-%d", i),
			NumExamples: 1000, // claims many examples, to no avail
			Params:      randomParams(rng, sizes, 100*float64(1-2*i), 1),
		})
	}
	return honest, all
}

func TestKrumPicksHonestUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(50, 51))
	sizes := []int{30, 5}
	global := randomParams(rng, sizes, 0, 0)
	honest, all := krumUpdates(rng, sizes)
	s := mustNew(t, Config{Name: "krum", ByzantineF: 2}) // n = 7 > 2f+2 = 6
	got := runRound(t, s, global, shuffled(rng, all))
	for _, u := range honest {
		if _, _, ok := tensortest.FirstBitDiff(got, u.Params); ok {
			return
		}
	}
	t.Errorf("Krum returned %v…, not one of the honest updates", got[0][:3])
}

func TestKrumBreaksTiesByClientID(t *testing.T) {
	// Squared distances: a–b 4, a–c 101, b–c 101. With f = 0, k = n−f−2 = 1
	// neighbour: scores a 4, b 4, c 101. a and b tie; "a" < "b" wins, in
	// every arrival order.
	ups := []Update{
		{ClientID: "b", NumExamples: 1, Params: [][]float32{{2, 0}}},
		{ClientID: "a", NumExamples: 1, Params: [][]float32{{0, 0}}},
		{ClientID: "c", NumExamples: 1, Params: [][]float32{{1, 10}}},
	}
	for _, order := range [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}} {
		in := []Update{ups[order[0]], ups[order[1]], ups[order[2]]}
		got := runRound(t, mustNew(t, Config{Name: "krum"}), [][]float32{{0, 0}}, in)
		assertBitEqual(t, fmt.Sprint("order ", order), got, [][]float32{{0, 0}})
	}
}

// TestKrumScoresNearestNeighboursOnly pins the score to the n − f − 2
// nearest neighbours, not all of them. In 1-D with f = 1 and n = 5 (k = 2):
// points 0, 5, 10 and a coincident pair at 16. Scores: 0 → 25+100 = 125,
// 5 → 25+25 = 50, 10 → 25+36 = 61, 16 → 0+36 = 36 (twice). Krum picks 16
// (the pair; "d" before "e"), where summing all distances would pick 5.
func TestKrumScoresNearestNeighboursOnly(t *testing.T) {
	ups := []Update{
		{ClientID: "a", NumExamples: 1, Params: [][]float32{{0}}},
		{ClientID: "b", NumExamples: 1, Params: [][]float32{{5}}},
		{ClientID: "c", NumExamples: 1, Params: [][]float32{{10}}},
		{ClientID: "d", NumExamples: 1, Params: [][]float32{{16}}},
		{ClientID: "e", NumExamples: 1, Params: [][]float32{{16}}},
	}
	got := runRound(t, mustNew(t, Config{Name: "krum", ByzantineF: 1}), [][]float32{{0}}, ups)
	assertBitEqual(t, "krum", got, [][]float32{{16}})
	// Multi-Krum with m = 3 averages 16, 16 and 5 (score 50): 37/3.
	got = runRound(t, mustNew(t, Config{Name: "multikrum", ByzantineF: 1, MultiKrumM: 3}), [][]float32{{0}}, ups)
	assertBitEqual(t, "multikrum", got, [][]float32{{float32(37.0 / 3)}})
}

func TestMultiKrumAveragesHonestUpdates(t *testing.T) {
	rng := rand.New(rand.NewPCG(52, 53))
	sizes := []int{30, 5}
	global := randomParams(rng, sizes, 0, 0)
	honest, all := krumUpdates(rng, sizes)
	acc, err := accumulator.New(sizes)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range honest {
		if err := acc.Add(u.NumExamples, u.Params); err != nil {
			t.Fatal(err)
		}
	}
	want, err := acc.Mean()
	if err != nil {
		t.Fatal(err)
	}
	// m = 0 means n − f = 5: exactly the honest ones, weighted by examples.
	got := runRound(t, mustNew(t, Config{Name: "multikrum", ByzantineF: 2}), global, shuffled(rng, all))
	assertBitEqual(t, "multikrum", got, want)

	// m = 1 is Krum.
	krum := runRound(t, mustNew(t, Config{Name: "krum", ByzantineF: 2}), global, all)
	got = runRound(t, mustNew(t, Config{Name: "multikrum", ByzantineF: 2, MultiKrumM: 1}), global, all)
	assertBitEqual(t, "multikrum m=1", got, krum)
}

func TestKrumNeedsEnoughUpdates(t *testing.T) {
	rng := rand.New(rand.NewPCG(54, 55))
	sizes := []int{4}
	_, all := krumUpdates(rng, sizes)
	for _, cfg := range []Config{{Name: "krum", ByzantineF: 2}, {Name: "multikrum", ByzantineF: 2}} {
		r, err := mustNew(t, cfg).Begin([][]float32{{0, 0, 0, 0}})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range all[:6] { // n = 6 = 2f+2
			if err := r.Add(u); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Finish(); !errors.Is(err, ErrTooFewUpdates) {
			t.Fatalf("%s: Finish with n = 2f+2 = %v, want ErrTooFewUpdates", cfg.Name, err)
		}
		// The round stays open: one more update and it finishes.
		if err := r.Add(all[6]); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Finish(); err != nil {
			t.Errorf("%s: Finish with n = 7: %v", cfg.Name, err)
		}
	}
	// Multi-Krum's m may not exceed n − f.
	r, err := mustNew(t, Config{Name: "multikrum", ByzantineF: 2, MultiKrumM: 6}).Begin([][]float32{{0, 0, 0, 0}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range all {
		if err := r.Add(u); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Finish(); !errors.Is(err, ErrTooFewUpdates) {
		t.Errorf("multikrum m = 6 > n − f = 5: Finish = %v, want ErrTooFewUpdates", err)
	}
}

func TestSquaredDistanceMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(56, 57))
	for _, n := range []int{0, 1, 3, 4, 7, 1001} {
		a, b := randomParams(rng, []int{n}, 0, 1)[0], randomParams(rng, []int{n}, 0, 1)[0]
		var want float64
		for i := range a {
			d := float64(a[i]) - float64(b[i])
			want += d * d
		}
		if got := squaredDistance(a, b); math.Abs(got-want) > 1e-12*math.Max(1, want) {
			t.Errorf("n=%d: %v, naive %v", n, got, want)
		}
	}
}

func TestOrderKeyRoundTrip(t *testing.T) {
	vals := []float32{float32(math.Inf(-1)), -math.MaxFloat32, -1, -math.SmallestNonzeroFloat32, float32(math.Copysign(0, -1)), 0,
		math.SmallestNonzeroFloat32, 1, math.MaxFloat32, float32(math.Inf(1))}
	for i, x := range vals {
		if got := fromOrderKey(orderKey(x)); math.Float32bits(got) != math.Float32bits(x) {
			t.Errorf("round trip of %g gave %g", x, got)
		}
		if i > 0 && orderKey(vals[i-1]) >= orderKey(x) {
			t.Errorf("orderKey(%g) >= orderKey(%g)", vals[i-1], x)
		}
	}
}
