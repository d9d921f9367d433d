package strategy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/internal/tensortest"
)

// testConfig returns a valid config for name; Krum tolerates 2 Byzantine
// clients so that 20 updates are plenty.
func testConfig(name string) Config {
	return Config{Name: name, ByzantineF: 2}
}

// smallRoundConfig returns the default config for name, except that
// adaptive DP clipping gets σ_b = 1: its default n/20 needs more than 40·z
// updates a round.
func smallRoundConfig(name string) Config {
	return Config{Name: name, ClippedCountStddev: 1}
}

func mustNew(t testing.TB, cfg Config) Strategy {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return s
}

func randomParams(rng *rand.Rand, sizes []int, center, spread float64) [][]float32 {
	p := make([][]float32, len(sizes))
	for i, n := range sizes {
		p[i] = make([]float32, n)
		for j := range p[i] {
			p[i][j] = float32(center + rng.NormFloat64()*spread)
		}
	}
	return p
}

func randomUpdates(rng *rand.Rand, n int, sizes []int) []Update {
	ups := make([]Update, n)
	for i := range ups {
		ups[i] = Update{
			ClientID:    fmt.Sprintf("client-%03d", i),
			NumExamples: 1 + rng.Int64N(600),
			Params:      randomParams(rng, sizes, 0, 0.1),
		}
	}
	return ups
}

// runRound begins a round on s from global, adds ups in order and finishes.
func runRound(t testing.TB, s Strategy, global [][]float32, ups []Update) [][]float32 {
	t.Helper()
	r, err := s.Begin(global)
	if err != nil {
		t.Fatalf("%s: Begin: %v", s.Name(), err)
	}
	for _, u := range ups {
		if err := r.Add(u); err != nil {
			t.Fatalf("%s: Add(%s): %v", s.Name(), u.ClientID, err)
		}
	}
	if r.Count() != len(ups) {
		t.Fatalf("%s: Count = %d after %d adds", s.Name(), r.Count(), len(ups))
	}
	out, err := r.Finish()
	if err != nil {
		t.Fatalf("%s: Finish: %v", s.Name(), err)
	}
	return out
}

func shuffled(rng *rand.Rand, ups []Update) []Update {
	c := append([]Update(nil), ups...)
	rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	return c
}

func assertBitEqual(t testing.TB, what string, got, want [][]float32) {
	t.Helper()
	if i, j, ok := tensortest.FirstBitDiff(got, want); !ok {
		if j < 0 {
			t.Fatalf("%s: shapes differ at tensor %d", what, i)
		}
		t.Fatalf("%s: tensor %d [%d] = %g (%#x), want %g (%#x)", what, i, j,
			got[i][j], math.Float32bits(got[i][j]), want[i][j], math.Float32bits(want[i][j]))
	}
}

func TestNamesAllConstruct(t *testing.T) {
	for _, name := range Names() {
		s := mustNew(t, testConfig(name))
		if s.Name() != name {
			t.Errorf("New(%q).Name() = %q", name, s.Name())
		}
	}
	if s := mustNew(t, Config{}); s.Name() != "fedavg" {
		t.Errorf("empty name gave %q, want fedavg", s.Name())
	}
	if s := mustNew(t, Config{Name: " FedAdam "}); s.Name() != "fedadam" {
		t.Errorf("name matching is not case-insensitive: got %q", s.Name())
	}
}

func TestNewUnknownNamesValidOnes(t *testing.T) {
	_, err := New(Config{Name: "fedsgd"})
	if err == nil {
		t.Fatal("New(fedsgd) succeeded")
	}
	for _, name := range append(Names(), "fedsgd") {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not mention %q", err, name)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "fedavgm", ServerLR: -1},
		{Name: "fedavgm", ServerLR: math.Inf(1)},
		{Name: "fedavgm", Momentum: 1},
		{Name: "fedavgm", Momentum: -0.1},
		{Name: "fedadam", Beta1: 1.5},
		{Name: "fedadam", Beta2: math.NaN()},
		{Name: "fedyogi", Tau: -1e-3},
		{Name: "fedadagrad", ServerLR: math.NaN()},
		{Name: "trimmedmean", TrimFraction: 0.5},
		{Name: "trimmedmean", TrimFraction: -0.1},
		{Name: "krum", ByzantineF: -1},
		{Name: "multikrum", MultiKrumM: -2},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestFedAvgByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "fedavg"})
	global := [][]float32{{0, 0}, {0}}
	got := runRound(t, s, global, []Update{
		{ClientID: "a", NumExamples: 1, Params: [][]float32{{1, 2}, {-4}}},
		{ClientID: "b", NumExamples: 3, Params: [][]float32{{5, 6}, {4}}},
	})
	// (1·1 + 3·5)/4 = 4, (1·2 + 3·6)/4 = 5, (1·(−4) + 3·4)/4 = 2.
	assertBitEqual(t, "fedavg", got, [][]float32{{4, 5}, {2}})
	// Weights that do not divide evenly: (1·0.1 + 3·0.2)/4 = 0.175.
	got = runRound(t, s, [][]float32{{0}}, []Update{
		{ClientID: "a", NumExamples: 1, Params: [][]float32{{0.1}}},
		{ClientID: "b", NumExamples: 3, Params: [][]float32{{0.2}}},
	})
	if want := float32((float64(float32(0.1)) + 3*float64(float32(0.2))) / 4); got[0][0] != want || math.Abs(float64(got[0][0])-0.175) > 1e-7 {
		t.Errorf("fedavg = %v, want %v ≈ 0.175", got[0][0], want)
	}
}

func TestFedAvgOfIdenticalUpdatesIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 11))
	sizes := []int{500, 20}
	p := randomParams(rng, sizes, 0, 1)
	var ups []Update
	for i := range 13 {
		ups = append(ups, Update{ClientID: fmt.Sprint(i), NumExamples: 1 + rng.Int64N(10000), Params: p})
	}
	got := runRound(t, mustNew(t, Config{Name: "fedavg"}), p, ups)
	assertBitEqual(t, "fedavg of identical updates", got, p)
}

// TestOrderIndependence is the core guarantee: for every strategy, the
// model is bit-identical whatever order the same updates arrive in,
// including the optimizer state carried into a second round.
func TestOrderIndependence(t *testing.T) {
	rng := rand.New(rand.NewPCG(20, 21))
	sizes := []int{120, 10, 1}
	global := randomParams(rng, sizes, 0, 0.1)
	round1 := randomUpdates(rng, 20, sizes)
	round2 := randomUpdates(rng, 20, sizes)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			var want1, want2 [][]float32
			for trial := range 6 {
				s := mustNew(t, testConfig(name))
				got1 := runRound(t, s, global, shuffled(rng, round1))
				got2 := runRound(t, s, got1, shuffled(rng, round2))
				if trial == 0 {
					want1, want2 = got1, got2
					continue
				}
				assertBitEqual(t, fmt.Sprintf("trial %d round 1", trial), got1, want1)
				assertBitEqual(t, fmt.Sprintf("trial %d round 2", trial), got2, want2)
			}
		})
	}
}

func TestFinishLifecycle(t *testing.T) {
	global := [][]float32{{0, 0}}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			r, err := mustNew(t, smallRoundConfig(name)).Begin(global)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Finish(); !errors.Is(err, ErrNoUpdates) {
				t.Fatalf("Finish of empty round = %v, want ErrNoUpdates", err)
			}
			// Krum with f = 0 needs 3 updates.
			for i := range 3 {
				if err := r.Add(Update{ClientID: fmt.Sprint(i), NumExamples: 1, Params: [][]float32{{1, float32(i)}}}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.Finish(); err != nil {
				t.Fatalf("Finish: %v", err)
			}
			if _, err := r.Finish(); !errors.Is(err, ErrRoundFinished) {
				t.Errorf("second Finish = %v, want ErrRoundFinished", err)
			}
			if err := r.Add(Update{ClientID: "late", NumExamples: 1, Params: [][]float32{{1, 1}}}); !errors.Is(err, ErrRoundFinished) {
				t.Errorf("Add after Finish = %v, want ErrRoundFinished", err)
			}
			if r.Count() != 3 {
				t.Errorf("Count after Finish = %d, want 3", r.Count())
			}
		})
	}
}

func TestBeginRejects(t *testing.T) {
	for _, name := range Names() {
		s := mustNew(t, testConfig(name))
		if _, err := s.Begin(nil); err == nil {
			t.Errorf("%s: Begin(nil) succeeded", name)
		}
		if _, err := s.Begin([][]float32{{1, float32(math.NaN())}}); !errors.Is(err, ErrNonFinite) {
			t.Errorf("%s: Begin(NaN) = %v, want ErrNonFinite", name, err)
		}
	}
}

// TestUpdateParamsNotRetained: the caller may reuse its buffers after Add.
func TestUpdateParamsNotRetained(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			s := mustNew(t, smallRoundConfig(name))
			global := [][]float32{{0, 0}}
			want := runRound(t, mustNew(t, smallRoundConfig(name)), global, []Update{
				{ClientID: "a", NumExamples: 1, Params: [][]float32{{1, 2}}},
				{ClientID: "b", NumExamples: 2, Params: [][]float32{{3, 4}}},
				{ClientID: "c", NumExamples: 3, Params: [][]float32{{5, 7}}},
			})
			r, err := s.Begin(global)
			if err != nil {
				t.Fatal(err)
			}
			buf := [][]float32{{0, 0}}
			for i, u := range []struct {
				id   string
				n    int64
				vals []float32
			}{{"a", 1, []float32{1, 2}}, {"b", 2, []float32{3, 4}}, {"c", 3, []float32{5, 7}}} {
				copy(buf[0], u.vals)
				if err := r.Add(Update{ClientID: u.id, NumExamples: u.n, Params: buf}); err != nil {
					t.Fatalf("Add %d: %v", i, err)
				}
			}
			buf[0][0], buf[0][1] = 1e6, -1e6
			got, err := r.Finish()
			if err != nil {
				t.Fatal(err)
			}
			assertBitEqual(t, "after reusing the buffer", got, want)
		})
	}
}
