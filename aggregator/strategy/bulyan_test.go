package strategy

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestBulyanByHand traces Bulyan with f = 1 on 7 one-dimensional updates
// (client ids c0..c6 in the order given, so ties go to the earlier one):
//
//	values −100, 0, 1, 2, 3, 4, 1000; θ = 5, β = 3.
//	Krum, k = 4 nearest: scores 0→30, 1→15, 2→10, 3→15, 4→30: pick 2.
//	k = 3: 0→26, 1→14, 3→14, 4→26: tie, pick 1 (c2 before c4).
//	k = 2: 0→25, 3→10, 4→17: pick 3.
//	k = 1: 0→16, 4→16: tie, pick 0.
//	k = 1: −100→10816, 4→10816, 1000→992016: tie, pick −100.
//	selected −100, 0, 1, 2, 3; median 1; the 3 closest are 1, 0, 2
//	(0 and 2 tie at distance 1; both are taken); mean 1.
//
// A second coordinate, equal for all but one client, shows the
// coordinate-wise step: the selection is the same clients', and the three
// values closest to the median are averaged.
func TestBulyanByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "bulyan", ByzantineF: 1})
	got := runRound(t, s, [][]float32{{0, 0}}, columns(
		[]float32{-100, 0, 1, 2, 3, 4, 1000},
		[]float32{0.5, 0.25, 0.75, 8, 0.5, 0, 0},
	))
	// Second coordinate of the selected clients c0..c4: 0.5, 0.25, 0.75,
	// 8, 0.5. Median 0.5; closest three 0.5, 0.5, then 0.25 and 0.75 tie
	// at 0.25 and the lower is taken: (0.5 + 0.5 + 0.25)/3.
	want := float32((0.5 + 0.5 + 0.25) / 3.0)
	assertBitEqual(t, "bulyan f=1", got, [][]float32{{1, want}})
}

// TestBulyanWithoutByzantineIsTheMean: with f = 0 every update is selected
// and all are averaged, unweighted.
func TestBulyanWithoutByzantineIsTheMean(t *testing.T) {
	got := runRound(t, mustNew(t, Config{Name: "bulyan"}), [][]float32{{0, 0}}, columns(
		[]float32{1, 2, 3, 10},
		[]float32{-1, -2, 0.5, 0.5},
	))
	assertBitEqual(t, "bulyan f=0", got, [][]float32{{4, -0.5}})
}

// bulyanReference is an independent, exact implementation: squared
// distances and means in big.Rat, selection by the definition, each
// coordinate's β values closest to the median chosen by sorting on
// (distance, value).
func bulyanReference(ups []Update, f int) []float32 {
	ups = slices.Clone(ups)
	slices.SortFunc(ups, func(a, b Update) int { return cmp.Compare(a.ClientID, b.ClientID) })
	n := len(ups)
	rat := func(x float32) *big.Rat { return new(big.Rat).SetFloat64(float64(x)) }
	dist := func(a, b Update) *big.Rat {
		s := new(big.Rat)
		for i := range a.Params[0] {
			d := new(big.Rat).Sub(rat(a.Params[0][i]), rat(b.Params[0][i]))
			s.Add(s, d.Mul(d, d))
		}
		return s
	}
	remaining := slices.Clone(ups)
	var selected []Update
	for len(selected) < n-2*f {
		best := -1
		var bestScore *big.Rat
		k := max(1, len(remaining)-f-2)
		for i, a := range remaining {
			var ds []*big.Rat
			for j, b := range remaining {
				if j != i {
					ds = append(ds, dist(a, b))
				}
			}
			slices.SortFunc(ds, func(x, y *big.Rat) int { return x.Cmp(y) })
			score := new(big.Rat)
			for _, d := range ds[:min(k, len(ds))] {
				score.Add(score, d)
			}
			if best < 0 || score.Cmp(bestScore) < 0 {
				best, bestScore = i, score
			}
		}
		selected = append(selected, remaining[best])
		remaining = slices.Delete(remaining, best, best+1)
	}
	beta := n - 4*f
	out := make([]float32, len(ups[0].Params[0]))
	for c := range out {
		var vals []float32
		for _, u := range selected {
			vals = append(vals, u.Params[0][c])
		}
		slices.Sort(vals)
		med := median(func() []uint32 {
			keys := make([]uint32, len(vals))
			for i, v := range vals {
				keys[i] = orderKey(v)
			}
			return keys
		}())
		slices.SortStableFunc(vals, func(a, b float32) int {
			da := new(big.Rat).Abs(new(big.Rat).Sub(rat(a), rat(med)))
			db := new(big.Rat).Abs(new(big.Rat).Sub(rat(b), rat(med)))
			return da.Cmp(db)
		})
		sum := new(big.Rat)
		for _, v := range vals[:beta] {
			sum.Add(sum, rat(v))
		}
		out[c], _ = sum.Quo(sum, big.NewRat(int64(beta), 1)).Float32()
	}
	return out
}

