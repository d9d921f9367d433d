package accumulator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"

	"github.com/fdxkafka/fdxkafka/aggregator/binstate"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Errors an Accumulator wraps.
var (
	// ErrShape: an update's tensors differ in number or size from the
	// accumulator's.
	ErrShape = errors.New("shape mismatch")
	// ErrNumExamples: the weight (example count) is below 1 or above
	// MaxWeight.
	ErrNumExamples = errors.New("invalid number of examples")
	// ErrNonFinite: a parameter is NaN or infinite.
	ErrNonFinite = errors.New("non-finite parameter")
	// ErrOverflow: a value times its weight leaves the accumulator's range
	// (see MaxTermLog2).
	ErrOverflow = errors.New("outside the accumulator's range")
	// ErrNoUpdates: a mean was asked of an accumulator without updates.
	ErrNoUpdates = errors.New("no updates")
	// ErrBadState: saved state (an accumulator's MarshalBinary, or a
	// strategy's state around it) is corrupt or of another version.
	ErrBadState = errors.New("invalid saved state")
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
	// accWords is the number of 64-bit words per coordinate of the wide
	// (fallback) sums: a 256-bit two's complement integer.
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

// The dense, windowed representation (see Accumulator for why it is exact).
// The names in brackets are those of the proof there.
const (
	// blockLen is the number of coordinates that share one exponent window.
	blockLen = 256
	// winBinades [R] is the width of a window: a block keeps the float32
	// exponent fields [e0, e0+R) in its dense sums.
	winBinades = 32
	// winHeadroom is how many binades above the largest value of the first
	// update a window reaches, so later updates that grow a little still fit.
	winHeadroom = 4
	// loBits [L]: the high sum holds multiples of 2^L window units, the low
	// sum integers of at most about 2^(L-1) per term.
	loBits = 48
	// renormEvery [K] is the number of folds between carries from the low
	// sum into the high one: K+1 low parts of at most 2^(L-1) stay within
	// 2^53, where every integer is a float64.
	renormEvery = 63
	// maxPartWeight bounds the weight of one fold: weight × significand
	// < 2^29 × 2^24 = 2^53 is an exact float64 product. Heavier updates are
	// folded in parts.
	maxPartWeight = 1<<29 - 1
	// denseWeightLimit [Wmax] bounds the total weight folded into the dense
	// sums: |high sum| < Wmax × 2^(24+R) + 2^53 ≤ 2^(53+L), where multiples
	// of 2^L are exact float64s. Beyond it (never, at 2^44 ≈ 1.8e13
	// examples) the dense sums are first moved into the wide ones.
	denseWeightLimit = 1 << 44
	// maxWinTop is the largest exponent field a window may hold: with
	// e ≤ 175, |weight × x| < 2^55 × 2^(e-1) units ≤ 2^229 units whatever
	// the weight, so a value in a window always passes termFits.
	maxWinTop = termLimitUnits - 55 + 1
	// maxWinBottom is the largest bottom exponent field of a window.
	maxWinBottom = maxWinTop - winBinades + 1
	// splitMagic is 1.5 × 2^(52+L): for |t| < 2^(51+L), t + splitMagic lies
	// in [2^(52+L), 2^(53+L)), whose spacing is 2^L, so (t + splitMagic) −
	// splitMagic is t rounded to a multiple of 2^L, exactly, and t minus it
	// is exact too (an integer of magnitude ≤ 2^(L-1)).
	splitMagic = 0x1.8p100
	// inWindowSpan is R in the position of the exponent field of x<<1.
	inWindowSpan = winBinades << 24
)

// Accumulator computes the weighted mean of float32 parameter vectors exactly
// and in O(model) memory, with a result that is bit-identical whatever order
// the vectors are added in.
//
// Why: clients arrive in random order (and over two channels that must yield
// the same model), and floating-point addition is not associative, so a
// running float sum would make the global model depend on arrival order.
// Here each coordinate keeps Σ weight_i·x_i exactly, as an integer in units
// of 2^-149, the smallest float32 subnormal: every float32 is an integer
// number of units, and so is weight × x. Integer addition is associative
// and commutative, so the exact sum, and the mean rounded once from it, do
// not depend on the order; nor do they depend on how the sum is
// represented, which may (and does) depend on the order in which updates
// arrived. Mean divides by Σ weight_i and rounds once, to nearest-even, so
// each coordinate is the correctly rounded weighted mean (subnormals
// included) and identical inputs come back unchanged; a mean of exactly
// zero is +0.
//
// Representation. A plain 256-bit fixed-point sum per coordinate (a Kulisch
// accumulator) is exact but costs 32 bytes and a 4-word carry chain per
// value. Model weights, though, span few binades, so, as in binned
// (ReproBLAS) and small-superaccumulator (Neal's xsum) summation, the sum is
// split by exponent, and carries are deferred:
//
//   - Coordinates are cut into blocks of blockLen. A block's window is the
//     R = winBinades exponent fields [e0, e0+R), chosen from the first update
//     that has a nonzero value there (winHeadroom binades above its largest).
//     The window unit is U = 2^(e0-150), the last bit of the smallest float32
//     in the window.
//   - A value x in the window, times a weight w < 2^29, is t = w·x/U =
//     w·m·2^r with m < 2^24 and 0 ≤ r < R: an integer below 2^(53+R) = 2^85.
//     float64(x)·(w·2^(150-e0)) computes it exactly (w·m < 2^53 bits, times
//     a power of two).
//   - t is split, exactly (see splitMagic), into h, a multiple of 2^L, and
//     l = t − h, an integer with |l| ≤ 2^(L-1). Each coordinate keeps two
//     float64 sums: hi of the h, lo of the l (16 bytes).
//   - lo stays exact: after a renormalisation |lo| ≤ 2^(L-1); K more folds
//     add at most K·2^(L-1), and (K+1)·2^(L-1) ≤ 2^53, below which every
//     integer is a float64, so no partial sum is rounded. Every K folds,
//     lo's multiple of 2^L moves into hi (the carry), exactly.
//   - hi stays exact: it holds multiples of 2^L of magnitude at most
//     |Σ t| + |lo| < Wmax·2^(24+R) + 2^53 ≤ 2^(53+L) (Wmax is
//     denseWeightLimit, the total weight folded densely), and every such
//     multiple is a float64.
//   - A value outside its block's window (a tiny one, a subnormal, one that
//     grew past the window) goes to a 256-bit fixed-point sum for the block,
//     allocated the first time it is needed. Zero goes nowhere.
//
// So the sum is exact in every case; only the speed depends on how well the
// windows fit. Folding is a float convert, multiply, two adds and two
// subtracts per value, and vectorises (see foldWindow); the memory is 16
// bytes per coordinate while values stay in their windows. Accumulators can
// be merged (Merge) and serialised (MarshalBinary) exactly.
//
// The limits: |weight × x| < 2^80 per term, at most MaxTerms terms.
//
// An Accumulator is not safe for concurrent use.
type Accumulator struct {
	sizes []int
	total int // number of coordinates, Σ sizes
	// blocks cut each tensor, in order, into blockLen coordinates (the last
	// of a tensor may be shorter); tensorBlocks[t] is tensor t's first.
	blocks       []block
	tensorBlocks []int
	// hi and lo are the dense sums of each coordinate, in its block's
	// window units.
	hi, lo []float64
	// sinceRenorm counts folds since lo was last carried into hi.
	sinceRenorm int
	// denseWeight is the weight folded into hi and lo since they were last
	// emptied.
	denseWeight int64
	count       int
	weight      int64
	// broken: a trusted fold stopped halfway (see AddChecked); the sums
	// are incomplete and nothing reads them.
	broken bool
}

// block is a run of coordinates sharing an exponent window.
type block struct {
	off, n int // coordinates [off, off+n) of the flattened model
	// e0 is the bottom exponent field of the window, in [1, maxWinBottom];
	// 0 until chosen, and then the block's dense sums are zero.
	e0 uint32
	// wide holds accWords words per coordinate (least significant first):
	// the 256-bit sum, in units of 2^-149, of the terms outside the window.
	// Nil until needed.
	wide []uint64
}

// New returns an empty accumulator for tensors of the given
// sizes (number of elements each).
func New(sizes []int) (*Accumulator, error) {
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
	a := &Accumulator{
		sizes:        append([]int(nil), sizes...),
		total:        total,
		tensorBlocks: make([]int, len(sizes)+1),
	}
	a.hi, a.lo = denseSums(total)
	off := 0
	for t, n := range sizes {
		a.tensorBlocks[t] = len(a.blocks)
		for j := 0; j < n; j += blockLen {
			a.blocks = append(a.blocks, block{off: off + j, n: min(blockLen, n-j)})
		}
		off += n
	}
	a.tensorBlocks[len(sizes)] = len(a.blocks)
	return a, nil
}

// denseSums allocates hi and lo in one piece, with lo starting half a page
// (modulo 4 KiB) after hi: at equal offsets, a load from lo right after a
// store to hi would wait on a false dependency (4K aliasing), which more
// than halves the fold's speed.
func denseSums(n int) (hi, lo []float64) {
	const page, half = 4096 / 8, 2048 / 8 // in float64s
	pad := ((half-n)%page + page) % page
	buf := make([]float64, 2*n+pad)
	return buf[:n:n], buf[n+pad : 2*n+pad : 2*n+pad]
}

// Len is the number of coordinates: the sum of the tensor sizes.
func (a *Accumulator) Len() int { return a.total }

// Count returns the number of vectors added.
func (a *Accumulator) Count() int { return a.count }

// Weight returns the sum of the weights added.
func (a *Accumulator) Weight() int64 { return a.weight }

// Reset empties the accumulator, keeping its shapes and dense memory; the
// wide sums are released, and windows are chosen afresh.
func (a *Accumulator) Reset() {
	clear(a.hi)
	clear(a.lo)
	for i := range a.blocks {
		a.blocks[i].e0, a.blocks[i].wide = 0, nil
	}
	a.sinceRenorm, a.denseWeight, a.count, a.weight = 0, 0, 0, 0
}

// Add adds weight × params. It is atomic: on error nothing was added. It
// rejects a weight outside [1, MaxWeight], params whose shapes differ from
// the accumulator's, non-finite values (ErrNonFinite), a value with
// |weight × x| ≥ 2^MaxTermLog2 (ErrOverflow), and more than MaxTerms adds.
// Params are read, not retained.
func (a *Accumulator) Add(weight int64, params [][]float32) error {
	if err := a.checkTerm(weight); err != nil {
		return err
	}
	if err := checkShapes(a.sizes, params); err != nil {
		return err
	}
	maxAbs, err := maxAbsBits(params)
	if err != nil {
		return err
	}
	if !termFits(uint64(weight), maxAbs) {
		return fmt.Errorf("%w: |%d × %g| is not below 2^%d", ErrOverflow, weight, math.Float32frombits(maxAbs), MaxTermLog2)
	}
	// Validation is over: from here on nothing fails, so Add is atomic.
	if a.denseWeight > denseWeightLimit-weight {
		a.spillAll()
	}
	for w := uint64(weight); w > 0; {
		part := min(w, maxPartWeight)
		a.fold(part, params)
		w -= part
	}
	a.count++
	a.weight += weight
	a.denseWeight += weight
	return nil
}

// checkTerm checks what every way of adding checks before the values: the
// accumulator is whole, the weight is in range, and there is room for one
// more term.
func (a *Accumulator) checkTerm(weight int64) error {
	if a.broken {
		return errBroken
	}
	if weight < 1 || weight > MaxWeight {
		return fmt.Errorf("%w: weight %d outside [1, %d]", ErrNumExamples, weight, MaxWeight)
	}
	if a.count >= MaxTerms {
		return fmt.Errorf("%w: accumulator already holds its maximum of %d vectors", ErrOverflow, MaxTerms)
	}
	return nil
}

// fold adds w × params, for w ≤ maxPartWeight and validated params.
func (a *Accumulator) fold(w uint64, params [][]float32) {
	if a.sinceRenorm == renormEvery {
		a.renormalize()
	}
	a.sinceRenorm++
	fw := float64(w)
	for t, xs := range params {
		for bi := a.tensorBlocks[t]; bi < a.tensorBlocks[t+1]; bi++ {
			b := &a.blocks[bi]
			start := (bi - a.tensorBlocks[t]) * blockLen
			bx := xs[start : start+b.n]
			if b.e0 == 0 {
				if b.e0 = chooseWindow(bx); b.e0 == 0 {
					continue // all zero
				}
			}
			a.foldBlock(b, bx, w, fw)
		}
	}
}

// chooseWindow returns the bottom exponent field of a window for a block
// whose first nonzero values are xs, or 0 if they are all zero.
func chooseWindow(xs []float32) uint32 {
	mx := maxAbs32(xs)
	if mx == 0 {
		return 0
	}
	top := min(max(int(mx>>23), 1)+winHeadroom, maxWinTop)
	return uint32(max(top-winBinades+1, 1))
}

// foldBlock adds w × xs into block b. The vector kernel takes the runs of
// values in the window; the values it stops at are folded one by one.
func (a *Accumulator) foldBlock(b *block, xs []float32, w uint64, fw float64) {
	hi := a.hi[b.off : b.off+len(xs)]
	lo := a.lo[b.off : b.off+len(xs)]
	scale := fw * math.Ldexp(1, 150-int(b.e0)) // w / U, exact: a power of two apart
	for i := 0; i < len(xs); {
		i += foldWindow(xs[i:], hi[i:], lo[i:], scale, b.e0)
		for end := min(i+8, len(xs)); i < end; i++ {
			x := xs[i]
			xb := math.Float32bits(x)
			switch {
			case xb<<1-b.e0<<24 < inWindowSpan:
				t := float64(float64(x) * scale) // the conversion forbids fusing into an FMA
				h := float64(t+splitMagic) - splitMagic
				hi[i] += h
				lo[i] += t - h
			case xb<<1 == 0:
			default:
				if b.wide == nil {
					b.wide = make([]uint64, accWords*b.n)
				}
				accumulate(b.wide[accWords*i:accWords*i+accWords], w, xs[i:i+1])
			}
		}
	}
}

// foldWindowGeneric is foldWindow in Go: it adds the values of x that lie
// in the window with bottom exponent field e0, times scale = w / U, into hi
// and lo, and returns at the first value that is neither in the window nor
// zero, or at the end: the number of values folded.
func foldWindowGeneric(x []float32, hi, lo []float64, scale float64, e0 uint32) int {
	hi, lo = hi[:len(x)], lo[:len(x)]
	for i, v := range x {
		vb := math.Float32bits(v)
		if vb<<1-e0<<24 >= inWindowSpan && vb<<1 != 0 {
			return i
		}
		t := float64(float64(v) * scale)
		h := float64(t+splitMagic) - splitMagic
		hi[i] += h
		lo[i] += t - h
	}
	return len(x)
}

// renormalize carries lo's multiples of 2^L into hi, leaving |lo| ≤
// 2^(L-1). Exact: |lo| ≤ 2^53 so the split is exact (see splitMagic), and
// hi stays a multiple of 2^L within its bound.
func (a *Accumulator) renormalize() {
	hi, lo := a.hi, a.lo[:len(a.hi)]
	for i, l := range lo {
		c := float64(l+splitMagic) - splitMagic
		hi[i] += c
		lo[i] = l - c
	}
	a.sinceRenorm = 0
}

// spillAll moves every dense sum into the wide ones.
func (a *Accumulator) spillAll() {
	for i := range a.blocks {
		a.spill(&a.blocks[i])
	}
	a.denseWeight = 0
}

// spill moves block b's dense sums into its wide ones.
func (a *Accumulator) spill(b *block) {
	if b.e0 == 0 {
		return
	}
	if b.wide == nil {
		b.wide = make([]uint64, accWords*b.n)
	}
	for j := range b.n {
		i := b.off + j
		d := (*[accWords]uint64)(b.wide[accWords*j:])
		addFloat(d, a.hi[i], b.e0-1)
		addFloat(d, a.lo[i], b.e0-1)
		a.hi[i], a.lo[i] = 0, 0
	}
}

// addFloat adds v × 2^shift to the 256-bit integer d, for v an integer
// float64 (a dense sum in window units; 2^shift = U / 2^-149 converts them
// to accumulator units).
func addFloat(d *[accWords]uint64, v float64, shift uint32) {
	if v == 0 {
		return
	}
	b := math.Float64bits(v)
	m := b&(1<<52-1) | 1<<52 // v is an integer ≠ 0, so normal
	k := int(b>>52&0x7ff) - 1075 + int(shift)
	if k < 0 {
		m >>= uint(-k) // exact: v × 2^shift is an integer
		k = 0
	}
	addTerm(d, m, uint(k), b>>63)
}

// exactSum returns the exact sum of coordinate j of block b, in units of
// 2^-149, as a 256-bit two's complement integer.
func (a *Accumulator) exactSum(b *block, j int) [accWords]uint64 {
	var d [accWords]uint64
	if b.wide != nil {
		copy(d[:], b.wide[accWords*j:accWords*j+accWords])
	}
	if b.e0 != 0 {
		addFloat(&d, a.hi[b.off+j], b.e0-1)
		addFloat(&d, a.lo[b.off+j], b.e0-1)
	}
	return d
}

// Mean returns the weighted mean, each coordinate correctly rounded to
// float32. It fails with ErrNoUpdates when nothing was added.
func (a *Accumulator) Mean() ([][]float32, error) {
	flat, err := a.MeanFlat()
	if err != nil {
		return nil, err
	}
	return Split(flat, a.sizes), nil
}

// Mean64 returns the weighted mean correctly rounded to float64, for callers
// that keep computing with it (the server optimizers subtract the global
// model from it) and should not lose precision to an intermediate float32.
func (a *Accumulator) Mean64() ([][]float64, error) {
	flat, err := a.Mean64Flat()
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

// MeanFlat is Mean as one slice, the tensors one after another.
func (a *Accumulator) MeanFlat() ([]float32, error) {
	if a.broken {
		return nil, errBroken
	}
	if a.count == 0 {
		return nil, fmt.Errorf("accumulator: %w", ErrNoUpdates)
	}
	out := make([]float32, a.total)
	w := uint64(a.weight)
	for bi := range a.blocks {
		b := &a.blocks[bi]
		for j := range b.n {
			d := a.exactSum(b, j)
			out[b.off+j] = float32(quotient(d[:], w, true))
		}
	}
	return out, nil
}

// Mean64Flat is Mean64 as one slice, the tensors one after another.
func (a *Accumulator) Mean64Flat() ([]float64, error) {
	if a.broken {
		return nil, errBroken
	}
	if a.count == 0 {
		return nil, fmt.Errorf("accumulator: %w", ErrNoUpdates)
	}
	out := make([]float64, a.total)
	w := uint64(a.weight)
	for bi := range a.blocks {
		b := &a.blocks[bi]
		for j := range b.n {
			d := a.exactSum(b, j)
			out[b.off+j] = quotient(d[:], w, false)
		}
	}
	return out, nil
}

// Merge adds other's sums into a, exactly: accumulators that together saw
// a set of updates merge into one whose Mean is bit-identical to that of a
// single accumulator fed all of them, in any order and any grouping. other
// is not changed. It fails with ErrShape if the shapes differ and with
// ErrOverflow if the merged accumulator would hold more than MaxTerms
// vectors; on error a is unchanged.
func (a *Accumulator) Merge(other *Accumulator) error {
	if other == a {
		return errors.New("accumulator: merge with itself")
	}
	if a.broken || other.broken {
		return errBroken
	}
	if err := sameSizes(a.sizes, other.sizes); err != nil {
		return fmt.Errorf("accumulator: merge: %w", err)
	}
	if other.count > MaxTerms-a.count {
		return fmt.Errorf("%w: merging %d vectors into %d exceeds %d", ErrOverflow, other.count, a.count, MaxTerms)
	}
	if other.count == 0 {
		return nil
	}
	// After this, |a.lo| ≤ 2^(L-1), and other's lo, carried on the fly,
	// adds at most 2^(L-1): one fold's worth.
	a.renormalize()
	if a.denseWeight > denseWeightLimit-other.denseWeight {
		a.spillAll()
	}
	for bi := range a.blocks {
		ab, ob := &a.blocks[bi], &other.blocks[bi]
		if ob.wide != nil {
			if ab.wide == nil {
				ab.wide = make([]uint64, accWords*ab.n)
			}
			for j := range ab.n {
				add256((*[accWords]uint64)(ab.wide[accWords*j:]), (*[accWords]uint64)(ob.wide[accWords*j:]))
			}
		}
		if ob.e0 == 0 {
			continue
		}
		if ab.e0 == 0 {
			ab.e0 = ob.e0 // a's dense sums here are zero: take other's window
		}
		if ab.e0 != ob.e0 {
			// Windows differ: other's dense sums go to a's wide ones.
			if ab.wide == nil {
				ab.wide = make([]uint64, accWords*ab.n)
			}
			for j := range ab.n {
				d := (*[accWords]uint64)(ab.wide[accWords*j:])
				addFloat(d, other.hi[ob.off+j], ob.e0-1)
				addFloat(d, other.lo[ob.off+j], ob.e0-1)
			}
			continue
		}
		for j := range ab.n {
			i := ab.off + j
			l := other.lo[i]
			c := float64(l+splitMagic) - splitMagic
			a.hi[i] += other.hi[i] + c // both multiples of 2^L, within the bound
			a.lo[i] += l - c
		}
	}
	a.sinceRenorm = 1
	a.count += other.count
	a.weight += other.weight
	a.denseWeight += other.denseWeight
	return nil
}

func sameSizes(a, b []int) error {
	if len(a) != len(b) {
		return fmt.Errorf("%w: %d tensors, want %d", ErrShape, len(b), len(a))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Errorf("%w: tensor %d has %d elements, want %d", ErrShape, i, b[i], a[i])
		}
	}
	return nil
}

// add256 adds the 256-bit two's complement integer s to d.
func add256(d, s *[accWords]uint64) {
	var c uint64
	d[0], c = bits.Add64(d[0], s[0], 0)
	d[1], c = bits.Add64(d[1], s[1], c)
	d[2], c = bits.Add64(d[2], s[2], c)
	d[3] += s[3] + c
}

// The serialised form (MarshalBinary), little-endian:
//
//	"FDXA" 1                       magic and version
//	uvarint tensors, uvarint size…  shapes
//	uvarint count, weight, denseWeight
//	per block, in order:
//	  byte e0 (0: no dense sums), byte 1 if wide sums follow else 0
//	  if e0 ≠ 0: n × (hi, lo) as float64 bits
//	  if wide:   n × 4 words
const marshalMagic = "FDXA\x01"

// MarshalBinary encodes the exact state, for publishing a partial sum that
// another process merges (UnmarshalBinary, then Merge). It carries lo into
// hi first, which changes the representation but not the sums.
func (a *Accumulator) MarshalBinary() ([]byte, error) {
	if a.broken {
		return nil, errBroken
	}
	a.renormalize()
	out := []byte(marshalMagic)
	out = binary.AppendUvarint(out, uint64(len(a.sizes)))
	for _, n := range a.sizes {
		out = binary.AppendUvarint(out, uint64(n))
	}
	out = binary.AppendUvarint(out, uint64(a.count))
	out = binary.AppendUvarint(out, uint64(a.weight))
	out = binary.AppendUvarint(out, uint64(a.denseWeight))
	for bi := range a.blocks {
		b := &a.blocks[bi]
		hasWide := byte(0)
		if b.wide != nil {
			hasWide = 1
		}
		out = append(out, byte(b.e0), hasWide)
		if b.e0 != 0 {
			for i := b.off; i < b.off+b.n; i++ {
				out = binary.LittleEndian.AppendUint64(out, math.Float64bits(a.hi[i]))
				out = binary.LittleEndian.AppendUint64(out, math.Float64bits(a.lo[i]))
			}
		}
		for _, w := range b.wide {
			out = binary.LittleEndian.AppendUint64(out, w)
		}
	}
	return out, nil
}

// UnmarshalBinary replaces a's state by the one data encodes. If a was made
// by New, data must have the same shapes (ErrShape otherwise);
// into a zero Accumulator it takes the encoded shapes. It checks every
// bound the sums rely on, so a corrupt or hostile input is an error, never
// a wrong sum later; on error a is unchanged.
func (a *Accumulator) UnmarshalBinary(data []byte) error {
	d := binstate.NewDecoder(data, ErrBadState)
	if string(d.Bytes(len(marshalMagic))) != marshalMagic {
		return fmt.Errorf("accumulator: unmarshal: %w: not an accumulator (bad magic or version)", ErrBadState)
	}
	nt := d.Uvarint()
	if nt > uint64(len(data)) {
		return fmt.Errorf("accumulator: unmarshal: %w: %d tensors in %d bytes", ErrBadState, nt, len(data))
	}
	sizes := make([]int, nt)
	var blocks uint64
	for i := range sizes {
		n := d.Uvarint()
		// Every block of blockLen coordinates takes at least 2 bytes, which
		// bounds what a short input can make us allocate.
		if blocks += (n + blockLen - 1) / blockLen; n > uint64(len(data))*blockLen || blocks > uint64(len(data))/2 {
			return fmt.Errorf("accumulator: unmarshal: %w: tensor %d of %d elements in %d bytes", ErrBadState, i, n, len(data))
		}
		sizes[i] = int(n)
	}
	if d.Err() != nil {
		return fmt.Errorf("accumulator: unmarshal: %w", d.Err())
	}
	if a.sizes != nil {
		if err := sameSizes(a.sizes, sizes); err != nil {
			return fmt.Errorf("accumulator: unmarshal: %w", err)
		}
	}
	n, err := New(sizes)
	if err != nil {
		return fmt.Errorf("accumulator: unmarshal: %w", err)
	}
	count, weight, dense := d.Uvarint(), d.Uvarint(), d.Uvarint()
	switch {
	case d.Err() != nil:
		return fmt.Errorf("accumulator: unmarshal: %w", d.Err())
	case count > MaxTerms:
		return fmt.Errorf("accumulator: unmarshal: %w: %w: %d vectors", ErrBadState, ErrOverflow, count)
	case weight < count || weight > count*MaxWeight:
		return fmt.Errorf("accumulator: unmarshal: %w: weight %d impossible for %d vectors", ErrBadState, weight, count)
	case dense > weight || dense > denseWeightLimit:
		return fmt.Errorf("accumulator: unmarshal: %w: dense weight %d out of range", ErrBadState, dense)
	}
	n.count, n.weight, n.denseWeight = int(count), int64(weight), int64(dense)
	// |hi + lo| ≤ dense × 2^(24+R) holds for the sums this weight can make;
	// requiring it keeps the bound that later folds rely on.
	hiMax := float64(dense)*math.Ldexp(1, 24+winBinades) + math.Ldexp(1, loBits-1)
	for bi := range n.blocks {
		b := &n.blocks[bi]
		e0, hasWide := uint32(d.U8()), d.U8()
		if e0 > maxWinBottom || hasWide > 1 {
			return fmt.Errorf("accumulator: unmarshal: %w: block %d: bad header %d %d", ErrBadState, bi, e0, hasWide)
		}
		b.e0 = e0
		if e0 != 0 {
			for i := b.off; i < b.off+b.n; i++ {
				h, l := math.Float64frombits(d.U64()), math.Float64frombits(d.U64())
				if !multipleOf(h, loBits) || math.Abs(h) > hiMax || !multipleOf(l, 0) || math.Abs(l) > math.Ldexp(1, loBits-1) {
					return fmt.Errorf("accumulator: unmarshal: %w: coordinate %d: dense sums %g, %g out of range", ErrBadState, i, h, l)
				}
				n.hi[i], n.lo[i] = h, l
			}
		}
		if hasWide == 1 {
			b.wide = make([]uint64, accWords*b.n)
			for j := range b.wide {
				b.wide[j] = d.U64()
			}
			for j := range b.n {
				if !wideFits((*[accWords]uint64)(b.wide[accWords*j:]), count) {
					return fmt.Errorf("accumulator: unmarshal: %w: coordinate %d: wide sum out of range", ErrBadState, b.off+j)
				}
			}
		}
		if d.Err() != nil {
			return fmt.Errorf("accumulator: unmarshal: %w", d.Err())
		}
	}
	if d.Len() != 0 {
		return fmt.Errorf("accumulator: unmarshal: %w: %d trailing bytes", ErrBadState, d.Len())
	}
	*a = *n
	return nil
}

// multipleOf reports whether v is a finite integer multiple of 2^k.
func multipleOf(v float64, k int) bool {
	if v == 0 {
		return true
	}
	b := math.Float64bits(v)
	e := int(b >> 52 & 0x7ff)
	if e == 0x7ff || e == 0 {
		return false // non-finite, or subnormal (never an integer)
	}
	m := b&(1<<52-1) | 1<<52
	return e-1075+bits.TrailingZeros64(m) >= k
}

// wideFits reports whether the 256-bit integer s has magnitude below
// count × 2^229, the most count terms can sum to.
func wideFits(s *[accWords]uint64, count uint64) bool {
	m := *s
	if m[3]>>63 != 0 {
		c := uint64(1)
		for i := range m {
			m[i], c = bits.Add64(^m[i], 0, c)
		}
	}
	if m == [accWords]uint64{} {
		return true
	}
	return m[3]>>(termLimitUnits-192) < count
}

// memBytes is the memory the accumulator holds for its sums.
func (a *Accumulator) memBytes() int {
	n := 8*(len(a.hi)+len(a.lo)) + 8*len(a.tensorBlocks)
	for i := range a.blocks {
		n += 8*len(a.blocks[i].wide) + 48 // 48: the block header
	}
	return n
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
		// p < 2^55 as n ≤ MaxWeight < 2^31 and m < 2^24.
		addTerm((*[accWords]uint64)(acc[accWords*i:]), n*m, s, uint64(b>>31))
	}
}

