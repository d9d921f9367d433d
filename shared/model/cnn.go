package model

// The FedAvg paper's MNIST CNN (McMahan et al., 2017, section 3): two 5×5
// convolutions of 32 and 64 channels, each followed by ReLU and 2×2 max
// pooling, a fully connected layer of 512 ReLU units and a softmax output;
// 1,663,370 parameters for ten classes. Go clients do not train it: it is
// the model Python clients (clients/python, with JAX or PyTorch) train
// under this aggregator, which needs from Go only the parameter layout, a
// seeded initial model and the forward pass for centralized evaluation.
//
// The layout is PyTorch's: convolution weights [out, in, 5, 5] applied as
// a cross-correlation with two pixels of zero padding ("same"), dense
// weights [out, in], and the second pooling's output flattened channel
// first ([64, 7, 7]), as torch.flatten of an NCHW tensor does.

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"

	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// KindCNN is the FedAvg paper's MNIST CNN, trained by Python clients.
const KindCNN = "cnn"

// ErrNotTrainable is returned by Train for a kind that only external
// clients train.
var ErrNotTrainable = errors.New("this model kind is trained by Python clients (clients/python), not by Go clients")

// The CNN's geometry: 28×28 single-channel images.
const (
	cnnSide   = 28
	cnnKernel = 5
	cnnPad    = cnnKernel / 2
	cnnC1     = 32
	cnnC2     = 64
	cnnHidden = 512
	cnnFlat   = cnnC2 * (cnnSide / 4) * (cnnSide / 4) // 3136
)

// cnnEvalBatch bounds the images Evaluate holds at once: the second
// convolution's patch matrix takes 196 × 800 float64 per image (1.25 MB),
// so 32 images take 40 MB.
const cnnEvalBatch = 32

// cnnSpecs returns the CNN's parameter specs for inDim inputs (which must be
// 28×28 images) and classes outputs.
func cnnSpecs(inDim, classes int) ([]tensor.Spec, error) {
	if inDim != cnnSide*cnnSide {
		return nil, fmt.Errorf("model %s takes %d×%d images (input dimension %d), not dimension %d", KindCNN, cnnSide, cnnSide, cnnSide*cnnSide, inDim)
	}
	if classes < 2 || classes > maxClasses {
		return nil, fmt.Errorf("number of classes %d out of range [2,%d]", classes, maxClasses)
	}
	k := int64(cnnKernel)
	return []tensor.Spec{
		{Name: "conv1.weight", Shape: []int64{cnnC1, 1, k, k}},
		{Name: "conv1.bias", Shape: []int64{cnnC1}},
		{Name: "conv2.weight", Shape: []int64{cnnC2, cnnC1, k, k}},
		{Name: "conv2.bias", Shape: []int64{cnnC2}},
		{Name: "fc1.weight", Shape: []int64{cnnHidden, cnnFlat}},
		{Name: "fc1.bias", Shape: []int64{cnnHidden}},
		{Name: "fc2.weight", Shape: []int64{int64(classes), cnnHidden}},
		{Name: "fc2.bias", Shape: []int64{int64(classes)}},
	}, nil
}

// newCNN draws the CNN's initial weights from seed as PyTorch's default
// initialization does: every weight and bias of a layer uniform in
// ±1/√fan_in, so that a Python client starting from its own framework's
// defaults and one starting from this model behave alike.
func newCNN(inDim, classes int, seed uint64) (*Net, error) {
	sp, err := cnnSpecs(inDim, classes)
	if err != nil {
		return nil, err
	}
	total := 0
	for _, s := range sp {
		total += s.Size()
	}
	n := &Net{kind: KindCNN, sizes: []int{inDim, classes}, params: make([]float64, total), cnn: true}
	rng := rand.New(rand.NewPCG(seed, initStream))
	off := 0
	for i := 0; i < len(sp); i += 2 {
		w, b := sp[i], sp[i+1]
		fanIn := w.Size() / int(w.Shape[0])
		bound := 1 / math.Sqrt(float64(fanIn))
		for j := range w.Size() + b.Size() {
			n.params[off+j] = roundToFloat32((2*rng.Float64() - 1) * bound)
		}
		off += w.Size() + b.Size()
	}
	return n, nil
}

