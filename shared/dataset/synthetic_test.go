package dataset

import (
	"bytes"
	"math"
	"testing"
)

func TestSyntheticDeterministic(t *testing.T) {
	a := Synthetic(500, 64, 10, 42)
	b := Synthetic(500, 64, 10, 42)
	if !bytes.Equal(a.Pixels, b.Pixels) || !bytes.Equal(a.Labels, b.Labels) {
		t.Error("Synthetic(500, 64, 10, 42) differs between two calls")
	}
	c := Synthetic(500, 64, 10, 43)
	if bytes.Equal(a.Pixels, c.Pixels) || bytes.Equal(a.Labels, c.Labels) {
		t.Error("Synthetic with seeds 42 and 43 gives the same pixels or labels")
	}
}

// TestSyntheticGolden pins the generator's output: the synthetic data set is
// part of the federation's contract, so a change to the generator (or to the
// PCG it draws from) must be deliberate.
func TestSyntheticGolden(t *testing.T) {
	s := Synthetic(3, 8, 4, 1)
	wantLabels := []uint8{3, 0, 1}
	wantPixels := []uint8{
		93, 0, 1, 44, 41, 54, 162, 0,
		194, 45, 24, 255, 208, 39, 4, 0,
		9, 90, 21, 134, 34, 40, 21, 0,
	}
	if !bytes.Equal(s.Labels, wantLabels) || !bytes.Equal(s.Pixels, wantPixels) {
		t.Errorf("Synthetic(3, 8, 4, 1) = labels %v pixels %v, want labels %v pixels %v",
			s.Labels, s.Pixels, wantLabels, wantPixels)
	}
}

func TestSyntheticPrefix(t *testing.T) {
	long := Synthetic(300, 32, 5, 7)
	short := Synthetic(100, 32, 5, 7)
	if !bytes.Equal(short.Labels, long.Labels[:100]) || !bytes.Equal(short.Pixels, long.Pixels[:100*32]) {
		t.Error("Synthetic(100, ...) is not a prefix of Synthetic(300, ...)")
	}
}

func TestSyntheticShape(t *testing.T) {
	s := Synthetic(1000, 784, 10, 3)
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if s.Len() != 1000 || s.Dim != 784 || s.Classes != 10 {
		t.Errorf("Len, Dim, Classes = %d, %d, %d, want 1000, 784, 10", s.Len(), s.Dim, s.Classes)
	}
	var counts [10]int
	for _, l := range s.Labels {
		counts[l]++
	}
	for c, n := range counts {
		if n < 50 || n > 150 {
			t.Errorf("class %d has %d of 1000 examples, want about 100", c, n)
		}
	}
	if empty := Synthetic(0, 5, 2, 1); empty.Len() != 0 || len(empty.Pixels) != 0 {
		t.Errorf("Synthetic(0, ...) has %d examples, %d pixels", empty.Len(), len(empty.Pixels))
	}
}

func TestSyntheticPanicsOnInvalidArguments(t *testing.T) {
	for _, tc := range []struct{ n, dim, classes int }{
		{-1, 10, 10}, {10, 0, 10}, {10, 10, 0}, {10, 10, 257},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Synthetic(%d, %d, %d, 1) did not panic", tc.n, tc.dim, tc.classes)
				}
			}()
			Synthetic(tc.n, tc.dim, tc.classes, 1)
		}()
	}
}

// TestSyntheticLearnable trains multinomial logistic regression on the
// catalog's synthetic train split and checks its test accuracy.
func TestSyntheticLearnable(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a model")
	}
	c := NewCatalog()
	train, err := c.Load(NameSynthetic, SplitTrain)
	if err != nil {
		t.Fatal(err)
	}
	test, err := c.Load(NameSynthetic, SplitTest)
	if err != nil {
		t.Fatal(err)
	}
	w := trainLogReg(train, 3, 0.01)
	acc := accuracy(w, test)
	t.Logf("logistic regression test accuracy %.4f", acc)
	if acc < 0.9 {
		t.Errorf("logistic regression test accuracy %.4f, want >= 0.9", acc)
	}
}

// trainLogReg fits softmax regression (weights then bias per class) by plain
// SGD, just enough to tell learnable data from noise.
func trainLogReg(s *Set, epochs int, lr float64) []float64 {
	stride := s.Dim + 1
	w := make([]float64, s.Classes*stride)
	x := make([]float64, s.Dim)
	logits := make([]float64, s.Classes)
	for range epochs {
		for i := range s.Len() {
			for j, p := range s.Pixels[i*s.Dim : (i+1)*s.Dim] {
				x[j] = float64(p) / 255
			}
			softmax(w, x, logits)
			for c := range s.Classes {
				g := logits[c]
				if c == int(s.Labels[i]) {
					g--
				}
				row := w[c*stride : (c+1)*stride]
				for j, xj := range x {
					row[j] -= lr * g * xj
				}
				row[s.Dim] -= lr * g
			}
		}
	}
	return w
}

func softmax(w, x, out []float64) {
	stride := len(x) + 1
	maxLogit := math.Inf(-1)
	for c := range out {
		row := w[c*stride : (c+1)*stride]
		z := row[len(x)]
		for j, xj := range x {
			z += row[j] * xj
		}
		out[c] = z
		maxLogit = max(maxLogit, z)
	}
	var sum float64
	for c := range out {
		out[c] = math.Exp(out[c] - maxLogit)
		sum += out[c]
	}
	for c := range out {
		out[c] /= sum
	}
}

func accuracy(w []float64, s *Set) float64 {
	x := make([]float64, s.Dim)
	p := make([]float64, s.Classes)
	correct := 0
	for i := range s.Len() {
		for j, v := range s.Pixels[i*s.Dim : (i+1)*s.Dim] {
			x[j] = float64(v) / 255
		}
		softmax(w, x, p)
		best := 0
		for c := range p {
			if p[c] > p[best] {
				best = c
			}
		}
		if best == int(s.Labels[i]) {
			correct++
		}
	}
	return float64(correct) / float64(s.Len())
}
