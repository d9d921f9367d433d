package model

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// randomSet returns n examples with uniformly random pixels and labels.
func randomSet(seed uint64, n, dim, classes int) *dataset.Set {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := &dataset.Set{
		Pixels:  make([]uint8, n*dim),
		Labels:  make([]uint8, n),
		Dim:     dim,
		Classes: classes,
	}
	for i := range s.Pixels {
		s.Pixels[i] = uint8(rng.IntN(256))
	}
	for i := range s.Labels {
		s.Labels[i] = uint8(rng.IntN(classes))
	}
	return s
}

// separableSet returns n noisy examples whose class c lights up the c-th
// block of pixels, so a linear model can separate them.
func separableSet(seed uint64, n, dim, classes int) *dataset.Set {
	rng := rand.New(rand.NewPCG(seed, 2))
	s := &dataset.Set{
		Pixels:  make([]uint8, n*dim),
		Labels:  make([]uint8, n),
		Dim:     dim,
		Classes: classes,
	}
	block := dim / classes
	for i := range n {
		c := rng.IntN(classes)
		s.Labels[i] = uint8(c)
		row := s.Pixels[i*dim : (i+1)*dim]
		for j := range row {
			v := rng.IntN(100) // background noise
			if j/block == c {
				v += 120
			}
			row[j] = uint8(v)
		}
	}
	return s
}

func mustNew(t testing.TB, kind string, inDim, classes int, seed uint64) *Net {
	t.Helper()
	n, err := New(kind, inDim, classes, seed)
	if err != nil {
		t.Fatalf("New(%q, %d, %d, %d): %v", kind, inDim, classes, seed, err)
	}
	return n
}

func TestNewShapes(t *testing.T) {
	for _, tc := range []struct {
		kind      string
		wantNames []string
		wantN     int
	}{
		{KindLogReg, []string{"fc0.weight", "fc0.bias"}, 784*10 + 10},
		{Kind2NN, []string{"fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
			784*200 + 200 + 200*200 + 200 + 200*10 + 10},
	} {
		n := mustNew(t, tc.kind, 784, 10, 1)
		if n.Kind() != tc.kind || n.InDim() != 784 || n.Classes() != 10 {
			t.Errorf("%s: Kind, InDim, Classes = %q, %d, %d", tc.kind, n.Kind(), n.InDim(), n.Classes())
		}
		if n.NumParams() != tc.wantN {
			t.Errorf("%s: NumParams = %d, want %d", tc.kind, n.NumParams(), tc.wantN)
		}
		sp := n.Specs()
		var names []string
		total := 0
		for _, s := range sp {
			names = append(names, s.Name)
			total += s.Size()
		}
		if !slices.Equal(names, tc.wantNames) {
			t.Errorf("%s: spec names %v, want %v", tc.kind, names, tc.wantNames)
		}
		if total != tc.wantN {
			t.Errorf("%s: specs hold %d values, want %d", tc.kind, total, tc.wantN)
		}
		if got := sp[0].Shape; !slices.Equal(got, []int64{int64(n.layers[0].out), 784}) {
			t.Errorf("%s: fc0.weight shape %v, want [out 784]", tc.kind, got)
		}
		for i, p := range n.Params() {
			if len(p) != sp[i].Size() {
				t.Errorf("%s: Params()[%d] has %d values, spec %v wants %d", tc.kind, i, len(p), sp[i], sp[i].Size())
			}
		}
		byKind, err := SpecsFor(tc.kind, 784, 10)
		if err != nil {
			t.Fatalf("SpecsFor(%q): %v", tc.kind, err)
		}
		if !slices.EqualFunc(byKind, sp, func(a, b tensor.Spec) bool {
			return a.Name == b.Name && slices.Equal(a.Shape, b.Shape)
		}) {
			t.Errorf("SpecsFor(%q) = %v, Net.Specs = %v", tc.kind, byKind, sp)
		}
	}
}

func TestNewInit(t *testing.T) {
	lr := mustNew(t, KindLogReg, 784, 10, 7)
	for i, w := range lr.params {
		if w != 0 {
			t.Fatalf("logreg param %d = %v, want zero init", i, w)
		}
	}
	a, b, c := mustNew(t, Kind2NN, 784, 10, 7), mustNew(t, Kind2NN, 784, 10, 7), mustNew(t, Kind2NN, 784, 10, 8)
	if !slices.Equal(a.params, b.params) {
		t.Error("2nn with the same seed initialized differently")
	}
	if slices.Equal(a.params, c.params) {
		t.Error("2nn with different seeds initialized identically")
	}
	// He init: the first layer's weights have variance 2/784.
	var ss float64
	for _, w := range a.layers[0].w {
		ss += w * w
	}
	if v := ss / float64(len(a.layers[0].w)); math.Abs(v-2.0/784)/(2.0/784) > 0.05 {
		t.Errorf("fc0.weight variance %v, want about %v", v, 2.0/784)
	}
	for i, w := range a.params {
		if w != roundToFloat32(w) {
			t.Fatalf("param %d = %v is not a float32 value", i, w)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		kind           string
		inDim, classes int
		want           string
	}{
		{"resnet", 784, 10, "logreg, 2nn, cnn"},
		{KindCNN, 100, 10, "28×28 images"},
		{"", 784, 10, "unknown model kind"},
		{KindLogReg, 0, 10, "input dimension"},
		{Kind2NN, 784, 1, "classes"},
		{Kind2NN, 784, 257, "classes"},
	} {
		if _, err := New(tc.kind, tc.inDim, tc.classes, 1); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q, %d, %d) error = %v, want one containing %q", tc.kind, tc.inDim, tc.classes, err, tc.want)
		}
		if _, err := SpecsFor(tc.kind, tc.inDim, tc.classes); err == nil {
			t.Errorf("SpecsFor(%q, %d, %d) succeeded, want error", tc.kind, tc.inDim, tc.classes)
		}
	}
	if got := Kinds(); !slices.Equal(got, []string{"logreg", "2nn"}) {
		t.Errorf("Kinds() = %v", got)
	}
}

