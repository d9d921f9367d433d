package strategy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func stateful() []string { return []string{"fedavgm", "fedadam", "fedyogi", "fedadagrad"} }

// oneClient is a round whose FedAvg mean is exactly p.
func oneClient(p ...float32) []Update {
	return []Update{{ClientID: "c", NumExamples: 7, Params: [][]float32{p}}}
}

func TestFedAvgMByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "fedavgm"}) // η = 1, β = 0.9
	// Round 1: g = w − mean = [0.5, −1]; u = g; w − u lands on the mean.
	w1 := runRound(t, s, [][]float32{{1, 2}}, oneClient(0.5, 3))
	assertBitEqual(t, "round 1", w1, [][]float32{{0.5, 3}})
	// Round 2: g = [0.5, 3] − [0.25, 3.5] = [0.25, −0.5];
	// u = 0.9·[0.5, −1] + g = [0.7, −1.4]; w = [0.5 − 0.7, 3 + 1.4].
	w2 := runRound(t, s, w1, oneClient(0.25, 3.5))
	assertBitEqual(t, "round 2", w2, [][]float32{{-0.2, 4.4}})

	// With η = 0.5 the first step goes half way to the mean.
	s = mustNew(t, Config{Name: "fedavgm", ServerLR: 0.5, Momentum: 0.5})
	w1 = runRound(t, s, [][]float32{{1, 2}}, oneClient(0, 4))
	assertBitEqual(t, "η=0.5 round 1", w1, [][]float32{{0.5, 3}})
	// g = [0.5, 3] − [0.5, 3] = 0; u = 0.5·[1, −2]; w = [0.5 − 0.25, 3 + 0.5].
	w2 = runRound(t, s, w1, oneClient(0.5, 3))
	assertBitEqual(t, "η=0.5 round 2", w2, [][]float32{{0.25, 3.5}})
}

func TestFedAdamByHand(t *testing.T) {
	s := mustNew(t, Config{Name: "fedadam"}) // η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-9
	// Δ = [0.5, 0, −0.25]; m = 0.1·Δ; v ≈ 0.01·Δ²; so m/√v ≈ sign(Δ) and
	// the step is η·sign(Δ): w = [1.1, −1, 0.4] (τ is below float32 precision).
	w1 := runRound(t, s, [][]float32{{1, -1, 0.5}}, oneClient(1.5, -1, 0.25))
	assertBitEqual(t, "round 1", w1, [][]float32{{1.1, -1, 0.4}})

	// Round 2 against the formula, step by step in float64.
	w0 := []float64{float64(float32(1.1)), -1, float64(float32(0.4))}
	mean := []float64{1.0, -1.5, 0.4}
	m := []float64{0.05, 0, -0.025}
	v := []float64{0.99*1e-18 + 0.01*0.25, 0.99 * 1e-18, 0.99*1e-18 + 0.01*0.0625}
	want := make([]float32, 3)
	for i := range want {
		d := float64(float32(mean[i])) - w0[i]
		mi := 0.9*m[i] + 0.1*d
		vi := 0.99*v[i] + 0.01*d*d
		want[i] = float32(w0[i] + 0.1*mi/(math.Sqrt(vi)+1e-9))
	}
	w2 := runRound(t, s, w1, oneClient(float32(mean[0]), float32(mean[1]), float32(mean[2])))
	for i := range want {
		if diff := math.Abs(float64(w2[0][i] - want[i])); diff > 1e-6 {
			t.Errorf("round 2 [%d] = %v, formula gives %v", i, w2[0][i], want[i])
		}
	}
}

func TestFedYogiAndFedAdagradByHand(t *testing.T) {
	// FedYogi, η = 0.01, β1 = 0.9, β2 = 0.99, τ = 1e-3, v₋₁ = τ² = 1e-6.
	// Δ = 0.5: Δ² = 0.25 > v, so v = 1e-6 + 0.01·0.25 = 0.002501;
	// m = 0.05; w = 1 + 0.01·0.05/(√0.002501 + 0.001).
	s := mustNew(t, Config{Name: "fedyogi"})
	got := runRound(t, s, [][]float32{{1}}, oneClient(1.5))
	want := float32(1 + 0.01*0.05/(math.Sqrt(0.002501)+0.001))
	if math.Abs(float64(got[0][0]-want)) > 1e-7 || math.Abs(float64(got[0][0])-1.0098020) > 1e-6 {
		t.Errorf("fedyogi = %v, want %v ≈ 1.0098020", got[0][0], want)
	}
	// Round 2 with Δ = 0.01: Δ² = 1e-4 < v, so Yogi lowers v additively:
	// v = 0.002501 − 0.01·1e-4; m = 0.9·0.05 + 0.1·Δ.
	w := float64(got[0][0])
	mean := float64(float32(w + 0.01))
	d := mean - w
	v := 0.002501 - 0.01*d*d
	m := 0.9*0.05 + 0.1*d
	got = runRound(t, s, got, oneClient(float32(mean)))
	want = float32(w + 0.01*m/(math.Sqrt(v)+0.001))
	if math.Abs(float64(got[0][0]-want)) > 1e-7 {
		t.Errorf("fedyogi round 2 = %v, want %v", got[0][0], want)
	}
	if up := float32(w + 0.01*m/(math.Sqrt(0.002501+0.01*d*d)+0.001)); up == want {
		t.Fatal("test cannot tell Yogi's decrease from an increase")
	}

	// FedAdagrad, η = 0.1, β1 = 0, τ = 1e-9: m = Δ, v = τ² + Δ², step η·sign(Δ).
	s = mustNew(t, Config{Name: "fedadagrad"})
	got = runRound(t, s, [][]float32{{1, 2}}, oneClient(1.5, 1))
	assertBitEqual(t, "fedadagrad round 1", got, [][]float32{{1.1, 1.9}})
	// Round 2 with Δ = [0.5, 0]: v = [0.5, 1] → w = 1.1 + 0.1·0.5/√0.5.
	got = runRound(t, s, got, oneClient(1.6, 1.9))
	d = float64(float32(1.6)) - float64(float32(1.1))
	want = float32(float64(float32(1.1)) + 0.1*d/(math.Sqrt(1e-18+0.25+d*d)+1e-9))
	if math.Abs(float64(got[0][0]-want)) > 1e-7 || got[0][1] != float32(1.9) {
		t.Errorf("fedadagrad round 2 = %v, want [%v 1.9]", got[0], want)
	}
}

