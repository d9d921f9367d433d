package accumulator

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// streamIn folds params with weight into a through a stream, in pieces of
// random length that cut across blocks.
func streamIn(t *testing.T, r *rand.Rand, a *Accumulator, weight int64, params [][]float32) {
	t.Helper()
	s, err := a.BeginStream(weight)
	if err != nil {
		t.Fatal(err)
	}
	for ti, xs := range params {
		for off := 0; off < len(xs); {
			n := min(len(xs)-off, 1+r.IntN(700))
			if err := s.Fold(ti, off, xs[off:off+n]); err != nil {
				t.Fatal(err)
			}
			off += n
		}
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	if s.Held() > 4*blockLen {
		t.Errorf("stream holds %d bytes, more than a block", s.Held())
	}
}

// TestStreamBitIdentical folds the same updates whole (Add) and, mixed
// with whole ones, as streams cut at random points, in different orders:
// the means are bit-identical. Weights above maxPartWeight, values outside
// any window, zeros and more updates than renormEvery are included.
func TestStreamBitIdentical(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	sizes := []int{1000, 0, 256, 3, 777}
	const updates = 150
	type upd struct {
		w int64
		p [][]float32
	}
	var us []upd
	for i := range updates {
		p := make([][]float32, len(sizes))
		for ti, n := range sizes {
			p[ti] = make([]float32, n)
			for j := range p[ti] {
				switch r.IntN(20) {
				case 0:
				case 1:
					p[ti][j] = float32(r.NormFloat64() * 1e-40) // subnormal
				case 2:
					p[ti][j] = float32(r.NormFloat64() * 1e6)
				default:
					p[ti][j] = float32(r.NormFloat64() * 0.1)
				}
			}
		}
		w := int64(1 + r.IntN(5000))
		if i%37 == 0 {
			w = MaxWeight - int64(r.IntN(1000))
		}
		us = append(us, upd{w, p})
	}
	whole, _ := New(sizes)
	for _, u := range us {
		if err := whole.Add(u.w, u.p); err != nil {
			t.Fatal(err)
		}
	}
	want, err := whole.Mean()
	if err != nil {
		t.Fatal(err)
	}
	for trial := range 3 {
		a, _ := New(sizes)
		for _, i := range r.Perm(updates) {
			if (i+trial)%3 == 0 {
				if err := a.Add(us[i].w, us[i].p); err != nil {
					t.Fatal(err)
				}
				continue
			}
			streamIn(t, r, a, us[i].w, us[i].p)
		}
		got, err := a.Mean()
		if err != nil {
			t.Fatal(err)
		}
		if a.Count() != updates || a.Weight() != whole.Weight() {
			t.Fatalf("count %d weight %d, want %d %d", a.Count(), a.Weight(), updates, whole.Weight())
		}
		for ti := range want {
			for j := range want[ti] {
				if math.Float32bits(got[ti][j]) != math.Float32bits(want[ti][j]) {
					t.Fatalf("trial %d: tensor %d coordinate %d: streamed %v, whole %v", trial, ti, j, got[ti][j], want[ti][j])
				}
			}
		}
	}
}

// TestStreamRefusals: values out of order, a NaN and a zero weight fail.
func TestStreamRefusals(t *testing.T) {
	a, _ := New([]int{10})
	s, _ := a.BeginStream(1)
	if err := s.Fold(0, 3, make([]float32, 2)); !errors.Is(err, ErrShape) {
		t.Errorf("out of order: %v", err)
	}
	a, _ = New([]int{10})
	s, _ = a.BeginStream(1)
	nan := make([]float32, 10)
	nan[9] = float32(math.NaN())
	if err := s.Fold(0, 0, nan); !errors.Is(err, ErrNonFinite) || !errors.Is(err, ErrPartialFold) {
		t.Errorf("NaN: %v", err)
	}
	if _, err := a.BeginStream(0); !errors.Is(err, ErrNumExamples) {
		t.Errorf("weight 0: %v", err)
	}
}
