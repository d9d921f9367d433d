package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// evalBatch bounds the rows Evaluate holds at once: the 2NN's inputs and
// activations for 1000 rows take about 10 MB, whereas MNIST's 10000 test
// examples at once would take 100 MB of a memory-limited function.
const evalBatch = 1000

// shuffleStream tags the PCG streams that order the examples; the epoch is
// mixed in so that each epoch's order depends only on (seed, epoch), not on
// how many epochs ran before.
const shuffleStream = 0x5348554600000000 // "SHUF" in the high bytes

// TrainOptions configures local training.
type TrainOptions struct {
	// LearningRate is the SGD step size.
	LearningRate float64
	// BatchSize is the number of examples per SGD step. A final partial
	// batch per epoch is used as is. Values above the set size mean
	// full-batch gradient descent.
	BatchSize int
	// Epochs is the number of passes over the set.
	Epochs int
	// Seed determines the example order of every epoch.
	Seed uint64
	// ProximalMu, when positive, adds FedProx's term mu/2·||w - w_start||²
	// to the objective, where w_start are the weights Train started from.
	// It limits how far heterogeneous clients drift from the global model.
	ProximalMu float64
}

// Validate reports whether the options describe a trainable run.
func (o TrainOptions) Validate() error {
	var errs []error
	if !(o.LearningRate > 0) || math.IsInf(o.LearningRate, 0) {
		errs = append(errs, fmt.Errorf("learning rate %v must be positive and finite", o.LearningRate))
	}
	if o.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("batch size %d must be at least 1", o.BatchSize))
	}
	if o.Epochs < 1 {
		errs = append(errs, fmt.Errorf("epochs %d must be at least 1", o.Epochs))
	}
	if !(o.ProximalMu >= 0) || math.IsInf(o.ProximalMu, 0) {
		errs = append(errs, fmt.Errorf("proximal mu %v must be non-negative and finite", o.ProximalMu))
	}
	return errors.Join(errs...)
}

// TrainStats summarizes a Train call.
type TrainStats struct {
	// Examples is the number of examples in the training set, the weight
	// FedAvg gives this client's update.
	Examples int
	// Steps is the number of SGD steps taken over all epochs.
	Steps int
	// Loss and Accuracy are the mean cross-entropy (without the proximal
	// term) and the fraction of correct predictions over the last epoch,
	// each example scored by the weights before the step that used it.
	// They come for free with training, whereas an exact evaluation of the
	// final weights costs another pass.
	Loss, Accuracy float64
}

// Metrics is the result of Evaluate.
type Metrics struct {
	// Loss is the mean cross-entropy.
	Loss float64
	// Accuracy is the fraction of examples whose most probable class is
	// their label.
	Accuracy float64
	// Examples is the number of examples evaluated.
	Examples int
}

// Train runs minibatch SGD on set. It checks ctx between minibatches so that
// a client past its deadline stops promptly. On any error, including
// cancellation and divergence to non-finite weights, n is left exactly as it
// was, so a caller never holds or sends a half-trained or NaN model.
func (n *Net) Train(ctx context.Context, set *dataset.Set, opt TrainOptions) (TrainStats, error) {
	if err := opt.Validate(); err != nil {
		return TrainStats{}, fmt.Errorf("model: train: invalid options: %w", err)
	}
	if n.synthetic {
		return n.trainSynthetic(ctx, set, opt)
	}
	if n.cnn {
		return TrainStats{}, fmt.Errorf("model: train %s: %w", n.kind, ErrNotTrainable)
	}
	if err := n.checkSet(set); err != nil {
		return TrainStats{}, fmt.Errorf("model: train: %w", err)
	}
	start := append([]float64(nil), n.params...)
	stats, err := n.train(ctx, set, opt, start)
	if err != nil {
		copy(n.params, start)
		return TrainStats{}, fmt.Errorf("model: train: %w", err)
	}
	return stats, nil
}

