package strategy

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Limits of the exact accumulator. Together they guarantee that no sum an
// Accumulator can be asked to hold exceeds its 256-bit range, so a rejection
// depends only on the offending update itself, never on what came before it
// (which would make the outcome depend on arrival order).
const (
	// MaxWeight is the largest weight (example count) Add accepts. It keeps
	// weight × float32 significand below 2^55, one machine word, and the total
	// weight of MaxTerms updates below 2^54. The validator enforces the same
	// limit on every update, from package rules.
	MaxWeight = rules.MaxWeight
	// MaxTerms is the number of updates one Accumulator accepts.
	MaxTerms = 1 << 23
	// MaxTermLog2 bounds every weighted value: |weight × x| < 2^MaxTermLog2
	// (about 1.2e24), far above any model weight times example count.
	MaxTermLog2 = rules.MaxTermLog2
)

const (
	// accWords is the number of 64-bit words per coordinate: a 256-bit two's
	// complement integer.
	accWords = 4
	// quantumLog2 makes the accumulator count in units of 2^-149, the
	// smallest float32 subnormal. Every float32 is an integer multiple of that
	// unit, hence so is weight × x for an integer weight: no term is ever
	// rounded, and the only rounding is the final one in Mean.
	quantumLog2 = 149
	// termLimitUnits is MaxTermLog2 expressed in units: |term| < 2^229.
	// MaxTerms such terms sum to less than 2^252, inside the signed 256-bit
	// range, with room to spare.
	termLimitUnits = MaxTermLog2 + quantumLog2
)

// Accumulator computes the weighted mean of float32 parameter vectors exactly
// and in O(model) memory, with a result that is bit-identical whatever order
// the vectors are added in.
//
// Why: clients arrive in random order (and over two channels that must yield
// the same model), and floating-point addition is not associative, so a
// running float sum would make the global model depend on arrival order. Here
// each coordinate keeps Σ weight_i·x_i as a 256-bit fixed-point integer in
// units of 2^-149. Integer addition is associative and commutative, so the
// sum does not depend on the order.
//
// Precision: none is lost before the end. A coarser unit (say 2^-40, which
// would fit 128 bits) would round every term, to an absolute 2^-41, and
// values below about 2^-16 would come back perturbed even when every client
// sent the same one. With the unit 2^-149, the smallest float32 subnormal,
// every float32 is an integer number of units and so is weight × x: no term
// is rounded, and the sum is the exact weighted sum. Mean divides it by
// Σ weight_i and rounds once, to nearest-even, so each coordinate is the
// correctly rounded weighted mean (subnormals included) and identical inputs
// come back unchanged; a mean of exactly zero is +0. The price is 32 bytes
// per coordinate (6.4 MB for the 199,210-parameter 2NN) and the range
// limits above: |weight × x| < 2^80 per term, at most MaxTerms terms.
//
// An Accumulator is not safe for concurrent use.
type Accumulator struct {
	sizes  []int
	total  int      // number of coordinates, Σ sizes
	acc    []uint64 // accWords words per coordinate, least significant first
	count  int
	weight int64
}

// NewAccumulator returns an empty accumulator for tensors of the given
// sizes (number of elements each).
func NewAccumulator(sizes []int) (*Accumulator, error) {
	total := 0
	for i, n := range sizes {
		if n < 0 {
			return nil, fmt.Errorf("accumulator: tensor %d has negative size %d", i, n)
		}
		if total > math.MaxInt/accWords-n {
			return nil, fmt.Errorf("accumulator: model of more than %d coordinates", math.MaxInt/accWords)
		}
		total += n
	}
	return &Accumulator{
		sizes: append([]int(nil), sizes...),
		total: total,
		acc:   make([]uint64, accWords*total),
	}, nil
}

// Count returns the number of vectors added.
func (a *Accumulator) Count() int { return a.count }

// Weight returns the sum of the weights added.
func (a *Accumulator) Weight() int64 { return a.weight }

// Reset empties the accumulator, keeping its shapes and memory.
func (a *Accumulator) Reset() {
	clear(a.acc)
	a.count, a.weight = 0, 0
}