// objectiveValue recomputes, independently of the backprop code, the loss
// the gradient is supposed to belong to: mean cross-entropy plus the
// proximal term.
func objectiveValue(n *Net, ws *workspace, rows int, anchor []float64, mu float64) float64 {
	n.forward(ws, rows)
	loss, _ := n.score(ws, rows, false)
	var prox float64
	for i, w := range n.params {
		prox += (w - anchor[i]) * (w - anchor[i])
	}
	return loss/float64(rows) + mu/2*prox
}

func TestGradientCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sizes []int
		mu    float64
	}{
		{"logreg", []int{6, 3}, 0},
		{"logreg-prox", []int{6, 3}, 0.3},
		{"mlp", []int{6, 5, 4, 3}, 0},
		{"mlp-prox", []int{6, 5, 4, 3}, 0.3},
		// Hidden layers at least wideLayer wide are stored in-major.
		{"wide", []int{5, wideLayer + 6, wideLayer, 3}, 0},
		{"wide-prox", []int{5, wideLayer + 6, wideLayer, 3}, 0.3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const rows = 7
			n := newNet("test", tc.sizes, true, 3)
			wide := 0
			for _, ly := range n.layers {
				if ly.inMajor {
					wide++
				}
			}
			t.Logf("%d of %d layers stored in-major", wide, len(n.layers))
			// Random biases too, so that their gradients are exercised
			// away from zero, and an anchor away from the weights so the
			// proximal gradient is nonzero.
			rng := rand.New(rand.NewPCG(4, 4))
			anchor := make([]float64, len(n.params))
			for i := range n.params {
				n.params[i] += 0.3 * rng.NormFloat64()
				anchor[i] = n.params[i] + 0.05*rng.NormFloat64()
			}
			set := randomSet(5, rows, tc.sizes[0], tc.sizes[len(tc.sizes)-1])
			ws := n.newWorkspace(rows, true)
			ws.loadRange(set, 0, rows)
			n.objective(ws, rows, anchor, tc.mu)
			analytic := append([]float64(nil), ws.grad...)

			const h = 1e-5
			worst := 0.0
			for i := range n.params {
				orig := n.params[i]
				n.params[i] = orig + h
				fp := objectiveValue(n, ws, rows, anchor, tc.mu)
				n.params[i] = orig - h
				fm := objectiveValue(n, ws, rows, anchor, tc.mu)
				n.params[i] = orig
				numeric := (fp - fm) / (2 * h)
				a := analytic[i]
				// Relative error, with a floor so that parameters with a
				// (near) zero gradient are judged by absolute error.
				rel := math.Abs(a-numeric) / math.Max(math.Max(math.Abs(a), math.Abs(numeric)), 1e-4)
				if rel > worst {
					worst = rel
				}
				if rel > 1e-5 {
					t.Errorf("param %d: analytic %v, numeric %v, relative error %v", i, a, numeric, rel)
				}
			}
			t.Logf("%d params, worst relative error %.3g", len(n.params), worst)
		})
	}
}

