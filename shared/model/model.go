// Package model implements the networks a federation trains: multinomial
// logistic regression and the FedAvg paper's "2NN" (McMahan et al., 2017), a
// 784-200-200-10 fully connected network with ReLU activations. Both are one
// type, Net, because logistic regression is simply the fully connected
// network without hidden layers; sharing the code means the aggregator,
// clients and tests see a single parameter layout and training loop.
//
// Training is minibatch SGD on softmax cross-entropy, optionally with the
// FedProx proximal term. It runs on gonum's pure-Go BLAS in float64 and is
// deterministic: the same initial weights, data, and options produce
// bit-identical weights on every run of the same binary, whatever GOMAXPROCS
// is. That matters because experiments must be reproducible and because a
// client retrying a round must send the same update it sent before. (gonum
// parallelizes a matrix product by output blocks, each summed in a fixed
// order by one goroutine, so the thread count never changes a result.
// Different CPU architectures may differ in the last bits, since Go may
// fuse multiply-adds on some and not on others.)
//
// Between calls every weight is exactly representable as a float32, the
// precision of the wire format: a Net and a copy rebuilt from its Tensors
// compute exactly the same outputs.
package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"gonum.org/v1/gonum/blas/blas64"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// Model kinds accepted by New and SpecsFor.
const (
	// KindLogReg is multinomial logistic regression: one fully connected
	// layer from the input to the classes.
	KindLogReg = "logreg"
	// Kind2NN is the FedAvg paper's 2NN: two hidden layers of 200 ReLU units.
	Kind2NN = "2nn"
)

// Limits on the shape of a network. Labels are bytes, so a set cannot name
// more than 256 classes; the dimension cap keeps a corrupt configuration
// from asking for an absurd allocation instead of failing cleanly.
const (
	maxClasses = 256
	maxInDim   = 1 << 24
)

// initStream is the PCG stream used for weight initialization, distinct from
// the shuffling streams so that a seed shared between New and Train does not
// correlate the initial weights with the example order.
const initStream = 0x494e4954 // "INIT"

// Kinds returns the model kinds Go clients train, in a fixed order. New
// also accepts KindCNN and synthetic kinds.
func Kinds() []string { return []string{KindLogReg, Kind2NN} }

// Known reports whether New accepts kind.
func Known(kind string) bool {
	if kind == KindCNN {
		return true
	}
	if n, err := syntheticParams(kind); n > 0 || err != nil {
		return err == nil
	}
	_, err := hiddenSizes(kind)
	return err == nil
}

// hiddenSizes returns the widths of the hidden layers of kind.
func hiddenSizes(kind string) ([]int, error) {
	switch kind {
	case KindLogReg:
		return nil, nil
	case Kind2NN:
		return []int{200, 200}, nil
	default:
		return nil, fmt.Errorf("unknown model kind %q (valid kinds: %s, %s, %s<MB>)", kind, strings.Join(Kinds(), ", "), KindCNN, KindSyntheticPrefix)
	}
}

// layerSizes returns the widths of every layer of kind, input first and
// classes last, after checking the dimensions.
func layerSizes(kind string, inDim, classes int) ([]int, error) {
	hidden, err := hiddenSizes(kind)
	if err != nil {
		return nil, err
	}
	if inDim < 1 || inDim > maxInDim {
		return nil, fmt.Errorf("input dimension %d out of range [1,%d]", inDim, maxInDim)
	}
	if classes < 2 || classes > maxClasses {
		return nil, fmt.Errorf("number of classes %d out of range [2,%d]", classes, maxClasses)
	}
	sizes := make([]int, 0, len(hidden)+2)
	sizes = append(sizes, inDim)
	sizes = append(sizes, hidden...)
	return append(sizes, classes), nil
}

// SpecsFor returns the parameter specs of a kind without building a network,
// for a receiver that only checks tensors against the expected layout, such
// as the aggregator validating an update.
func SpecsFor(kind string, inDim, classes int) ([]tensor.Spec, error) {
	if kind == KindCNN {
		sp, err := cnnSpecs(inDim, classes)
		if err != nil {
			return nil, fmt.Errorf("model: specs: %w", err)
		}
		return sp, nil
	}
	if n, err := syntheticParams(kind); n > 0 || err != nil {
		if err != nil {
			return nil, fmt.Errorf("model: specs: %w", err)
		}
		return syntheticSpecs(n), nil
	}
	sizes, err := layerSizes(kind, inDim, classes)
	if err != nil {
		return nil, fmt.Errorf("model: specs: %w", err)
	}
	return specs(sizes), nil
}