// addTerm adds (−1)^neg × p × 2^s to the 256-bit integer a, for neg 0 or 1
// and |p × 2^s| < 2^255.
func addTerm(a *[accWords]uint64, p uint64, s uint, neg uint64) {
	// The term p << s spans words s/64 and s/64+1; hi is p >> (64 − s%64)
	// written with shifts below 64, which compile without a range check,
	// and is 0 for s%64 == 0.
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
	default: // hi is zero: the term is below 2^255
		t3 = lo
	}
	// Negative terms are added as their two's complement, ^t + 1: the
	// mask flips the words and the sign bit is the carry in.
	mask := -neg
	var c uint64
	a[0], c = bits.Add64(a[0], t0^mask, neg)
	a[1], c = bits.Add64(a[1], t1^mask, c)
	a[2], c = bits.Add64(a[2], t2^mask, c)
	a[3] += (t3 ^ mask) + c
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
// CheckFinite returns an error wrapping ErrNonFinite that names the first
// NaN or infinite value of params, or nil.
func CheckFinite(params [][]float32) error {
	_, err := maxAbsBits(params)
	return err
}

func maxAbsBits(params [][]float32) (uint32, error) {
	var mx uint32
	for _, xs := range params {
		mx = max(mx, maxAbs32(xs))
	}
	if mx >= 0x7f800000 {
		return 0, firstNonFinite(params)
	}
	return mx, nil
}

// maxAbsGeneric is maxAbs32 in Go: the largest |x| over xs as float32
// bits, NaNs included (they order above infinity).
func maxAbsGeneric(xs []float32) uint32 {
	var mx uint32
	for _, x := range xs {
		mx = max(mx, math.Float32bits(x)&0x7fffffff)
	}
	return mx
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

// Split cuts flat into tensors of the given sizes. Each tensor's
// capacity ends where it does, so appending to one cannot overwrite the next.
func Split(flat []float32, sizes []int) [][]float32 {
	out := make([][]float32, len(sizes))
	off := 0
	for i, n := range sizes {
		out[i] = flat[off : off+n : off+n]
		off += n
	}
	return out
}