func TestTrainLearnsSeparable(t *testing.T) {
	const dim, classes = 40, 4
	train := separableSet(1, 800, dim, classes)
	test := separableSet(2, 400, dim, classes)
	for _, kind := range Kinds() {
		t.Run(kind, func(t *testing.T) {
			n := mustNew(t, kind, dim, classes, 1)
			before, err := n.Evaluate(test)
			if err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
			var losses []float64
			for epoch := range 4 {
				st, err := n.Train(context.Background(), train, TrainOptions{
					LearningRate: 0.05, BatchSize: 10, Epochs: 1, Seed: uint64(epoch),
				})
				if err != nil {
					t.Fatalf("Train epoch %d: %v", epoch, err)
				}
				if st.Examples != train.Len() || st.Steps != 80 {
					t.Errorf("epoch %d: stats %+v, want 800 examples and 80 steps", epoch, st)
				}
				losses = append(losses, st.Loss)
			}
			after, err := n.Evaluate(test)
			if err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
			t.Logf("training losses %v; test %+v -> %+v", losses, before, after)
			for i := 1; i < len(losses); i++ {
				if losses[i] >= losses[i-1] {
					t.Errorf("training loss did not decrease: %v", losses)
				}
			}
			if after.Loss >= before.Loss {
				t.Errorf("test loss %v -> %v, want a decrease", before.Loss, after.Loss)
			}
			if after.Accuracy <= 0.9 {
				t.Errorf("test accuracy %v, want > 0.9", after.Accuracy)
			}
			if after.Examples != test.Len() {
				t.Errorf("evaluated %d examples, want %d", after.Examples, test.Len())
			}
		})
	}
}

func TestTrainMultipleEpochs(t *testing.T) {
	train := separableSet(1, 300, 40, 4)
	n := mustNew(t, Kind2NN, 40, 4, 1)
	st, err := n.Train(context.Background(), train, TrainOptions{LearningRate: 0.05, BatchSize: 32, Epochs: 3, Seed: 1})
	if err != nil {
		t.Fatalf("Train: %v", err)
	}
	// 300/32 = 9 full batches and one of 12, per epoch.
	if st.Steps != 30 || st.Examples != 300 {
		t.Errorf("stats %+v, want 30 steps and 300 examples", st)
	}
	if st.Accuracy <= 0.9 {
		t.Errorf("last-epoch training accuracy %v, want > 0.9", st.Accuracy)
	}
	// A batch larger than the set is full-batch gradient descent.
	st, err = n.Train(context.Background(), train, TrainOptions{LearningRate: 0.05, BatchSize: 1000, Epochs: 2, Seed: 1})
	if err != nil {
		t.Fatalf("Train: %v", err)
	}
	if st.Steps != 2 {
		t.Errorf("full batch: %d steps, want 2", st.Steps)
	}
}

func TestProximalTermLimitsDrift(t *testing.T) {
	train := separableSet(1, 400, 40, 4)
	drift := func(mu float64) float64 {
		n := mustNew(t, Kind2NN, 40, 4, 1)
		start := append([]float64(nil), n.params...)
		if _, err := n.Train(context.Background(), train, TrainOptions{
			LearningRate: 0.05, BatchSize: 10, Epochs: 2, Seed: 1, ProximalMu: mu,
		}); err != nil {
			t.Fatalf("Train(mu=%v): %v", mu, err)
		}
		var ss float64
		for i, w := range n.params {
			ss += (w - start[i]) * (w - start[i])
		}
		return math.Sqrt(ss)
	}
	plain, prox := drift(0), drift(1)
	t.Logf("distance from start: mu=0 %v, mu=1 %v", plain, prox)
	if !(prox < 0.9*plain) {
		t.Errorf("distance from start with mu=1 is %v, without %v; want clearly smaller", prox, plain)
	}
}