// specs names the parameters "fc<i>.weight" with shape [out, in] and
// "fc<i>.bias" with shape [out], layer by layer from the input. The names and
// layout follow PyTorch's nn.Linear so that weights can be compared with a
// reference implementation.
func specs(sizes []int) []tensor.Spec {
	out := make([]tensor.Spec, 0, 2*(len(sizes)-1))
	for l := range len(sizes) - 1 {
		in, o := int64(sizes[l]), int64(sizes[l+1])
		out = append(out,
			tensor.Spec{Name: fmt.Sprintf("fc%d.weight", l), Shape: []int64{o, in}},
			tensor.Spec{Name: fmt.Sprintf("fc%d.bias", l), Shape: []int64{o}},
		)
	}
	return out
}

// Net is a fully connected network with ReLU hidden layers and a softmax
// output. Its methods are not safe for concurrent use, except that any
// number of Evaluate calls may run concurrently with each other.
type Net struct {
	kind  string
	sizes []int // layer widths, input first, classes last
	// params holds every parameter, layer by layer in Specs order (the
	// weights possibly transposed, see layer), so that SGD updates, copies and
	// finiteness checks are single loops over one slice.
	params []float64
	layers []layer // views into params
	// synthetic: params are random values of no network (synthetic.go);
	// cnn: params are the CNN's tensors in Specs order (cnn.go). For both,
	// layers is nil and sizes holds only the data set's dimensions.
	synthetic bool
	cnn       bool
}

// layer is one fully connected layer: out = in·Wᵀ + b, with W of shape
// [out, in] as on the wire.
type layer struct {
	in, out int
	// inMajor stores W transposed, row-major [in][out]; otherwise it is
	// row-major [out][in]. Wide layers are stored in-major: the forward pass
	// and the weight gradient then become axpys along the outputs, which
	// gonum skips for zero inputs (most MNIST pixels, about half of the ReLU
	// activations). For narrow layers such as logistic regression's ten
	// classes those axpys would be too short to pay for their calls, and
	// dot products along the long input dimension are faster.
	inMajor bool
	w, b    []float64
}

// wideLayer is the output width from which a layer is stored in-major:
// gonum's matrix block size, so that every axpy spans at least a block.
const wideLayer = 64

// at returns the index in w of the weight from input i to output o.
func (ly layer) at(o, i int) int {
	if ly.inMajor {
		return i*ly.out + o
	}
	return o*ly.in + i
}

// weights returns w, or a gradient laid out like it, as a BLAS matrix in
// its storage layout.
func (ly layer) weights(w []float64) blas64.General {
	if ly.inMajor {
		return general(w, ly.in, ly.out)
	}
	return general(w, ly.out, ly.in)
}

// layerViews slices flat into the weights and biases of the layers given by
// sizes; flat must hold exactly numParams(sizes) values.
func layerViews(flat []float64, sizes []int) []layer {
	layers := make([]layer, len(sizes)-1)
	off := 0
	for l := range layers {
		in, out := sizes[l], sizes[l+1]
		layers[l] = layer{
			in:      in,
			out:     out,
			inMajor: out >= wideLayer,
			w:       flat[off : off+in*out : off+in*out],
			b:       flat[off+in*out : off+in*out+out : off+in*out+out],
		}
		off += in*out + out
	}
	return layers
}

func numParams(sizes []int) int {
	n := 0
	for l := range len(sizes) - 1 {
		n += sizes[l]*sizes[l+1] + sizes[l+1]
	}
	return n
}

// New returns a network of the given kind with inDim inputs and classes
// outputs. Logistic regression starts at zero and ignores seed: its loss is
// convex, so a random start buys nothing. The 2NN draws its weights from seed:
// He-normal for the ReLU layers, Glorot-uniform for the output layer, biases
// zero.
func New(kind string, inDim, classes int, seed uint64) (*Net, error) {
	if kind == KindCNN {
		n, err := newCNN(inDim, classes, seed)
		if err != nil {
			return nil, fmt.Errorf("model: new: %w", err)
		}
		return n, nil
	}
	if n, err := syntheticParams(kind); n > 0 || err != nil {
		if err != nil {
			return nil, fmt.Errorf("model: new: %w", err)
		}
		return newSynthetic(kind, n, inDim, classes, seed), nil
	}
	sizes, err := layerSizes(kind, inDim, classes)
	if err != nil {
		return nil, fmt.Errorf("model: new: %w", err)
	}
	return newNet(kind, sizes, kind != KindLogReg, seed), nil
}

