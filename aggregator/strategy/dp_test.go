package strategy

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy/privacy"
)

func norm64(ps [][]float32) float64 {
	var s float64
	for _, t := range ps {
		for _, x := range t {
			s += float64(x) * float64(x)
		}
	}
	return math.Sqrt(s)
}

// TestClipDeltaBound: every clipped delta has norm at most S (checked on
// the float32 values actually summed), points the same way as the delta,
// and a delta within the bound passes unchanged.
func TestClipDeltaBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(70, 71))
	sizes := []int{300, 7, 1}
	for trial := range 300 {
		global := randomParams(rng, sizes, 0, 1)
		scale := math.Pow(10, rng.Float64()*8-4) // update norms from ~1e-3 to ~1e5
		upd := randomParams(rng, sizes, 0, scale)
		bound := math.Pow(10, rng.Float64()*4-2)
		clipped, unclipped, err := clipDelta(upd, global, bound)
		if err != nil {
			t.Fatal(err)
		}
		delta := make([][]float32, len(upd))
		var dn float64
		for i := range upd {
			delta[i] = make([]float32, len(upd[i]))
			for j := range upd[i] {
				d := float64(upd[i][j]) - float64(global[i][j])
				dn += d * d
				delta[i][j] = float32(d)
			}
		}
		dn = math.Sqrt(dn)
		if got := norm64(clipped); got > bound {
			t.Fatalf("trial %d: clipped norm %v exceeds the bound %v", trial, got, bound)
		}
		if unclipped != (dn <= bound) {
			t.Fatalf("trial %d: unclipped = %v for norm %v, bound %v", trial, unclipped, dn, bound)
		}
		if unclipped {
			assertBitEqual(t, "delta within the bound", clipped, delta)
			continue
		}
		// Scaled, not distorted: the clipped norm is S to float32 precision
		// and every coordinate is delta × S/‖delta‖.
		if got := norm64(clipped); got < bound*(1-1e-5) {
			t.Fatalf("trial %d: clipped norm %v, want ≈ %v", trial, got, bound)
		}
		for i := range clipped {
			for j, c := range clipped[i] {
				want := float64(delta[i][j]) * bound / dn
				if math.Abs(float64(c)-want) > 1e-5*bound {
					t.Fatalf("trial %d: clipped [%d][%d] = %v, want %v", trial, i, j, c, want)
				}
			}
		}
	}
}

// TestDPFedAvgByHand removes the (deterministic) noise again and checks the
// unweighted mean of clipped deltas: client a moves by (3, 4), norm 5,
// clipped to S = 1: (0.6, 0.8); client b by (0.5, 0), inside the bound.
// Their mean (0.55, 0.4) ignores that b claims 99 times the examples.
func TestDPFedAvgByHand(t *testing.T) {
	const z, S, seed = 1e-3, 1.0, 7
	s := mustNew(t, Config{Name: "dpfedavg-fixed", ClipNorm: S, NoiseMultiplier: z, Seed: seed})
	global := [][]float32{{1, -2}}
	got := runRound(t, s, global, []Update{
		{ClientID: "a", NumExamples: 1, Params: [][]float32{{4, 2}}},
		{ClientID: "b", NumExamples: 99, Params: [][]float32{{1.5, -2}}},
	})
	g := newGaussian(seed, 1, "delta")
	sigma := z * S / 2
	for j, want := range []float64{1 + 0.55, -2 + 0.4} {
		noiseless := float64(got[0][j]) - sigma*g.next()
		if math.Abs(noiseless-want) > 1e-6 {
			t.Errorf("coordinate %d: %v without its noise is %v, want %v", j, got[0][j], noiseless, want)
		}
	}
	rep := s.(Reporter).Report()
	if rep["dp_clip_norm"] != S || rep["dp_noise_multiplier"] != z || rep["dp_noise_stddev"] != sigma || rep["dp_round"] != 1 {
		t.Errorf("report %v", rep)
	}
	wantEps, _, err := privacy.Epsilon(1, z, 1, 1e-5)
	if err != nil || rep["dp_epsilon"] != wantEps || rep["dp_delta"] != 1e-5 {
		t.Errorf("report ε = %v, δ = %v, want %v (%v)", rep["dp_epsilon"], rep["dp_delta"], wantEps, err)
	}
}