// Add adds weight × params. It is atomic: on error nothing was added. It
// rejects a weight outside [1, MaxWeight], params whose shapes differ from
// the accumulator's, non-finite values (ErrNonFinite), a value with
// |weight × x| ≥ 2^MaxTermLog2 (ErrOverflow), and more than MaxTerms adds.
// Params are read, not retained.
func (a *Accumulator) Add(weight int64, params [][]float32) error {
	if weight < 1 || weight > MaxWeight {
		return fmt.Errorf("%w: weight %d outside [1, %d]", ErrNumExamples, weight, MaxWeight)
	}
	if a.count >= MaxTerms {
		return fmt.Errorf("%w: accumulator already holds its maximum of %d vectors", ErrOverflow, MaxTerms)
	}
	if err := checkShapes(a.sizes, params); err != nil {
		return err
	}
	maxAbs, err := maxAbsBits(params)
	if err != nil {
		return err
	}
	n := uint64(weight)
	if !termFits(n, maxAbs) {
		return fmt.Errorf("%w: |%d × %g| is not below 2^%d", ErrOverflow, weight, math.Float32frombits(maxAbs), MaxTermLog2)
	}
	off := 0
	for _, xs := range params {
		accumulate(a.acc[accWords*off:accWords*(off+len(xs))], n, xs)
		off += len(xs)
	}
	a.count++
	a.weight += weight
	return nil
}

// Mean returns the weighted mean, each coordinate correctly rounded to
// float32. It fails with ErrNoUpdates when nothing was added.
func (a *Accumulator) Mean() ([][]float32, error) {
	flat, err := a.meanFlat()
	if err != nil {
		return nil, err
	}
	return splitTensors(flat, a.sizes), nil
}

// Mean64 returns the weighted mean correctly rounded to float64, for callers
// that keep computing with it (the server optimizers subtract the global
// model from it) and should not lose precision to an intermediate float32.
func (a *Accumulator) Mean64() ([][]float64, error) {
	flat, err := a.mean64Flat()
	if err != nil {
		return nil, err
	}
	out := make([][]float64, len(a.sizes))
	off := 0
	for i, n := range a.sizes {
		out[i] = flat[off : off+n : off+n]
		off += n
	}
	return out, nil
}

func (a *Accumulator) meanFlat() ([]float32, error) {
	if a.count == 0 {
		return nil, fmt.Errorf("accumulator: %w", ErrNoUpdates)
	}
	out := make([]float32, a.total)
	w := uint64(a.weight)
	for i := range out {
		out[i] = float32(quotient(a.acc[accWords*i:accWords*i+accWords], w, true))
	}
	return out, nil
}

func (a *Accumulator) mean64Flat() ([]float64, error) {
	if a.count == 0 {
		return nil, fmt.Errorf("accumulator: %w", ErrNoUpdates)
	}
	out := make([]float64, a.total)
	w := uint64(a.weight)
	for i := range out {
		out[i] = quotient(a.acc[accWords*i:accWords*i+accWords], w, false)
	}
	return out, nil
}

// decompose returns the integer m and shift s with |x| = m × 2^(s-149) for
// the float32 with bits b: the value in accumulator units is m << s.
func decompose(b uint32) (m uint64, s uint) {
	e := (b >> 23) & 0xff
	m = uint64(b & (1<<23 - 1))
	if e == 0 { // zero or subnormal: m × 2^-149
		return m, 0
	}
	return m | 1<<23, uint(e - 1)
}

// termFits reports whether n × x, for the finite float32 |x| with bits
// absBits, is below 2^MaxTermLog2 in magnitude.
func termFits(n uint64, absBits uint32) bool {
	m, s := decompose(absBits)
	return uint(bits.Len64(n*m))+s <= termLimitUnits
}

// accumulate adds n × xs[i] to the 256-bit integer at acc[4i:4i+4] for every
// i. The caller has checked that every term is within termLimitUnits.
func accumulate(acc []uint64, n uint64, xs []float32) {
	acc = acc[:accWords*len(xs)]
	for i, x := range xs {
		b := math.Float32bits(x)
		m, s := decompose(b)
		// p < 2^55 as n ≤ MaxWeight < 2^31 and m < 2^24. The term p << s
		// spans words s/64 and s/64+1; hi is p >> (64 − s%64) written with
		// shifts below 64, which compile without a range check, and is 0
		// for s%64 == 0.
		p := n * m
		r := s & 63
		lo, hi := p<<r, (p>>1)>>((63-r)&63)
		var t0, t1, t2, t3 uint64
		switch s >> 6 {
		case 0:
			t0, t1 = lo, hi
		case 1:
			t1, t2 = lo, hi
		case 2:
			t2, t3 = lo, hi
		default: // hi is zero: the term is below 2^229
			t3 = lo
		}
		// Negative terms are added as their two's complement, ^t + 1: the
		// mask flips the words and the sign bit is the carry in.
		neg := uint64(b >> 31)
		mask := -neg
		a := (*[accWords]uint64)(acc[accWords*i:])
		var c uint64
		a[0], c = bits.Add64(a[0], t0^mask, neg)
		a[1], c = bits.Add64(a[1], t1^mask, c)
		a[2], c = bits.Add64(a[2], t2^mask, c)
		a[3] += (t3 ^ mask) + c
	}
}

