package privacy

import (
	"errors"
	"math"
	"testing"
)

// TestGaussianClosedForm: with q = 1 every round is the Gaussian mechanism,
// RDP α/(2z²); composed over T rounds and converted, the optimal real
// order gives ε = c + 2√(c·log(1/δ)) with c = T/(2z²).
func TestGaussianClosedForm(t *testing.T) {
	for _, tc := range []struct {
		z     float64
		steps int
		delta float64
	}{{1, 1, 1e-5}, {1.1, 100, 1e-5}, {0.5, 10, 1e-6}, {5, 1000, 1e-3}} {
		c := float64(tc.steps) / (2 * tc.z * tc.z)
		l := math.Log(1 / tc.delta)
		want := c + 2*math.Sqrt(c*l)
		got, order, err := Epsilon(1, tc.z, tc.steps, tc.delta)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("z=%v T=%d δ=%v: ε = %v, want %v", tc.z, tc.steps, tc.delta, got, want)
		}
		// The closed form is the minimum over real orders: a fine grid never
		// beats it and comes within the grid's resolution.
		var grid []float64
		for a := 1.001; a < 2000; a *= 1.0005 {
			grid = append(grid, a)
		}
		g, ga, err := EpsilonAtOrders(1, tc.z, tc.steps, tc.delta, grid)
		if err != nil {
			t.Fatal(err)
		}
		if g < got || g-got > 1e-6*got {
			t.Errorf("z=%v T=%d: grid minimum %v at α=%v vs closed form %v at α=%v", tc.z, tc.steps, g, ga, got, order)
		}
		r, err := SampledGaussianRDP(1, tc.z, 7.5)
		if err != nil || r != 7.5/(2*tc.z*tc.z) {
			t.Errorf("RDP(q=1, z=%v, α=7.5) = %v, %v", tc.z, r, err)
		}
	}
}

// integratedA computes A_α = E_{x∼N(0,z²)}[((1−q) + q·exp((2x−1)/(2z²)))^α]
// by composite Simpson quadrature: the definition of the sampled Gaussian's
// Rényi moment, independent of the binomial expansion under test.
func integratedA(q, z, alpha float64) float64 {
	lo, hi := -30*z, 30*z+alpha+1
	const n = 200000
	h := (hi - lo) / n
	f := func(x float64) float64 {
		dens := math.Exp(-x*x/(2*z*z)) / (z * math.Sqrt(2*math.Pi))
		ratio := (1 - q) + q*math.Exp((2*x-1)/(2*z*z))
		return dens * math.Pow(ratio, alpha)
	}
	s := f(lo) + f(hi)
	for i := 1; i < n; i++ {
		w := 2.0
		if i%2 == 1 {
			w = 4
		}
		s += w * f(lo+float64(i)*h)
	}
	return s * h / 3
}

func TestSampledGaussianMatchesIntegral(t *testing.T) {
	for _, tc := range []struct{ q, z, alpha float64 }{
		{0.01, 1, 2}, {0.01, 1.1, 8}, {0.1, 0.8, 3}, {0.5, 2, 6}, {0.9, 1.5, 4}, {0.001, 4, 32},
	} {
		got, err := SampledGaussianRDP(tc.q, tc.z, tc.alpha)
		if err != nil {
			t.Fatal(err)
		}
		want := math.Log(integratedA(tc.q, tc.z, tc.alpha)) / (tc.alpha - 1)
		if math.Abs(got-want) > 1e-9*math.Max(1, want) && math.Abs(got-want)/want > 1e-7 {
			t.Errorf("q=%v z=%v α=%v: RDP %v, integral gives %v", tc.q, tc.z, tc.alpha, got, want)
		}
	}
	// As q → 1 the expansion tends to the Gaussian's α/(2z²).
	got, err := SampledGaussianRDP(1-1e-12, 1.3, 9)
	if want := 9 / (2 * 1.3 * 1.3); err != nil || math.Abs(got-want) > 1e-9 {
		t.Errorf("q→1: RDP %v (%v), want %v", got, err, want)
	}
}