// noiseOf runs one round in which every client sends the global model
// (zero deltas), so the new model minus the global is the noise alone.
func noiseOf(t *testing.T, cfg Config, clients, dim int) []float64 {
	t.Helper()
	global := [][]float32{make([]float32, dim)}
	var ups []Update
	for i := range clients {
		ups = append(ups, Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: global})
	}
	out := runRound(t, mustNew(t, cfg), global, ups)
	noise := make([]float64, dim)
	for i, x := range out[0] {
		noise[i] = float64(x)
	}
	return noise
}

// gaussianMisfit tests that xs look like N(0, sigma²) with 5-standard-error
// bands and returns what does not fit: the sample mean against σ/√N; the
// sample variance against the χ²_N distribution of N·s²/σ² (≈ normal with
// variance 2N), i.e. |s²/σ² − 1| < 5·√(2/N); and the fraction inside ±σ
// against 68.27% with its binomial standard error. With N = 200,000 the
// variance band is ±1.6%, pinning the noise scale to within 0.8%. A fixed
// seed makes the test deterministic; a correct sampler would fail it with
// probability below 1e-5.
func gaussianMisfit(xs []float64, sigma float64) []string {
	n := float64(len(xs))
	var sum, sq float64
	inside := 0
	for _, x := range xs {
		sum += x
		sq += x * x
		if math.Abs(x) <= sigma {
			inside++
		}
	}
	var bad []string
	if mean := sum / n; math.Abs(mean) > 5*sigma/math.Sqrt(n) {
		bad = append(bad, fmt.Sprintf("mean %v outside ±5σ/√N = %v", mean, 5*sigma/math.Sqrt(n)))
	}
	if r := sq / n / (sigma * sigma); math.Abs(r-1) > 5*math.Sqrt(2/n) { // the true mean is 0
		bad = append(bad, fmt.Sprintf("sample std %v for σ %v: variance ratio %v outside 1 ± %v", math.Sqrt(sq/n), sigma, r, 5*math.Sqrt(2/n)))
	}
	const p = 0.682689492137
	if f := float64(inside) / n; math.Abs(f-p) > 5*math.Sqrt(p*(1-p)/n) {
		bad = append(bad, fmt.Sprintf("%.4f within ±σ, want %.4f", f, p))
	}
	return bad
}

func TestDPNoiseScale(t *testing.T) {
	const dim = 200000
	t.Run("fixed", func(t *testing.T) {
		// σ = z·S/n = 1.3 · 0.5 / 5.
		noise := noiseOf(t, Config{Name: "dpfedavg-fixed", ClipNorm: 0.5, NoiseMultiplier: 1.3, Seed: 1}, 5, dim)
		if bad := gaussianMisfit(noise, 1.3*0.5/5); bad != nil {
			t.Error(bad)
		}
	})
	t.Run("adaptive", func(t *testing.T) {
		// Andrew et al.'s split: z = 1, σ_b = 2 gives z_Δ = (1 − 1/16)^(−1/2).
		zDelta := 1 / math.Sqrt(1-1.0/16)
		noise := noiseOf(t, Config{Name: "dpfedavg-adaptive", ClipNorm: 0.1, NoiseMultiplier: 1, ClippedCountStddev: 2, Seed: 2}, 4, dim)
		if bad := gaussianMisfit(noise, zDelta*0.1/4); bad != nil {
			t.Error(bad)
		}
		// z itself, 3% below z_Δ, is rejected: the band has the power to
		// see the split.
		if gaussianMisfit(noise, 0.1/4) == nil {
			t.Error("noise scaled by z_Δ also fits z")
		}
	})
	t.Run("power", func(t *testing.T) {
		noise := noiseOf(t, Config{Name: "dpfedavg-fixed", ClipNorm: 1, NoiseMultiplier: 1, Seed: 3}, 1, dim)
		if gaussianMisfit(noise, 1) != nil || gaussianMisfit(noise, 1.02) == nil || gaussianMisfit(noise, 0.98) == nil {
			t.Error("the bands do not separate σ from σ ± 2%")
		}
	})
}

// TestDPNoiseIsReproducible: the noise is a function of (Seed, round):
// two strategies with one seed agree bit for bit, another seed differs, and
// the second round's noise differs from the first's.
func TestDPNoiseIsReproducible(t *testing.T) {
	cfg := Config{Name: "dpfedavg-fixed", Seed: 42}
	a := noiseOf(t, cfg, 3, 1000)
	b := noiseOf(t, cfg, 3, 1000)
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			t.Fatalf("same seed, coordinate %d: %v vs %v", i, a[i], b[i])
		}
	}
	cfg.Seed = 43
	c := noiseOf(t, cfg, 3, 1000)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same > 0 {
		t.Errorf("seeds 42 and 43 agree on %d of 1000 coordinates", same)
	}
	g1, g2 := newGaussian(42, 1, "delta"), newGaussian(42, 2, "delta")
	if g1.next() == g2.next() {
		t.Error("rounds 1 and 2 start with the same noise")
	}
}