// train does the work of Train; on error the caller restores the weights
// from start, which is also the proximal anchor.
func (n *Net) train(ctx context.Context, set *dataset.Set, opt TrainOptions, start []float64) (TrainStats, error) {
	total := set.Len()
	batch := min(opt.BatchSize, total)
	ws := n.newWorkspace(batch, true)
	order := make([]int, total)
	stats := TrainStats{Examples: total}
	for epoch := range opt.Epochs {
		for i := range order {
			order[i] = i
		}
		rng := rand.New(rand.NewPCG(opt.Seed, shuffleStream|uint64(epoch)))
		rng.Shuffle(total, func(i, j int) { order[i], order[j] = order[j], order[i] })

		var lossSum float64
		correct := 0
		for lo := 0; lo < total; lo += batch {
			if err := ctx.Err(); err != nil {
				return TrainStats{}, fmt.Errorf("epoch %d, example %d: %w", epoch, lo, err)
			}
			idx := order[lo:min(lo+batch, total)]
			ws.loadIndices(set, idx)
			loss, c := n.objective(ws, len(idx), start, opt.ProximalMu)
			if math.IsNaN(loss) || math.IsInf(loss, 0) {
				return TrainStats{}, fmt.Errorf("epoch %d, step %d: loss diverged to %v; lower the learning rate", epoch, stats.Steps, loss)
			}
			// w ← w − lr·g. The gradient already includes the proximal term.
			gonum.Implementation{}.Daxpy(len(n.params), -opt.LearningRate, ws.grad, 1, n.params, 1)
			lossSum += loss
			correct += c
			stats.Steps++
		}
		stats.Loss = lossSum / float64(total)
		stats.Accuracy = float64(correct) / float64(total)
	}
	// The loss check above cannot see a step that overflowed on the last
	// batch, and rounding to float32 can itself overflow; check every weight.
	for i, w := range n.params {
		r := roundToFloat32(w)
		if math.IsInf(r, 0) || math.IsNaN(r) {
			return TrainStats{}, fmt.Errorf("parameter %d diverged to %v; lower the learning rate", i, w)
		}
		n.params[i] = r
	}
	return stats, nil
}

// Evaluate returns the mean loss and accuracy of n on set, in batches of at
// most 1000 rows to bound memory. It does not modify n.
func (n *Net) Evaluate(set *dataset.Set) (Metrics, error) {
	if n.synthetic {
		return n.evaluateSynthetic(set)
	}
	if n.cnn {
		return n.evaluateCNN(set)
	}
	if err := n.checkSet(set); err != nil {
		return Metrics{}, fmt.Errorf("model: evaluate: %w", err)
	}
	total := set.Len()
	ws := n.newWorkspace(min(evalBatch, total), false)
	var lossSum float64
	correct := 0
	for lo := 0; lo < total; lo += evalBatch {
		hi := min(lo+evalBatch, total)
		ws.loadRange(set, lo, hi)
		n.forward(ws, hi-lo)
		loss, c := n.score(ws, hi-lo, false)
		lossSum += loss
		correct += c
	}
	return meanMetrics(lossSum, correct, total), nil
}

// meanMetrics is Evaluate's result from the summed loss and the correct
// predictions over total examples.
func meanMetrics(lossSum float64, correct, total int) Metrics {
	return Metrics{
		Loss:     lossSum / float64(total),
		Accuracy: float64(correct) / float64(total),
		Examples: total,
	}
}

// checkSet verifies that set fits n and is internally consistent, so that
// training never indexes out of range on a malformed shard.
func (n *Net) checkSet(set *dataset.Set) error {
	switch {
	case set == nil:
		return errors.New("nil data set")
	case set.Len() == 0:
		return errors.New("empty data set")
	case set.Dim != n.InDim():
		return fmt.Errorf("data set has dimension %d, model expects %d", set.Dim, n.InDim())
	case set.Classes != n.Classes():
		return fmt.Errorf("data set has %d classes, model expects %d", set.Classes, n.Classes())
	case len(set.Pixels) != set.Len()*set.Dim:
		return fmt.Errorf("data set has %d pixel values for %d examples of dimension %d", len(set.Pixels), set.Len(), set.Dim)
	}
	for i, y := range set.Labels {
		if int(y) >= set.Classes {
			return fmt.Errorf("example %d has label %d, want < %d", i, y, set.Classes)
		}
	}
	return nil
}

