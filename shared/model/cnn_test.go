package model

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
)

func TestCNNSpecs(t *testing.T) {
	sp, err := SpecsFor(KindCNN, 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range sp {
		total += s.Size()
	}
	// The FedAvg paper gives the CNN 1,663,370 parameters.
	if total != 1_663_370 {
		t.Errorf("CNN has %d parameters, want 1663370", total)
	}
	names := []string{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
	for i, s := range sp {
		if s.Name != names[i] {
			t.Errorf("spec %d is %q, want %q", i, s.Name, names[i])
		}
	}
	if !Known(KindCNN) {
		t.Error("Known(cnn) = false")
	}
	if _, err := SpecsFor(KindCNN, 100, 10); err == nil {
		t.Error("SpecsFor(cnn, 100 inputs) accepted a non-image dimension")
	}
	if _, err := New(KindCNN, 784, 1, 1); err == nil {
		t.Error("New(cnn, 1 class) succeeded")
	}
}

func TestCNNInitDeterministic(t *testing.T) {
	a, err := New(KindCNN, 784, 10, 7)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New(KindCNN, 784, 10, 7)
	c, _ := New(KindCNN, 784, 10, 8)
	if !slices.Equal(a.params, b.params) {
		t.Error("two CNNs of seed 7 differ")
	}
	if slices.Equal(a.params, c.params) {
		t.Error("CNNs of seeds 7 and 8 are equal")
	}
	// Every weight within PyTorch's default bound ±1/√fan_in.
	sp := a.Specs()
	p := a.Params()
	for i, s := range sp {
		fanIn := sp[i&^1].Size() / int(sp[i&^1].Shape[0])
		bound := float32(1 / math.Sqrt(float64(fanIn)))
		for _, v := range p[i] {
			if v < -bound || v > bound {
				t.Fatalf("%s has %v outside ±%v", s.Name, v, bound)
			}
		}
	}
	// Params and SetParams round-trip exactly, and a clone is equal.
	d, _ := New(KindCNN, 784, 10, 9)
	if err := d.SetParams(a.Params()); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.params, a.params) || !slices.Equal(a.Clone().params, a.params) {
		t.Error("SetParams(Params()) or Clone changed the weights")
	}
	if err := d.SetTensors(a.Tensors()); err != nil {
		t.Fatal(err)
	}
}

func TestCNNNotTrainedInGo(t *testing.T) {
	n, _ := New(KindCNN, 784, 10, 1)
	before := slices.Clone(n.params)
	_, err := n.Train(context.Background(), randomSet(1, 20, 784, 10), TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 1})
	if !errors.Is(err, ErrNotTrainable) {
		t.Fatalf("Train = %v, want ErrNotTrainable", err)
	}
	if !slices.Equal(before, n.params) {
		t.Error("a refused Train changed the weights")
	}
}

// TestCNNForwardMatchesDirect compares the im2col forward pass with a
// direct transcription of the network (NCHW, loops over every tap), on
// random weights scaled so that every ReLU and pooling choice matters.
func TestCNNForwardMatchesDirect(t *testing.T) {
	n, _ := New(KindCNN, 784, 10, 3)
	for i := range n.params { // larger weights: activations far from zero
		n.params[i] *= 4
	}
	set := randomSet(5, 37, 784, 10) // more than one batch, the last partial
	ws := newCNNWorkspace(cnnEvalBatch, 10)
	p := n.cnnViews()
	var sumLoss float64
	correct := 0
	for lo := 0; lo < set.Len(); lo += cnnEvalBatch {
		hi := min(lo+cnnEvalBatch, set.Len())
		for j, px := range set.Pixels[lo*784 : hi*784] {
			ws.x[j] = float64(px) / 255
		}
		n.cnnForward(ws, p, hi-lo)
		for r := range hi - lo {
			want := directCNN(p, ws.x[r*784:(r+1)*784])
			got := ws.logits[r*10 : (r+1)*10]
			for j := range want {
				if d := math.Abs(got[j] - want[j]); d > 1e-9*(1+math.Abs(want[j])) {
					t.Fatalf("image %d logit %d: im2col %v, direct %v", lo+r, j, got[j], want[j])
				}
			}
			l, c := scoreLogits(want, set.Labels[lo+r:lo+r+1], 10)
			sumLoss += l
			correct += c
		}
	}
	m, err := n.Evaluate(set)
	if err != nil {
		t.Fatal(err)
	}
	if m.Examples != set.Len() || m.Accuracy != float64(correct)/float64(set.Len()) || math.Abs(m.Loss-sumLoss/float64(set.Len())) > 1e-9 {
		t.Errorf("Evaluate = %+v; direct: loss %v, %d correct", m, sumLoss/float64(set.Len()), correct)
	}
}

// directCNN is the CNN written as its definition reads, for one image.
func directCNN(p cnnParams, x []float64) []float64 {
	conv := func(in []float64, ch, side int, w, b []float64, out int) []float64 {
		y := make([]float64, out*side*side)
		for o := range out {
			for h := range side {
				for v := range side {
					s := b[o]
					for c := range ch {
						for dh := range 5 {
							for dv := range 5 {
								yy, xx := h+dh-2, v+dv-2
								if yy < 0 || yy >= side || xx < 0 || xx >= side {
									continue
								}
								s += in[(c*side+yy)*side+xx] * w[((o*ch+c)*5+dh)*5+dv]
							}
						}
					}
					y[(o*side+h)*side+v] = max(s, 0)
				}
			}
		}
		return y
	}
	pool := func(in []float64, ch, side int) []float64 {
		half := side / 2
		y := make([]float64, ch*half*half)
		for c := range ch {
			for h := range half {
				for v := range half {
					m := math.Inf(-1)
					for _, d := range [][2]int{{0, 0}, {0, 1}, {1, 0}, {1, 1}} {
						m = max(m, in[(c*side+2*h+d[0])*side+2*v+d[1]])
					}
					y[(c*half+h)*half+v] = m
				}
			}
		}
		return y
	}
	dense := func(in, w, b []float64, out int, relu bool) []float64 {
		y := make([]float64, out)
		for o := range out {
			s := b[o]
			for i, v := range in {
				s += v * w[o*len(in)+i]
			}
			if relu {
				s = max(s, 0)
			}
			y[o] = s
		}
		return y
	}
	a := pool(conv(x, 1, 28, p.w1, p.b1, 32), 32, 28)
	a = pool(conv(a, 32, 14, p.w2, p.b2, 64), 64, 14)
	a = dense(a, p.w3, p.b3, 512, true)
	return dense(a, p.w4, p.b4, 10, false)
}

func BenchmarkCNNEvaluate1000(b *testing.B) {
	n, _ := New(KindCNN, 784, 10, 1)
	set := randomSet(1, 1000, 784, 10)
	b.ResetTimer()
	for range b.N {
		if _, err := n.Evaluate(set); err != nil {
			b.Fatal(err)
		}
	}
}