// TestAdaptiveClipByHand recomputes the clip norm update from the noise the
// strategy draws: S ← S·exp(−η·(b̃ − γ)), b̃ = (#unclipped + σ_b·N)/n.
func TestAdaptiveClipByHand(t *testing.T) {
	const seed, S0, lr, gamma, sb = 9, 0.5, 0.2, 0.5, 1.0
	s := mustNew(t, Config{Name: "dpfedavg-adaptive", Seed: seed, ClipNorm: S0, ClipLR: lr, ClippedCountStddev: sb})
	global := [][]float32{{0, 0}}
	// Norms 0.1, 0.3, 0.4 are within S = 0.5; 3 and 4 are not: 3 of 5.
	var ups []Update
	for i, v := range []float32{0.1, 0.3, 0.4, 3, 4} {
		ups = append(ups, Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{v, 0}}})
	}
	runRound(t, s, global, ups)
	b := (3 + sb*newGaussian(seed, 1, "count").next()) / 5
	want := S0 * math.Exp(-lr*(b-gamma))
	rep := s.(Reporter).Report()
	if rep["dp_next_clip_norm"] != want || rep["dp_clip_norm"] != S0 || rep["dp_noised_unclipped_fraction"] != b {
		t.Errorf("report %v, want next clip %v from b̃ = %v", rep, want, b)
	}
	runRound(t, s, global, ups)
	if got := s.(Reporter).Report()["dp_clip_norm"]; got != want {
		t.Errorf("round 2 clipped with %v, want %v", got, want)
	}
}

// TestAdaptiveClipTracksQuantile: over rounds the clip norm moves toward
// the median of the update norms (γ = 0.5), from above and from below.
func TestAdaptiveClipTracksQuantile(t *testing.T) {
	global := [][]float32{{0}}
	var ups []Update
	for i := range 40 { // norms 1..40, median 20.5
		ups = append(ups, Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{float32(i + 1)}}})
	}
	for _, start := range []float64{0.5, 500} {
		s := mustNew(t, Config{Name: "dpfedavg-adaptive", ClipNorm: start, ClipLR: 0.5, Seed: 5})
		for range 60 {
			r, err := s.Begin(global) // the global never moves: only S does
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range ups {
				if err := r.Add(u); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.Finish(); err != nil {
				t.Fatal(err)
			}
		}
		if got := s.(Reporter).Report()["dp_next_clip_norm"]; got < 12 || got > 30 {
			t.Errorf("from S = %v: after 60 rounds S = %v, want near the median norm 20.5", start, got)
		}
	}
}

func TestDPConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "dpfedavg-fixed", ClipNorm: -1},
		{Name: "dpfedavg-fixed", ClipNorm: math.Inf(1)},
		{Name: "dpfedavg-fixed", ClipNorm: 0x1p65},
		{Name: "dpfedavg-fixed", NoiseMultiplier: -1},
		{Name: "dpfedavg-fixed", NoiseMultiplier: math.NaN()},
		{Name: "dpfedavg-fixed", SamplingRate: 1.5},
		{Name: "dpfedavg-fixed", Delta: 1},
		{Name: "dpfedavg-adaptive", TargetQuantile: 1},
		{Name: "dpfedavg-adaptive", ClipLR: -0.1},
		{Name: "dpfedavg-adaptive", ClippedCountStddev: -1},
		{Name: "dpfedavg-adaptive", NoiseMultiplier: 2, ClippedCountStddev: 1}, // needs σ_b > z/2
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	// With the default σ_b = n/20 the split needs n > 40·z: a round of 3
	// fails with ErrTooFewUpdates and stays open.
	s := mustNew(t, Config{Name: "dpfedavg-adaptive"})
	r, err := s.Begin([][]float32{{0}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 41 {
		if err := r.Add(Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{1}}}); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			if _, err := r.Finish(); !errors.Is(err, ErrTooFewUpdates) {
				t.Fatalf("Finish with 3 updates: %v, want ErrTooFewUpdates", err)
			}
		}
	}
	if _, err := r.Finish(); err != nil {
		t.Fatalf("Finish with 41 updates: %v", err)
	}
}