func paramBits(n *Net) []uint32 {
	var bits []uint32
	for _, p := range n.Params() {
		for _, v := range p {
			bits = append(bits, math.Float32bits(v))
		}
	}
	return bits
}

func TestTrainDeterministic(t *testing.T) {
	set := randomSet(9, 300, 784, 10)
	opt := TrainOptions{LearningRate: 0.05, BatchSize: 10, Epochs: 2, Seed: 42, ProximalMu: 0.01}
	run := func(kind string, procs int, opt TrainOptions) ([]uint32, TrainStats) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		n := mustNew(t, kind, 784, 10, 5)
		st, err := n.Train(context.Background(), set, opt)
		if err != nil {
			t.Fatalf("Train(%s, GOMAXPROCS=%d): %v", kind, procs, err)
		}
		return paramBits(n), st
	}
	for _, kind := range Kinds() {
		ref, refStats := run(kind, 2, opt)
		for _, procs := range []int{2, 1, 4} {
			got, st := run(kind, procs, opt)
			if !slices.Equal(got, ref) {
				t.Errorf("%s: GOMAXPROCS=%d gave different weights than the reference run", kind, procs)
			}
			if st != refStats {
				t.Errorf("%s: GOMAXPROCS=%d stats %+v, reference %+v", kind, procs, st, refStats)
			}
		}
		// The seed must matter, or the comparison above proves nothing
		// about shuffling.
		other := opt
		other.Seed++
		if got, _ := run(kind, 2, other); slices.Equal(got, ref) {
			t.Errorf("%s: a different shuffle seed gave identical weights", kind)
		}
	}
}

func TestTrainRejectsOptions(t *testing.T) {
	good := TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 1}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(%+v): %v", good, err)
	}
	set := separableSet(1, 20, 8, 2)
	for _, tc := range []struct {
		name   string
		modify func(*TrainOptions)
	}{
		{"zero lr", func(o *TrainOptions) { o.LearningRate = 0 }},
		{"negative lr", func(o *TrainOptions) { o.LearningRate = -1 }},
		{"NaN lr", func(o *TrainOptions) { o.LearningRate = math.NaN() }},
		{"Inf lr", func(o *TrainOptions) { o.LearningRate = math.Inf(1) }},
		{"zero batch", func(o *TrainOptions) { o.BatchSize = 0 }},
		{"zero epochs", func(o *TrainOptions) { o.Epochs = 0 }},
		{"negative mu", func(o *TrainOptions) { o.ProximalMu = -0.1 }},
		{"NaN mu", func(o *TrainOptions) { o.ProximalMu = math.NaN() }},
	} {
		opt := good
		tc.modify(&opt)
		if err := opt.Validate(); err == nil {
			t.Errorf("%s: Validate(%+v) succeeded", tc.name, opt)
		}
		n := mustNew(t, KindLogReg, 8, 2, 1)
		if _, err := n.Train(context.Background(), set, opt); err == nil {
			t.Errorf("%s: Train succeeded", tc.name)
		}
	}
}

func TestTrainEvaluateRejectSets(t *testing.T) {
	opt := TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 1}
	good := separableSet(1, 20, 8, 2)
	badLabel := separableSet(1, 20, 8, 2)
	badLabel.Labels[3] = 2
	shortPixels := separableSet(1, 20, 8, 2)
	shortPixels.Pixels = shortPixels.Pixels[:len(shortPixels.Pixels)-1]
	for _, tc := range []struct {
		name string
		set  *dataset.Set
	}{
		{"nil", nil},
		{"empty", &dataset.Set{Dim: 8, Classes: 2}},
		{"wrong dim", separableSet(1, 20, 9, 2)},
		{"wrong classes", separableSet(1, 20, 8, 3)},
		{"label out of range", badLabel},
		{"pixels short", shortPixels},
	} {
		n := mustNew(t, KindLogReg, 8, 2, 1)
		if _, err := n.Train(context.Background(), tc.set, opt); err == nil {
			t.Errorf("%s: Train succeeded", tc.name)
		}
		if _, err := n.Evaluate(tc.set); err == nil {
			t.Errorf("%s: Evaluate succeeded", tc.name)
		}
	}
	n := mustNew(t, KindLogReg, 8, 2, 1)
	if _, err := n.Train(context.Background(), good, opt); err != nil {
		t.Errorf("good set: Train: %v", err)
	}
}