// workspace holds every buffer one minibatch needs, allocated once per
// Train or Evaluate call and reused for every batch.
type workspace struct {
	x []float64 // inputs, rows × inDim
	y []uint8   // labels
	// acts[l] is the output of layer l: ReLU activations for hidden
	// layers, logits for the last.
	acts [][]float64
	// deltas[l] is the gradient of the mean loss with respect to layer l's
	// pre-activation outputs. Nil when evaluating.
	deltas [][]float64
	grad   []float64 // gradient in params layout; nil when evaluating
	gl     []layer   // views into grad
	// feature maps a pixel byte to its feature value p/255; the lookup is
	// cheaper than the division and yields the same bits.
	feature [256]float64
}

func (n *Net) newWorkspace(rows int, training bool) *workspace {
	ws := &workspace{
		x:    make([]float64, rows*n.InDim()),
		y:    make([]uint8, rows),
		acts: make([][]float64, len(n.layers)),
	}
	for p := range ws.feature {
		ws.feature[p] = float64(p) / 255
	}
	for l, ly := range n.layers {
		ws.acts[l] = make([]float64, rows*ly.out)
	}
	if training {
		ws.deltas = make([][]float64, len(n.layers))
		for l, ly := range n.layers {
			ws.deltas[l] = make([]float64, rows*ly.out)
		}
		ws.grad = make([]float64, len(n.params))
		ws.gl = layerViews(ws.grad, n.sizes)
	}
	return ws
}

// loadIndices copies the examples at idx into the workspace.
func (ws *workspace) loadIndices(set *dataset.Set, idx []int) {
	d := set.Dim
	for r, i := range idx {
		ws.toFeatures(ws.x[r*d:(r+1)*d], set.Pixels[i*d:(i+1)*d])
		ws.y[r] = set.Labels[i]
	}
}

// loadRange copies the examples lo..hi-1 into the workspace.
func (ws *workspace) loadRange(set *dataset.Set, lo, hi int) {
	d := set.Dim
	ws.toFeatures(ws.x[:(hi-lo)*d], set.Pixels[lo*d:hi*d])
	copy(ws.y, set.Labels[lo:hi])
}

// toFeatures scales pixels to [0, 1], the input convention of dataset.Set.
func (ws *workspace) toFeatures(dst []float64, src []uint8) {
	for j, p := range src {
		dst[j] = ws.feature[p]
	}
}

// general views a row-major slice as a rows×cols BLAS matrix.
func general(data []float64, rows, cols int) blas64.General {
	return blas64.General{Rows: rows, Cols: cols, Stride: cols, Data: data[:rows*cols]}
}

// gemm computes c = alpha·op(a)·op(b) + beta·c. It calls gonum's pure-Go
// implementation directly rather than through blas64, whose implementation
// any package in the binary may swap (for a cgo BLAS, say): such a library
// may split sums by thread count, and training would no longer be
// deterministic.
func gemm(tA, tB blas.Transpose, alpha float64, a, b blas64.General, beta float64, c blas64.General) {
	m, k := a.Rows, a.Cols
	if tA == blas.Trans {
		m, k = k, m
	}
	n, kb := b.Cols, b.Rows
	if tB == blas.Trans {
		n, kb = kb, n
	}
	if m != c.Rows || n != c.Cols || k != kb {
		panic(fmt.Sprintf("model: gemm shapes %dx%d · %dx%d -> %dx%d", m, k, kb, n, c.Rows, c.Cols))
	}
	gonum.Implementation{}.Dgemm(tA, tB, m, n, k, alpha, a.Data, a.Stride, b.Data, b.Stride, beta, c.Data, c.Stride)
}

// forward computes every layer's output for the first rows inputs in ws.
func (n *Net) forward(ws *workspace, rows int) {
	in := ws.x[:rows*n.InDim()]
	last := len(n.layers) - 1
	for l, ly := range n.layers {
		out := ws.acts[l][:rows*ly.out]
		for r := range rows {
			copy(out[r*ly.out:(r+1)*ly.out], ly.b)
		}
		// out = in·Wᵀ + b
		gemm(blas.NoTrans, ly.transW(), 1, general(in, rows, ly.in), ly.weights(ly.w), 1, general(out, rows, ly.out))
		if l < last {
			for i, v := range out {
				if v < 0 {
					out[i] = 0
				}
			}
		}
		in = out
	}
}