// cnnParams are the CNN's tensors as views into a Net's flat parameters.
type cnnParams struct {
	w1, b1, w2, b2, w3, b3, w4, b4 []float64
}

func (n *Net) cnnViews() cnnParams {
	sp := n.Specs()
	v := make([][]float64, len(sp))
	off := 0
	for i, s := range sp {
		v[i] = n.params[off : off+s.Size()]
		off += s.Size()
	}
	return cnnParams{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
}

// cnnWorkspace holds one batch's buffers, allocated once per Evaluate.
type cnnWorkspace struct {
	x      []float64 // images, rows × 784
	y      []uint8
	cols1  []float64 // rows·784 × 25
	out1   []float64 // rows·784 × 32, then pooled into pool1
	pool1  []float64 // rows × 14 × 14 × 32
	cols2  []float64 // rows·196 × 800
	out2   []float64 // rows·196 × 64
	pool2  []float64 // rows × 7 × 7 × 64
	flat   []float64 // rows × 3136, channel first
	hidden []float64 // rows × 512
	logits []float64 // rows × classes
}

func newCNNWorkspace(rows, classes int) *cnnWorkspace {
	s1, s2 := cnnSide*cnnSide, (cnnSide/2)*(cnnSide/2)
	kk := cnnKernel * cnnKernel
	return &cnnWorkspace{
		x:      make([]float64, rows*s1),
		y:      make([]uint8, rows),
		cols1:  make([]float64, rows*s1*kk),
		out1:   make([]float64, rows*s1*cnnC1),
		pool1:  make([]float64, rows*s2*cnnC1),
		cols2:  make([]float64, rows*s2*kk*cnnC1),
		out2:   make([]float64, rows*s2*cnnC2),
		pool2:  make([]float64, rows*cnnFlat),
		flat:   make([]float64, rows*cnnFlat),
		hidden: make([]float64, rows*cnnHidden),
		logits: make([]float64, rows*classes),
	}
}

// evaluateCNN is Evaluate for the CNN.
func (n *Net) evaluateCNN(set *dataset.Set) (Metrics, error) {
	if err := n.checkSet(set); err != nil {
		return Metrics{}, fmt.Errorf("model: evaluate: %w", err)
	}
	total := set.Len()
	batch := min(cnnEvalBatch, total)
	ws := newCNNWorkspace(batch, n.Classes())
	var feature [256]float64
	for p := range feature {
		feature[p] = float64(p) / 255
	}
	p := n.cnnViews()
	var lossSum float64
	correct := 0
	d := set.Dim
	for lo := 0; lo < total; lo += batch {
		hi := min(lo+batch, total)
		rows := hi - lo
		for j, px := range set.Pixels[lo*d : hi*d] {
			ws.x[j] = feature[px]
		}
		copy(ws.y, set.Labels[lo:hi])
		n.cnnForward(ws, p, rows)
		l, c := scoreLogits(ws.logits[:rows*n.Classes()], ws.y[:rows], n.Classes())
		lossSum += l
		correct += c
	}
	return meanMetrics(lossSum, correct, total), nil
}

// cnnForward computes the logits of the first rows images in ws. Each
// convolution is one matrix product of the batch's patches (im2col) with
// the weights, so that gonum's blocked Dgemm does the work.
func (n *Net) cnnForward(ws *cnnWorkspace, p cnnParams, rows int) {
	const (
		s1 = cnnSide
		s2 = cnnSide / 2
		s3 = cnnSide / 4
		kk = cnnKernel * cnnKernel
	)
	// conv1: patches [rows·28·28][25] · w1ᵀ [25][32].
	im2col(ws.cols1[:rows*s1*s1*kk], ws.x[:rows*s1*s1], rows, s1, 1)
	gemm(blas.NoTrans, blas.Trans, 1, general(ws.cols1, rows*s1*s1, kk), general(p.w1, cnnC1, kk), 0, general(ws.out1, rows*s1*s1, cnnC1))
	biasReLU(ws.out1[:rows*s1*s1*cnnC1], p.b1)
	maxPool(ws.pool1[:rows*s2*s2*cnnC1], ws.out1[:rows*s1*s1*cnnC1], rows, s1, cnnC1)
	// conv2: patches [rows·14·14][32·25] · w2ᵀ [800][64].
	im2col(ws.cols2[:rows*s2*s2*kk*cnnC1], ws.pool1[:rows*s2*s2*cnnC1], rows, s2, cnnC1)
	gemm(blas.NoTrans, blas.Trans, 1, general(ws.cols2, rows*s2*s2, kk*cnnC1), general(p.w2, cnnC2, kk*cnnC1), 0, general(ws.out2, rows*s2*s2, cnnC2))
	biasReLU(ws.out2[:rows*s2*s2*cnnC2], p.b2)
	// pool2, then flattened channel first as PyTorch flattens NCHW.
	maxPool(ws.pool2[:rows*s3*s3*cnnC2], ws.out2[:rows*s2*s2*cnnC2], rows, s2, cnnC2)
	for r := range rows {
		img := ws.pool2[r*s3*s3*cnnC2 : (r+1)*s3*s3*cnnC2]
		dst := ws.flat[r*cnnFlat : (r+1)*cnnFlat]
		for px := range s3 * s3 {
			for c := range cnnC2 {
				dst[c*s3*s3+px] = img[px*cnnC2+c]
			}
		}
	}
	classes := n.Classes()
	gemm(blas.NoTrans, blas.Trans, 1, general(ws.flat, rows, cnnFlat), general(p.w3, cnnHidden, cnnFlat), 0, general(ws.hidden, rows, cnnHidden))
	biasReLU(ws.hidden[:rows*cnnHidden], p.b3)
	gemm(blas.NoTrans, blas.Trans, 1, general(ws.hidden, rows, cnnHidden), general(p.w4, classes, cnnHidden), 0, general(ws.logits, rows, classes))
	for r := range rows {
		z := ws.logits[r*classes : (r+1)*classes]
		for j := range z {
			z[j] += p.b4[j]
		}
	}
}

// im2col writes the 5×5 patches of rows images of side×side pixels and
// ch channels (channel last) around every pixel, zero outside the image,
// one row per output pixel, its columns in the weights' [in][5][5] order.
func im2col(dst, src []float64, rows, side, ch int) {
	const k = cnnKernel
	i := 0
	for r := range rows {
		img := src[r*side*side*ch : (r+1)*side*side*ch]
		for h := range side {
			for w := range side {
				for c := range ch {
					for dh := range k {
						y := h + dh - cnnPad
						for dw := range k {
							x := w + dw - cnnPad
							v := 0.0
							if y >= 0 && y < side && x >= 0 && x < side {
								v = img[(y*side+x)*ch+c]
							}
							dst[i] = v
							i++
						}
					}
				}
			}
		}
	}
}

// biasReLU adds b to each row of x (rows of len(b) values) and applies ReLU.
func biasReLU(x, b []float64) {
	for o := 0; o < len(x); o += len(b) {
		row := x[o : o+len(b)]
		for j, v := range row {
			row[j] = max(v+b[j], 0)
		}
	}
}

// maxPool halves rows images of side×side pixels and ch channels (channel
// last) by 2×2 max pooling.
func maxPool(dst, src []float64, rows, side, ch int) {
	half := side / 2
	for r := range rows {
		img := src[r*side*side*ch : (r+1)*side*side*ch]
		out := dst[r*half*half*ch : (r+1)*half*half*ch]
		for h := range half {
			for w := range half {
				for c := range ch {
					m := img[((2*h)*side+2*w)*ch+c]
					m = max(m, img[((2*h)*side+2*w+1)*ch+c])
					m = max(m, img[((2*h+1)*side+2*w)*ch+c])
					m = max(m, img[((2*h+1)*side+2*w+1)*ch+c])
					out[(h*half+w)*ch+c] = m
				}
			}
		}
	}
}

// scoreLogits returns the summed cross-entropy and the number of correct
// predictions (the first maximal logit, as NumPy's argmax picks) of rows
// of classes logits.
func scoreLogits(logits []float64, y []uint8, classes int) (lossSum float64, correct int) {
	for r := range y {
		z := logits[r*classes : (r+1)*classes]
		best := 0
		for j, v := range z {
			if v > z[best] {
				best = j
			}
		}
		if best == int(y[r]) {
			correct++
		}
		m := z[best]
		var sum float64
		for _, v := range z {
			sum += math.Exp(v - m)
		}
		lossSum += m + math.Log(sum) - z[y[r]]
	}
	return lossSum, correct
}