// quotient returns s / (n × 2^149), where s is a 256-bit two's complement
// integer (least significant word first), rounded once to nearest-even: to a
// float32 (subnormals included) if single, else to a float64. n is in
// [1, 2^63).
func quotient(s []uint64, n uint64, single bool) float64 {
	d := [accWords]uint64{s[0], s[1], s[2], s[3]}
	neg := d[accWords-1]>>63 != 0
	if neg {
		c := uint64(1)
		for i := range d {
			d[i], c = bits.Add64(^d[i], 0, c)
		}
	}
	top := accWords - 1
	for top >= 0 && d[top] == 0 {
		top--
	}
	if top < 0 {
		return 0
	}
	// Schoolbook long division by the one-word n, most significant word
	// first, continuing into fraction words (position < 0) until the first
	// nonzero quotient word and the one after it are known: 64 to 128
	// significant bits, more than the 54 that rounding to float64 needs.
	// Since d ≥ 1 and n < 2^63, the second fraction word is always reached
	// with a nonzero quotient, so the loop ends.
	var q [2]uint64
	nq, first, pos := 0, 0, top
	var r uint64
	for ; nq < len(q); pos-- {
		var w uint64
		if pos >= 0 {
			w = d[pos]
		}
		var qw uint64
		qw, r = bits.Div64(r, w, n)
		if nq == 0 {
			if qw == 0 {
				continue
			}
			first = pos
		}
		q[nq] = qw
		nq++
	}
	// Everything not yet divided only decides whether the value lies
	// strictly above the bits kept: the sticky bit.
	sticky := r != 0
	for j := pos; j >= 0; j-- {
		sticky = sticky || d[j] != 0
	}
	lz := uint(bits.LeadingZeros64(q[0]))
	win := q[0]<<lz | q[1]>>(64-lz) // a shift by 64 gives 0
	sticky = sticky || q[1]<<lz != 0
	// The top bit of win weighs 2^e.
	e := 64*first + 63 - int(lz) - quantumLog2
	prec := 53
	if single {
		prec = 24
		if e < -126 { // float32 subnormal: the last bit weighs 2^-149
			prec = e + 150
		}
	}
	var f float64
	switch {
	case prec < 0: // below 2^-150: half the smallest subnormal
	case prec == 0: // in [2^-150, 2^-149): a tie at exactly 2^-150 goes to even, 0
		if win > 1<<63 || sticky {
			f = math.Ldexp(1, -149)
		}
	default:
		drop := uint(64 - prec)
		mant := win >> drop
		rest := win & (1<<drop - 1)
		half := uint64(1) << (drop - 1)
		if rest > half || (rest == half && (sticky || mant&1 == 1)) {
			mant++ // may carry into the next binade: still exact
		}
		f = math.Ldexp(float64(mant), e-prec+1)
	}
	if neg {
		f = -f
	}
	return f
}

// maxAbsBits returns the largest |x| over params as float32 bits (for
// finite, non-negative floats the bit patterns order like the values), or
// ErrNonFinite naming the first NaN or infinity.
func maxAbsBits(params [][]float32) (uint32, error) {
	var mx uint32
	for _, xs := range params {
		for _, x := range xs {
			mx = max(mx, math.Float32bits(x)&0x7fffffff)
		}
	}
	if mx >= 0x7f800000 {
		return 0, firstNonFinite(params)
	}
	return mx, nil
}

func firstNonFinite(params [][]float32) error {
	for t, xs := range params {
		for i, x := range xs {
			if math.Float32bits(x)&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w: tensor %d element %d is %v", ErrNonFinite, t, i, x)
			}
		}
	}
	return nil
}

// checkShapes reports ErrShape unless params has one tensor per size, each
// of that many elements.
func checkShapes(sizes []int, params [][]float32) error {
	if len(params) != len(sizes) {
		return fmt.Errorf("%w: %d tensors, want %d", ErrShape, len(params), len(sizes))
	}
	for i, xs := range params {
		if len(xs) != sizes[i] {
			return fmt.Errorf("%w: tensor %d has %d elements, want %d", ErrShape, i, len(xs), sizes[i])
		}
	}
	return nil
}

// splitTensors cuts flat into tensors of the given sizes. Each tensor's
// capacity ends where it does, so appending to one cannot overwrite the next.
func splitTensors(flat []float32, sizes []int) [][]float32 {
	out := make([][]float32, len(sizes))
	off := 0
	for i, n := range sizes {
		out[i] = flat[off : off+n : off+n]
		off += n
	}
	return out
}