// TestStateRestoreContinuesBitIdentically runs 3 rounds straight, and 1
// round, State, a fresh strategy, Restore, 2 rounds: same models and state.
func TestStateRestoreContinuesBitIdentically(t *testing.T) {
	rng := rand.New(rand.NewPCG(30, 31))
	sizes := []int{50, 4}
	global := randomParams(rng, sizes, 0, 0.1)
	rounds := [][]Update{randomUpdates(rng, 8, sizes), randomUpdates(rng, 8, sizes), randomUpdates(rng, 8, sizes)}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			// σ_b = 1 lets adaptive DP clipping run with 8 updates (n/20
			// would need more than 40·z).
			cfg := Config{Name: name, ByzantineF: 1, ClippedCountStddev: 1}
			straight := mustNew(t, cfg)
			w := global
			var want [][][]float32
			for _, ups := range rounds {
				w = runRound(t, straight, w, ups)
				want = append(want, w)
			}
			wantState, err := straight.State()
			if err != nil {
				t.Fatal(err)
			}

			first := mustNew(t, cfg)
			w = runRound(t, first, global, rounds[0])
			assertBitEqual(t, "round 1", w, want[0])
			st, err := first.State()
			if err != nil {
				t.Fatal(err)
			}
			resumed := mustNew(t, cfg)
			if err := resumed.Restore(st); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			for i, ups := range rounds[1:] {
				w = runRound(t, resumed, w, ups)
				assertBitEqual(t, fmt.Sprintf("resumed round %d", i+2), w, want[i+1])
			}
			gotState, err := resumed.State()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotState, wantState) {
				t.Error("state after resumed rounds differs from the straight run's")
			}
		})
	}
}

func TestStateCountsRounds(t *testing.T) {
	for _, name := range stateful() {
		s := mustNew(t, Config{Name: name})
		w := [][]float32{{1, 2}}
		for round := range 4 {
			b, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			st, err := decodeState(b, name, s.(*fedOpt).vectors())
			if err != nil {
				t.Fatal(err)
			}
			if st.step != uint64(round) {
				t.Errorf("%s: state after %d rounds says %d", name, round, st.step)
			}
			w = runRound(t, s, w, oneClient(0, 3))
		}
	}
}

// TestRestoreInitialState: the state before any round restores too, as the
// coordinator checkpoints it with the initial model.
func TestRestoreInitialState(t *testing.T) {
	for _, name := range Names() {
		st, err := mustNew(t, Config{Name: name}).State()
		if err != nil {
			t.Fatal(err)
		}
		if err := mustNew(t, Config{Name: name}).Restore(st); err != nil {
			t.Errorf("%s: Restore(initial State) = %v", name, err)
		}
	}
}

func TestRestoreGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(40, 41))
	for _, name := range stateful() {
		t.Run(name, func(t *testing.T) {
			s := mustNew(t, Config{Name: name})
			runRound(t, s, [][]float32{{1, 2, 3}, {4}}, []Update{{ClientID: "a", NumExamples: 2, Params: [][]float32{{0, 1, 2}, {3}}}})
			valid, err := s.State()
			if err != nil {
				t.Fatal(err)
			}
			bad := map[string][]byte{
				"nil":            nil,
				"empty":          {},
				"one byte":       {stateVersion},
				"trailing byte":  append(bytes.Clone(valid), 0),
				"version 2":      append([]byte{2}, valid[1:]...),
				"random":         randomBytes(rng, 200),
				"huge count":     withU32(valid, 2+len(name)+8, math.MaxUint32),
				"huge size":      withU64(valid, 2+len(name)+8+4, math.MaxUint64/8),
				"NaN value":      withU64(valid, len(valid)-8, math.Float64bits(math.NaN())),
				"vectors 3":      withByte(valid, 2+len(name)+8+4+2*8, 3),
				"no vectors":     withByte(valid, 2+len(name)+8+4+2*8, 0),
				"other strategy": otherStrategyState(t, name),
			}
			if name != "fedavgm" { // a negative second moment
				bad["negative v"] = withU64(valid, len(valid)-8, math.Float64bits(-1))
			}
			for i := range len(valid) {
				bad[fmt.Sprintf("truncated to %d", i)] = valid[:i]
			}
			for what, b := range bad {
				fresh := mustNew(t, Config{Name: name})
				err := fresh.Restore(b)
				if err == nil {
					t.Errorf("%s: Restore succeeded", what)
					continue
				}
				if !errors.Is(err, ErrBadState) {
					t.Errorf("%s: Restore = %v, want ErrBadState", what, err)
				}
			}
			// A failed Restore leaves the state as it was.
			if err := s.Restore(valid[:10]); err == nil {
				t.Fatal("Restore of a truncated state succeeded")
			}
			if after, _ := s.State(); !bytes.Equal(after, valid) {
				t.Error("a failed Restore changed the state")
			}
		})
	}
	for _, name := range []string{"fedavg", "median", "trimmedmean", "krum", "multikrum"} {
		s := mustNew(t, Config{Name: name})
		if err := s.Restore(nil); err != nil {
			t.Errorf("%s: Restore(nil) = %v", name, err)
		}
		if err := s.Restore([]byte{1, 2, 3}); err == nil {
			t.Errorf("%s: stateless strategy accepted 3 bytes of state", name)
		}
	}
}

func otherStrategyState(t *testing.T, name string) []byte {
	other := "fedyogi"
	if name == other {
		other = "fedadam"
	}
	s := mustNew(t, Config{Name: other})
	runRound(t, s, [][]float32{{1, 2, 3}, {4}}, []Update{{ClientID: "a", NumExamples: 2, Params: [][]float32{{0, 1, 2}, {3}}}})
	b, err := s.State()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	return b
}

func withByte(b []byte, off int, v byte) []byte {
	c := bytes.Clone(b)
	c[off] = v
	return c
}

func withU32(b []byte, off int, v uint32) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint32(c[off:], v)
	return c
}

func withU64(b []byte, off int, v uint64) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint64(c[off:], v)
	return c
}

// FuzzRestore: no input may panic Restore.
func FuzzRestore(f *testing.F) {
	s := mustNew(f, Config{Name: "fedadam"})
	runRound(f, s, [][]float32{{1, 2}}, oneClient(0, 3))
	valid, _ := s.State()
	f.Add(valid)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, name := range stateful() {
			_ = mustNew(t, Config{Name: name}).Restore(b)
		}
	})
}

func TestStaleRoundRefused(t *testing.T) {
	global := [][]float32{{1, 2}}
	for _, name := range stateful() {
		t.Run(name, func(t *testing.T) {
			s := mustNew(t, Config{Name: name})
			r1, err := s.Begin(global)
			if err != nil {
				t.Fatal(err)
			}
			r2, err := s.Begin(global)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []Round{r1, r2} {
				if err := r.Add(oneClient(0, 1)[0]); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r1.Finish(); err != nil {
				t.Fatal(err)
			}
			before, _ := s.State()
			if _, err := r2.Finish(); !errors.Is(err, ErrStaleRound) {
				t.Errorf("Finish of a round begun before another finished = %v, want ErrStaleRound", err)
			}
			if after, _ := s.State(); !bytes.Equal(before, after) {
				t.Error("the stale round changed the state")
			}

			// Restore, too, invalidates open rounds.
			r3, err := s.Begin(global)
			if err != nil {
				t.Fatal(err)
			}
			if err := r3.Add(oneClient(0, 1)[0]); err != nil {
				t.Fatal(err)
			}
			if err := s.Restore(before); err != nil {
				t.Fatal(err)
			}
			if _, err := r3.Finish(); !errors.Is(err, ErrStaleRound) {
				t.Errorf("Finish after Restore = %v, want ErrStaleRound", err)
			}
		})
	}
}

func TestFedOptRefusesOtherShapes(t *testing.T) {
	s := mustNew(t, Config{Name: "fedadam"})
	runRound(t, s, [][]float32{{1, 2}}, oneClient(0, 3))
	if _, err := s.Begin([][]float32{{1, 2, 3}}); !errors.Is(err, ErrShape) {
		t.Errorf("Begin with other shapes than the optimizer state = %v, want ErrShape", err)
	}
}

func TestFedOptRefusesOverflowingStep(t *testing.T) {
	// η = 1e30 makes the first FedAvgM step leave the float32 range.
	s := mustNew(t, Config{Name: "fedavgm", ServerLR: 1e30})
	r, err := s.Begin([][]float32{{1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(oneClient(1e10)[0]); err != nil {
		t.Fatal(err)
	}
	before, _ := s.State()
	if _, err := r.Finish(); !errors.Is(err, ErrNonFinite) {
		t.Errorf("Finish = %v, want ErrNonFinite", err)
	}
	if after, _ := s.State(); !bytes.Equal(before, after) {
		t.Error("a failed step changed the state")
	}
}