// score returns the summed cross-entropy and the number of correct
// predictions of the logits in ws. With delta set it also stores the
// gradient of the mean loss with respect to the logits, (softmax − onehot)/rows,
// for backward.
func (n *Net) score(ws *workspace, rows int, delta bool) (lossSum float64, correct int) {
	last := len(n.layers) - 1
	c := n.Classes()
	logits := ws.acts[last]
	var d []float64
	if delta {
		d = ws.deltas[last]
	}
	inv := 1 / float64(rows)
	for r := range rows {
		z := logits[r*c : (r+1)*c]
		y := int(ws.y[r])
		best := 0
		for j, v := range z {
			if v > z[best] {
				best = j
			}
		}
		if best == y {
			correct++
		}
		// Shift by the maximum so that exp cannot overflow.
		m := z[best]
		var sum float64
		if delta {
			dr := d[r*c : (r+1)*c]
			for j, v := range z {
				e := math.Exp(v - m)
				dr[j] = e
				sum += e
			}
			scale := inv / sum
			for j := range dr {
				dr[j] *= scale
			}
			dr[y] -= inv
		} else {
			for _, v := range z {
				sum += math.Exp(v - m)
			}
		}
		lossSum += m + math.Log(sum) - z[y]
	}
	return lossSum, correct
}

// objective computes, for the first rows examples in ws, the gradient of
// mean cross-entropy + mu/2·||w − anchor||² into ws.grad, and returns the
// summed cross-entropy (without the proximal term) and the number of correct
// predictions.
func (n *Net) objective(ws *workspace, rows int, anchor []float64, mu float64) (lossSum float64, correct int) {
	n.forward(ws, rows)
	lossSum, correct = n.score(ws, rows, true)
	for l := len(n.layers) - 1; l >= 0; l-- {
		ly, g := n.layers[l], ws.gl[l]
		delta := ws.deltas[l][:rows*ly.out]
		var in []float64
		if l == 0 {
			in = ws.x[:rows*ly.in]
		} else {
			in = ws.acts[l-1][:rows*ly.in]
		}
		// ∂W = deltaᵀ·in, or ∂Wᵀ = inᵀ·delta when stored in-major;
		// ∂b = column sums of delta.
		if ly.inMajor {
			gemm(blas.Trans, blas.NoTrans, 1, general(in, rows, ly.in), general(delta, rows, ly.out), 0, ly.weights(g.w))
		} else {
			gemm(blas.Trans, blas.NoTrans, 1, general(delta, rows, ly.out), general(in, rows, ly.in), 0, ly.weights(g.w))
		}
		clear(g.b)
		for r := range rows {
			for j, v := range delta[r*ly.out : (r+1)*ly.out] {
				g.b[j] += v
			}
		}
		if l == 0 {
			break // no gradient with respect to the data is needed
		}
		// Back through layer l's weights and layer l-1's ReLU: the
		// derivative is zero wherever the activation was clamped.
		prev := ws.deltas[l-1][:rows*ly.in]
		gemm(blas.NoTrans, ly.transWT(), 1, general(delta, rows, ly.out), ly.weights(ly.w), 0, general(prev, rows, ly.in))
		for i, a := range in {
			if a <= 0 {
				prev[i] = 0
			}
		}
	}
	if mu > 0 {
		for i, w := range n.params {
			ws.grad[i] += mu * (w - anchor[i])
		}
	}
	return lossSum, correct
}

// transW is the BLAS operation that turns the stored weights into Wᵀ.
func (ly layer) transW() blas.Transpose {
	if ly.inMajor {
		return blas.NoTrans
	}
	return blas.Trans
}

// transWT is the BLAS operation that turns the stored weights into W.
func (ly layer) transWT() blas.Transpose {
	if ly.inMajor {
		return blas.Trans
	}
	return blas.NoTrans
}
