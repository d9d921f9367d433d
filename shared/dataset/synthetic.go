package dataset

import "fmt"

// Parameters of the synthetic generator. They are part of the data's
// definition: changing any of them changes every synthetic data set, and so
// what the two sides of a running federation see.
const (
	// synthInkOneIn makes one prototype pixel in synthInkOneIn "ink" (a value
	// in 128..255) and the rest background (0), roughly MNIST's density.
	synthInkOneIn = 4
	// synthMinOwnWeight is the least weight, out of 256, an example gives its
	// own class's prototype; the rest goes to the prototype of a random other
	// class. Below 128 an example looks more like the other class than its
	// own, so about (128-w)/(256-w) = 3% of the examples are ambiguous or
	// misleading. That keeps a linear model's accuracy well above 90% but
	// short of 100%, so accuracy curves still show progress across rounds.
	synthMinOwnWeight = 124
	// synthNoiseShift scales the per-pixel noise, a sum of four uniform bytes
	// centred on 0 (standard deviation 148), down by 2^synthNoiseShift.
	synthNoiseShift = 2
)

// Synthetic returns n examples of dim byte-valued features in classes
// classes, a pure function of its arguments: the same call returns the same
// bytes on every platform and Go release, because it uses only integer
// arithmetic on a PCG stream.
//
// Each class has a random prototype image; an example of class c blends c's
// prototype (weight at least 124/256) with that of another random class and
// adds per-pixel noise. Logistic regression learns it to about 96% test accuracy.
//
// Examples are generated one after another after the prototypes, so
// Synthetic(m, dim, classes, seed) is a prefix of Synthetic(n, dim, classes,
// seed) for m <= n: a train and a test split of the same distribution are
// the two ends of one call.
//
// Synthetic panics if n < 0, dim < 1, or classes is not in 1..256, as make
// does for a negative length: these are programming errors, not data errors.
func Synthetic(n int, dim, classes int, seed uint64) *Set {
	if n < 0 || dim < 1 || classes < 1 || classes > maxClasses {
		panic(fmt.Sprintf("dataset.Synthetic: invalid n=%d, dim=%d, classes=%d", n, dim, classes))
	}
	r := newRNG(seed, streamSynthetic)
	protos := make([]int32, classes*dim)
	for i := range protos {
		if x := r.uint64(); x%synthInkOneIn == 0 {
			protos[i] = 128 + int32(x>>32&127)
		}
	}
	set := &Set{
		Pixels:  make([]uint8, n*dim),
		Labels:  make([]uint8, n),
		Dim:     dim,
		Classes: classes,
	}
	for i := range n {
		c := r.intN(classes)
		other := c
		if classes > 1 {
			other = (c + 1 + r.intN(classes-1)) % classes
		}
		w := int32(synthMinOwnWeight + r.intN(256-synthMinOwnWeight+1))
		own, mix := protos[c*dim:(c+1)*dim], protos[other*dim:(other+1)*dim]
		px := set.Pixels[i*dim : (i+1)*dim]
		for j := range px {
			x := r.uint64()
			noise := int32(x&0xff) + int32(x>>8&0xff) + int32(x>>16&0xff) + int32(x>>24&0xff) - 510
			v := (w*own[j]+(256-w)*mix[j])>>8 + noise>>synthNoiseShift
			px[j] = uint8(min(max(v, 0), 255))
		}
		set.Labels[i] = uint8(c)
	}
	return set
}