// newNet builds a network with arbitrary layer sizes; tests use it for
// networks small enough to check gradients numerically.
func newNet(kind string, sizes []int, randomInit bool, seed uint64) *Net {
	n := &Net{
		kind:   kind,
		sizes:  append([]int(nil), sizes...),
		params: make([]float64, numParams(sizes)),
	}
	n.layers = layerViews(n.params, n.sizes)
	if randomInit {
		rng := rand.New(rand.NewPCG(seed, initStream))
		last := len(n.layers) - 1
		for l, ly := range n.layers {
			draw := func() float64 { // Glorot-uniform for the output layer
				a := math.Sqrt(6 / float64(ly.in+ly.out))
				return (2*rng.Float64() - 1) * a
			}
			if l < last { // He-normal for layers followed by ReLU
				std := math.Sqrt(2 / float64(ly.in))
				draw = func() float64 { return rng.NormFloat64() * std }
			}
			// Draw in wire order, [out][in], so the sequence of values
			// matches what Params reports.
			for o := range ly.out {
				for i := range ly.in {
					ly.w[ly.at(o, i)] = roundToFloat32(draw())
				}
			}
		}
	}
	return n
}

// roundToFloat32 keeps a weight representable on the wire, so that what a
// Net computes is exactly what a copy decoded from its Tensors computes.
func roundToFloat32(x float64) float64 { return float64(float32(x)) }

// Kind returns the kind the network was built as.
func (n *Net) Kind() string { return n.kind }

// InDim returns the number of input features.
func (n *Net) InDim() int { return n.sizes[0] }

// Classes returns the number of output classes.
func (n *Net) Classes() int { return n.sizes[len(n.sizes)-1] }

// NumParams returns the total number of scalar parameters.
func (n *Net) NumParams() int { return len(n.params) }

// Specs returns the names and shapes of the parameters, in the order of
// Params and Tensors.
func (n *Net) Specs() []tensor.Spec {
	if n.synthetic {
		return syntheticSpecs(len(n.params))
	}
	if n.cnn {
		sp, _ := cnnSpecs(n.InDim(), n.Classes()) // checked when n was built
		return sp
	}
	return specs(n.sizes)
}

// Clone returns a deep copy of n.
func (n *Net) Clone() *Net {
	c := &Net{
		kind:      n.kind,
		sizes:     append([]int(nil), n.sizes...),
		params:    append([]float64(nil), n.params...),
		synthetic: n.synthetic,
		cnn:       n.cnn,
	}
	if !c.synthetic && !c.cnn {
		c.layers = layerViews(c.params, c.sizes)
	}
	return c
}

// Params returns a copy of the parameters as float32, one slice per spec.
func (n *Net) Params() [][]float32 {
	if n.synthetic || n.cnn {
		return n.flatValues()
	}
	out := make([][]float32, 0, 2*len(n.layers))
	for _, ly := range n.layers {
		w := make([]float32, ly.out*ly.in)
		for o := range ly.out {
			for i := range ly.in {
				w[o*ly.in+i] = float32(ly.w[ly.at(o, i)])
			}
		}
		b := make([]float32, ly.out)
		for o, v := range ly.b {
			b[o] = float32(v)
		}
		out = append(out, w, b)
	}
	return out
}

// SetParams replaces the parameters with p, which must match Specs in count
// and sizes and hold only finite values. On error n is unchanged.
func (n *Net) SetParams(p [][]float32) error {
	sp := n.Specs()
	if len(p) != len(sp) {
		return fmt.Errorf("model: set params: got %d tensors, want %d", len(p), len(sp))
	}
	for i, s := range sp {
		if len(p[i]) != s.Size() {
			return fmt.Errorf("model: set params: %s has %d values, want %d (shape %v)", s.Name, len(p[i]), s.Size(), s.Shape)
		}
		for j, v := range p[i] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("model: set params: %s has non-finite value %v at %d", s.Name, v, j)
			}
		}
	}
	if n.synthetic || n.cnn {
		n.setFlatValues(p)
		return nil
	}
	for l, ly := range n.layers {
		w, b := p[2*l], p[2*l+1]
		for o := range ly.out {
			for i, v := range w[o*ly.in : (o+1)*ly.in] {
				ly.w[ly.at(o, i)] = float64(v)
			}
		}
		for o, v := range b {
			ly.b[o] = float64(v)
		}
	}
	return nil
}

// Tensors returns the parameters in wire form, in Specs order.
func (n *Net) Tensors() []*fdxv1.Tensor { return tensor.Encode(n.Params(), n.Specs()) }

// SetTensors replaces the parameters with ts after checking their names,
// shapes, and finiteness against Specs. On error n is unchanged.
func (n *Net) SetTensors(ts []*fdxv1.Tensor) error {
	p, err := tensor.Decode(ts, n.Specs())
	if err != nil {
		return fmt.Errorf("model: set tensors: %w", err)
	}
	return n.SetParams(p)
}