// TestBulyanMatchesReference compares with the exact reference on random
// updates with outliers. The implementation sums the β values in float64
// before rounding to float32, so it may differ from the correctly rounded
// mean by one unit in the last place, never more.
func TestBulyanMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(50, 51))
	for trial := range 20 {
		f := trial % 3
		n := 4*f + 3 + rng.IntN(6)
		var ups []Update
		for i := range n {
			spread := 0.1
			if i < f {
				spread = 50 // Byzantine-looking outliers
			}
			ups = append(ups, Update{ClientID: fmt.Sprintf("u%02d", rng.IntN(1000)*100+i), NumExamples: 1 + rng.Int64N(50),
				Params: randomParams(rng, []int{9}, 0, spread)})
		}
		got := runRound(t, mustNew(t, Config{Name: "bulyan", ByzantineF: f}), [][]float32{make([]float32, 9)}, ups)
		want := bulyanReference(ups, f)
		for c := range want {
			a, b := math.Float32bits(got[0][c]), math.Float32bits(want[c])
			if d := int64(a) - int64(b); d > 1 || d < -1 {
				t.Fatalf("trial %d (n=%d, f=%d) coordinate %d: %v, reference %v", trial, n, f, c, got[0][c], want[c])
			}
		}
	}
}

func TestBulyanNeedsEnoughUpdates(t *testing.T) {
	s := mustNew(t, Config{Name: "bulyan", ByzantineF: 2})
	r, err := s.Begin([][]float32{{0}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := r.Add(Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{float32(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Finish(); !errors.Is(err, ErrTooFewUpdates) {
		t.Fatalf("Finish with 10 < 4f+3 = 11 updates: %v, want ErrTooFewUpdates", err)
	}
	if err := r.Add(Update{ClientID: "10", NumExamples: 1, Params: [][]float32{{10}}}); err != nil {
		t.Fatalf("the round did not stay open: %v", err)
	}
	got, err := r.Finish()
	if err != nil {
		t.Fatal(err)
	}
	var ups []Update
	for i := range 11 {
		ups = append(ups, Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{float32(i)}}})
	}
	assertBitEqual(t, "11 updates", got, [][]float32{bulyanReference(ups, 2)})
}

// TestByzantineSignFlip: 50 clients, 10 of them send their update's delta
// sign-flipped and scaled by 10. FedAvg lands far from the honest mean;
// the robust rules stay close to it.
func TestByzantineSignFlip(t *testing.T) {
	rng := rand.New(rand.NewPCG(60, 61))
	const dim = 40
	global := randomParams(rng, []int{dim}, 0, 1)
	target := randomParams(rng, []int{dim}, 0, 1) // the honest clients' common direction
	var ups []Update
	honestMean := make([]float64, dim)
	for i := range 50 {
		p := make([]float32, dim)
		for j := range p {
			delta := float64(target[0][j]) + rng.NormFloat64()*0.05
			if i < 10 {
				delta *= -10
			} else {
				honestMean[j] += delta / 40
			}
			p[j] = global[0][j] + float32(delta)
		}
		ups = append(ups, Update{ClientID: fmt.Sprintf("client-%02d", i), NumExamples: 100, Params: [][]float32{p}})
	}
	var honestNorm float64
	for _, d := range honestMean {
		honestNorm += d * d
	}
	honestNorm = math.Sqrt(honestNorm)
	rel := func(out [][]float32) float64 {
		var s float64
		for j, x := range out[0] {
			d := float64(x) - float64(global[0][j]) - honestMean[j]
			s += d * d
		}
		return math.Sqrt(s) / honestNorm
	}
	cfg := Config{ByzantineF: 10, TrimFraction: 0.2}
	for _, tc := range []struct {
		name   string
		within float64 // bound on ‖result − honest mean‖ / ‖honest mean‖
		above  float64 // or, for FedAvg, a lower bound
	}{
		{"fedavg", 0, 1}, // (40·1 − 10·10)/50 = −1.2: off by 2.2× the honest step
		{"fedmedian", 0.1, 0},
		{"fedtrimmedavg", 0.1, 0},
		{"krum", 0.1, 0},
		{"multikrum", 0.1, 0},
		{"bulyan", 0.1, 0},
	} {
		cfg.Name = tc.name
		got := rel(runRound(t, mustNew(t, cfg), global, shuffled(rng, ups)))
		t.Logf("%-14s relative error %.4f", tc.name, got)
		if tc.above > 0 && got < tc.above {
			t.Errorf("%s: relative error %.3f, expected the attack to move it by more than %v", tc.name, got, tc.above)
		}
		if tc.within > 0 && got > tc.within {
			t.Errorf("%s: relative error %.3f, want at most %v", tc.name, got, tc.within)
		}
	}
}