// TestDPReportAndAccounting: before any round ε = 0; after each round the
// report's ε is the accountant's for that many rounds; a restored strategy
// reports the restored round count and clip norm.
func TestDPReportAndAccounting(t *testing.T) {
	cfg := Config{Name: "dpfedavg-adaptive", NoiseMultiplier: 1.1, SamplingRate: 0.1, Delta: 1e-6, ClippedCountStddev: 1, Seed: 3}
	s := mustNew(t, cfg)
	if rep := s.(Reporter).Report(); rep["dp_epsilon"] != 0 || rep["dp_round"] != 0 || rep["dp_clip_norm"] != defaultDPAdaptiveClip {
		t.Errorf("initial report %v", rep)
	}
	w := [][]float32{{0, 0}}
	ups := randomUpdates(rand.New(rand.NewPCG(80, 81)), 6, []int{2})
	for round := 1; round <= 3; round++ {
		w = runRound(t, s, w, ups)
		rep := s.(Reporter).Report()
		want, _, err := privacy.Epsilon(0.1, 1.1, round, 1e-6)
		if err != nil || rep["dp_epsilon"] != want || rep["dp_round"] != float64(round) || rep["dp_sampling_rate"] != 0.1 {
			t.Errorf("round %d: report %v, want ε %v (%v)", round, rep, want, err)
		}
	}
	st, err := s.State()
	if err != nil {
		t.Fatal(err)
	}
	r := mustNew(t, cfg)
	if err := r.Restore(st); err != nil {
		t.Fatal(err)
	}
	before, after := s.(Reporter).Report(), r.(Reporter).Report()
	if after["dp_round"] != 3 || after["dp_clip_norm"] != before["dp_next_clip_norm"] || after["dp_epsilon"] != before["dp_epsilon"] {
		t.Errorf("restored report %v, before %v", after, before)
	}
}

func TestDPRestoreGarbage(t *testing.T) {
	fixed := mustNew(t, Config{Name: "dpfedavg-fixed"})
	st, err := fixed.State()
	if err != nil {
		t.Fatal(err)
	}
	adaptive := mustNew(t, Config{Name: "dpfedavg-adaptive"})
	good, err := adaptive.State()
	if err != nil {
		t.Fatal(err)
	}
	clipAt := len(good) - 8
	for name, b := range map[string][]byte{
		"empty":          nil,
		"other strategy": st,
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"version":        withByte(good, 0, 9),
		"zero clip":      withU64(good, clipAt, 0),
		"NaN clip":       withU64(good, clipAt, math.Float64bits(math.NaN())),
		"huge clip":      withU64(good, clipAt, math.Float64bits(0x1p70)),
	} {
		if err := mustNew(t, Config{Name: "dpfedavg-adaptive"}).Restore(b); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: Restore = %v, want ErrBadState", name, err)
		}
	}
	other := mustNew(t, Config{Name: "dpfedavg-fixed", ClipNorm: 2})
	if err := other.Restore(st); !errors.Is(err, ErrBadState) {
		t.Errorf("fixed clip norm changed across restart: %v, want ErrBadState", err)
	}
}

func TestFedProxCarriesMu(t *testing.T) {
	s := mustNew(t, Config{Name: "fedprox"})
	if mu := s.ConfigureFit(1, Plan{}).ProximalMu; mu != 0.01 {
		t.Errorf("default μ = %v, want 0.01", mu)
	}
	s = mustNew(t, Config{Name: "fedprox", ProximalMu: 0.5})
	if mu := s.ConfigureFit(1, Plan{}).ProximalMu; mu != 0.5 {
		t.Errorf("μ = %v, want 0.5", mu)
	}
	for _, mu := range []float64{-1, math.NaN(), math.Inf(1)} {
		if _, err := New(Config{Name: "fedprox", ProximalMu: mu}); err == nil {
			t.Errorf("fedprox accepted μ = %v", mu)
		}
	}
	// On the server FedProx is FedAvg, bit for bit.
	rng := rand.New(rand.NewPCG(90, 91))
	global := randomParams(rng, []int{30}, 0, 1)
	ups := randomUpdates(rng, 9, []int{30})
	assertBitEqual(t, "fedprox vs fedavg", runRound(t, s, global, ups), runRound(t, mustNew(t, Config{}), global, ups))
	if _, err := New(Config{Name: "fedbuff"}); err == nil {
		t.Error("New(fedbuff) succeeded")
	}
}
