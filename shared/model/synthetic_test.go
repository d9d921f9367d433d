package model

import (
	"context"
	"slices"
	"testing"

	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func TestSyntheticModel(t *testing.T) {
	const kind = "synthetic:5" // 1.25 M values: 2 tensors
	if !Known(kind) {
		t.Fatalf("Known(%q) = false", kind)
	}
	for _, bad := range []string{"synthetic:0", "synthetic:x", "synthetic:", "synthetic:99999", "synthetic:-1"} {
		if Known(bad) {
			t.Errorf("Known(%q) = true", bad)
		}
		if _, err := New(bad, 784, 10, 1); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	specs, err := SpecsFor(kind, 784, 10)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range specs {
		if s.Size() > syntheticTensorVals {
			t.Errorf("tensor %s has %d values, over %d", s.Name, s.Size(), syntheticTensorVals)
		}
		n += s.Size()
	}
	if n != 1_250_000 || len(specs) != 2 {
		t.Fatalf("%d tensors of %d values; want 2 of 1,250,000 (5 MB of float32)", len(specs), n)
	}
	a, err := New(kind, 784, 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if a.NumParams() != n || !slices.EqualFunc(a.Specs(), specs, func(x, y tensor.Spec) bool { return x.Name == y.Name && slices.Equal(x.Shape, y.Shape) }) {
		t.Fatalf("New's layout differs from SpecsFor's")
	}
	// The wire round trip is exact.
	b, _ := New(kind, 784, 10, 2)
	if err := b.SetTensors(a.Tensors()); err != nil {
		t.Fatal(err)
	}
	if !equalParams(a.Params(), b.Params()) {
		t.Fatal("SetTensors(Tensors()) changed the values")
	}
	// Training is a seeded perturbation: deterministic, per seed, small.
	set := &dataset.Set{Dim: 784, Classes: 10, Labels: make([]uint8, 30), Pixels: make([]uint8, 30*784)}
	opt := TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 1, Seed: 5}
	c1, c2, c3 := a.Clone(), a.Clone(), a.Clone()
	st, err := c1.Train(context.Background(), set, opt)
	if err != nil || st.Examples != 30 {
		t.Fatalf("Train = %+v, %v", st, err)
	}
	c2.Train(context.Background(), set, opt)
	opt.Seed = 6
	c3.Train(context.Background(), set, opt)
	if !equalParams(c1.Params(), c2.Params()) {
		t.Error("two trainings with the same seed differ")
	}
	if equalParams(c1.Params(), c3.Params()) || equalParams(c1.Params(), a.Params()) {
		t.Error("training did not move the weights, or moved them the same for another seed")
	}
	p0, p1 := a.Params()[0], c1.Params()[0]
	for i := range p0 {
		if d := p1[i] - p0[i]; d > 0.01 || d < -0.01 {
			t.Fatalf("value %d moved by %v; want a perturbation of about 0.001", i, d)
		}
	}
	if m, err := c1.Evaluate(set); err != nil || m.Examples != 30 || !(m.Loss > 0.5 && m.Loss < 2) {
		t.Errorf("Evaluate = %+v, %v; want the mean square weight, about 1", m, err)
	}
}

func equalParams(a, b [][]float32) bool {
	return slices.EqualFunc(a, b, func(x, y []float32) bool { return slices.Equal(x, y) })
}