// TestPublishedFigures compares with figures others published for the same
// mechanism:
//   - Abadi et al. 2016, §3.1: q = 0.01, σ = 4, δ = 1e-5, 10,000 steps give
//     ε ≈ 1.26 with the moments accountant (standard conversion);
//   - Opacus's compute_dp_sgd_privacy documentation: q = 0.01, z = 1.0, 300
//     steps, orders {2, 5, 10, 20, 100}, δ = 1e-5 give ε = 2.39 at α = 5
//     (Opacus uses the tighter conversion of Balle et al. 2020).
func TestPublishedFigures(t *testing.T) {
	eps, _, err := Epsilon(0.01, 4, 10000, 1e-5)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(eps-1.26) > 0.005 {
		t.Errorf("Abadi et al. setting: ε = %v, published ≈ 1.26", eps)
	}
	orders := []float64{2, 5, 10, 20, 100}
	rdp := make([]float64, len(orders))
	for i, a := range orders {
		r, err := SampledGaussianRDP(0.01, 1, a)
		if err != nil {
			t.Fatal(err)
		}
		rdp[i] = 300 * r
	}
	eps, order, err := EpsilonFromRDPTight(orders, rdp, 1e-5)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(eps-2.39) > 0.005 || order != 5 {
		t.Errorf("Opacus setting: ε = %v at α = %v, published 2.39 at α = 5", eps, order)
	}
	std, _, err := EpsilonFromRDP(orders, rdp, 1e-5)
	if err != nil || std < eps {
		t.Errorf("standard conversion %v (%v) below the tight one %v", std, err, eps)
	}
}

func TestEpsilonMonotone(t *testing.T) {
	prev := 0.0
	for _, steps := range []int{1, 10, 100, 1000} {
		e, _, err := Epsilon(0.05, 1.1, steps, 1e-5)
		if err != nil {
			t.Fatal(err)
		}
		if !(e > prev) {
			t.Errorf("ε(%d steps) = %v not above %v", steps, e, prev)
		}
		prev = e
	}
	prev = math.Inf(1)
	for _, z := range []float64{0.7, 1, 2, 5} {
		e, _, err := Epsilon(0.05, z, 100, 1e-5)
		if err != nil {
			t.Fatal(err)
		}
		if !(e < prev) {
			t.Errorf("ε(z=%v) = %v not below %v", z, e, prev)
		}
		prev = e
	}
	if e, _, err := Epsilon(0.3, 1, 0, 1e-5); err != nil || e != 0 {
		t.Errorf("zero steps: ε = %v, %v", e, err)
	}
}

func TestBadParams(t *testing.T) {
	for _, tc := range []struct {
		q, z  float64
		steps int
		delta float64
	}{
		{0, 1, 1, 1e-5}, {1.5, 1, 1, 1e-5}, {math.NaN(), 1, 1, 1e-5},
		{0.1, 0, 1, 1e-5}, {0.1, -1, 1, 1e-5}, {0.1, math.Inf(1), 1, 1e-5},
		{0.1, 1, -1, 1e-5}, {0.1, 1, 1, 0}, {0.1, 1, 1, 1}, {0.1, 1, 1, math.NaN()},
	} {
		if _, _, err := Epsilon(tc.q, tc.z, tc.steps, tc.delta); !errors.Is(err, ErrParams) {
			t.Errorf("Epsilon(%v, %v, %v, %v) = %v, want ErrParams", tc.q, tc.z, tc.steps, tc.delta, err)
		}
	}
	for _, a := range []float64{1, 0.5, 2.5, math.Inf(1), math.NaN(), maxOrder + 1} {
		if _, err := SampledGaussianRDP(0.1, 1, a); !errors.Is(err, ErrParams) {
			t.Errorf("order %v: %v, want ErrParams", a, err)
		}
	}
	if _, _, err := EpsilonFromRDP([]float64{2}, []float64{1, 2}, 1e-5); !errors.Is(err, ErrParams) {
		t.Errorf("mismatched lengths: %v", err)
	}
}