func TestTrainDivergenceLeavesNetUnchanged(t *testing.T) {
	set := separableSet(1, 100, 40, 4)
	n := mustNew(t, Kind2NN, 40, 4, 1)
	before := paramBits(n)
	_, err := n.Train(context.Background(), set, TrainOptions{LearningRate: 1e300, BatchSize: 10, Epochs: 1})
	if err == nil || !strings.Contains(err.Error(), "diverged") {
		t.Fatalf("Train with lr 1e300: error %v, want divergence", err)
	}
	if !slices.Equal(paramBits(n), before) {
		t.Error("weights changed after a failed Train")
	}
}

// cancelAfter is a context whose Err turns to Canceled after a number of
// calls, to cancel deterministically in the middle of an epoch.
type cancelAfter struct {
	context.Context
	calls, limit int
}

func (c *cancelAfter) Err() error {
	c.calls++
	if c.calls > c.limit {
		return context.Canceled
	}
	return nil
}

func TestTrainCancelled(t *testing.T) {
	set := separableSet(1, 200, 40, 4)
	n := mustNew(t, Kind2NN, 40, 4, 1)
	before := paramBits(n)
	ctx := &cancelAfter{Context: context.Background(), limit: 7}
	_, err := n.Train(ctx, set, TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 3})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Train with a context cancelled mid-epoch: %v, want context.Canceled", err)
	}
	if ctx.calls != ctx.limit+1 {
		t.Errorf("Train checked the context %d times, want it to stop at the first cancelled check (%d)", ctx.calls, ctx.limit+1)
	}
	if !slices.Equal(paramBits(n), before) {
		t.Error("weights changed after a cancelled Train")
	}

	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Train(cctx, set, TrainOptions{LearningRate: 0.1, BatchSize: 10, Epochs: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Train with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestTensorsRoundTrip(t *testing.T) {
	set := separableSet(1, 200, 40, 4)
	n := mustNew(t, Kind2NN, 40, 4, 1)
	if _, err := n.Train(context.Background(), set, TrainOptions{LearningRate: 0.05, BatchSize: 10, Epochs: 1, Seed: 3}); err != nil {
		t.Fatalf("Train: %v", err)
	}
	ts := n.Tensors()
	m := mustNew(t, Kind2NN, 40, 4, 2)
	if err := m.SetTensors(ts); err != nil {
		t.Fatalf("SetTensors: %v", err)
	}
	if !slices.Equal(paramBits(m), paramBits(n)) {
		t.Error("params differ after a Tensors/SetTensors round trip")
	}
	// Same float64 state, hence identical outputs: trained weights were
	// rounded to float32, so nothing is lost on the wire.
	if !slices.Equal(m.params, n.params) {
		t.Error("internal weights differ after a round trip")
	}
	mn, err := n.Evaluate(set)
	if err != nil {
		t.Fatal(err)
	}
	mm, err := m.Evaluate(set)
	if err != nil {
		t.Fatal(err)
	}
	if mn != mm {
		t.Errorf("Evaluate differs after round trip: %+v vs %+v", mn, mm)
	}
	for i, tt := range m.Tensors() {
		if string(tt.Data) != string(ts[i].Data) {
			t.Errorf("tensor %s bytes differ after round trip", tt.Name)
		}
	}

	// Params/SetParams and Clone round-trip too, and Clone is deep.
	c := n.Clone()
	if err := c.SetParams(n.Params()); err != nil {
		t.Fatalf("SetParams: %v", err)
	}
	if !slices.Equal(paramBits(c), paramBits(n)) {
		t.Error("clone differs")
	}
	c.params[0]++
	if c.params[0] == n.params[0] {
		t.Error("Clone shares memory with the original")
	}
}

func TestSetTensorsRejects(t *testing.T) {
	n := mustNew(t, Kind2NN, 20, 3, 1)
	before := paramBits(n)
	sp := n.Specs()
	good := func() []*fdxv1.Tensor { return mustNew(t, Kind2NN, 20, 3, 2).Tensors() }
	withValue := func(v float32) []*fdxv1.Tensor {
		p := mustNew(t, Kind2NN, 20, 3, 2).Params()
		p[2][5] = v
		return tensor.Encode(p, sp)
	}
	for _, tc := range []struct {
		name string
		ts   []*fdxv1.Tensor
	}{
		{"too few", good()[:5]},
		{"too many", append(good(), good()[0])},
		{"none", nil},
		{"wrong name", func() []*fdxv1.Tensor { ts := good(); ts[1].Name = "fc0.b"; return ts }()},
		{"swapped order", func() []*fdxv1.Tensor { ts := good(); ts[0], ts[2] = ts[2], ts[0]; return ts }()},
		{"wrong shape", func() []*fdxv1.Tensor {
			ts := good()
			ts[0] = tensor.FromFloat32("fc0.weight", []int64{20, 200}, make([]float32, 4000))
			return ts
		}()},
		{"transposed shape", func() []*fdxv1.Tensor {
			ts := good()
			ts[4] = tensor.FromFloat32("fc2.weight", []int64{200, 3}, make([]float32, 600))
			return ts
		}()},
		{"short data", func() []*fdxv1.Tensor { ts := good(); ts[1].Data = ts[1].Data[:8]; return ts }()},
		{"nil tensor", func() []*fdxv1.Tensor { ts := good(); ts[3] = nil; return ts }()},
		{"NaN", withValue(float32(math.NaN()))},
		{"+Inf", withValue(float32(math.Inf(1)))},
		{"-Inf", withValue(float32(math.Inf(-1)))},
	} {
		if err := n.SetTensors(tc.ts); err == nil {
			t.Errorf("%s: SetTensors succeeded", tc.name)
		}
		if !slices.Equal(paramBits(n), before) {
			t.Fatalf("%s: weights changed after a rejected SetTensors", tc.name)
		}
	}

	p := n.Params()
	p[1] = p[1][:len(p[1])-1]
	if err := n.SetParams(p); err == nil {
		t.Error("SetParams with a short tensor succeeded")
	}
	p = n.Params()
	p[3][0] = float32(math.NaN())
	if err := n.SetParams(p); err == nil {
		t.Error("SetParams with NaN succeeded")
	}
	if err := n.SetParams(n.Params()[:2]); err == nil {
		t.Error("SetParams with too few tensors succeeded")
	}
	if !slices.Equal(paramBits(n), before) {
		t.Error("weights changed after a rejected SetParams")
	}
}

func TestEvaluateBatches(t *testing.T) {
	// 2500 rows span three evaluation batches, the last one partial; the
	// result must match a row-by-row computation.
	set := randomSet(3, 2500, 30, 5)
	n := mustNew(t, Kind2NN, 30, 5, 1)
	got, err := n.Evaluate(set)
	if err != nil {
		t.Fatal(err)
	}
	ws := n.newWorkspace(1, false)
	var loss float64
	correct := 0
	for i := range set.Len() {
		ws.loadRange(set, i, i+1)
		n.forward(ws, 1)
		l, c := n.score(ws, 1, false)
		loss += l
		correct += c
	}
	want := Metrics{Loss: loss / 2500, Accuracy: float64(correct) / 2500, Examples: 2500}
	if math.Abs(got.Loss-want.Loss) > 1e-12 || got.Accuracy != want.Accuracy || got.Examples != want.Examples {
		t.Errorf("Evaluate = %+v, row by row %+v", got, want)
	}
	// Untrained, the loss is near ln(5) for a balanced random guess.
	if math.Abs(got.Loss-math.Log(5)) > 0.5 {
		t.Errorf("untrained loss %v, want near ln 5 = %v", got.Loss, math.Log(5))
	}
}
