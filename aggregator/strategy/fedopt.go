package strategy

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/binstate"
)

// ErrBadState is wrapped by Restore when the bytes are not a state this
// strategy wrote: truncated, of another version or strategy, or holding
// non-finite values.
var ErrBadState = accumulator.ErrBadState

type optKind uint8

const (
	kindAvgM optKind = iota + 1
	kindAdam
	kindYogi
	kindAdagrad
)

// optParams are a server optimizer's hyperparameters, defaults applied.
type optParams struct {
	lr, momentum, beta1, beta2, tau float64
}

// fedOpt is FedAvg followed by a server optimizer step. The FedAvg mean of a
// round is computed exactly (accumulator.Accumulator, as float64), then:
//
// FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data
// Distribution", with Flower's and PyTorch SGD's sign convention): the
// pseudo-gradient is g = w − mean, the direction the loss grows in;
//
//	u ← β·u + g,   w ← w − η·u,
//
// so with β = 0 and η = 1 the step lands exactly on the mean (FedAvg).
//
// FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, "Adaptive Federated
// Optimization", Algorithm 2): with Δ = mean − w, the direction the clients
// moved,
//
//	m ← β1·m + (1 − β1)·Δ
//	v ← β2·v + (1 − β2)·Δ²                      (FedAdam)
//	v ← v − (1 − β2)·Δ²·sign(v − Δ²)            (FedYogi)
//	v ← v + Δ²                                  (FedAdagrad)
//	w ← w + η·m / (√v + τ)
//
// with m₋₁ = 0 and v₋₁ = τ² as in the paper. Like the paper (and Flower's
// FedYogi and FedAdagrad) there is no Adam bias correction; Flower's FedAdam
// scales η by √(1−β2ᵗ)/(1−β1ᵗ), which changes only the first rounds.
//
// All arithmetic is elementwise float64 in a fixed order, with every product
// explicitly rounded (float64(x*y)) so that no platform fuses it into an FMA:
// the step is bit-identical on every machine, and so is a resumed run.
type fedOpt struct {
	Default
	name string
	kind optKind
	p    optParams

	mu sync.Mutex
	// gen changes whenever st does, so a round can tell that the state it
	// began from is no longer current.
	gen uint64
	st  optState
}

// optState is the optimizer state that State and Restore carry.
type optState struct {
	step  uint64    // rounds committed
	sizes []int     // tensor sizes; nil until the first round commits
	m     []float64 // FedAvgM's momentum buffer u, or the first moment m
	v     []float64 // second moment; nil for FedAvgM
}

func newFedOpt(name string, kind optKind, p optParams) *fedOpt {
	return &fedOpt{name: name, kind: kind, p: p}
}

func (s *fedOpt) Name() string { return s.name }

// vectors is the number of per-coordinate vectors in the state.
func (s *fedOpt) vectors() int {
	if s.kind == kindAvgM {
		return 1
	}
	return 2
}

func (s *fedOpt) Begin(global [][]float32) (Round, error) {
	sizes, err := checkGlobal(s.name, global)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	gen, have := s.gen, s.st.sizes
	s.mu.Unlock()
	if have != nil && !slices.Equal(have, sizes) {
		return nil, fmt.Errorf("strategy %s: begin: %w: optimizer state has tensor sizes %v, global model %v", s.name, ErrShape, have, sizes)
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, fmt.Errorf("strategy %s: begin: %w", s.name, err)
	}
	return newRound(s.name, sizes, &optRound{
		s: s, gen: gen, sizes: sizes, global: flatten(global, acc.Len()), acc: acc,
	}), nil
}

// optRound streams the updates into an accumulator.Accumulator and, at Finish, applies
// the optimizer step to the global model the round began from.
type optRound struct {
	s      *fedOpt
	gen    uint64
	sizes  []int
	global []float32
	acc    *accumulator.Accumulator
}

func (r *optRound) add(u Update) error { return addTo(r.acc, u) }

func (r *optRound) finish() ([][]float32, error) {
	mean, err := r.acc.Mean64Flat()
	if err != nil {
		return nil, err
	}
	out, err := r.s.commit(r.gen, r.sizes, r.global, mean)
	if err != nil {
		return nil, err
	}
	return accumulator.Split(out, r.sizes), nil
}

// commit computes the new global model from w and the round's mean, and
// makes the new optimizer state current, unless the state changed since the
// round began (gen) or the step is not finite; then nothing changes.
func (s *fedOpt) commit(gen uint64, sizes []int, w []float32, mean []float64) ([]float32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return nil, ErrStaleRound
	}
	n := len(w)
	m, v := s.st.m, s.st.v
	if s.st.sizes == nil { // first round: m₋₁ = 0, v₋₁ = τ²
		m = make([]float64, n)
		if s.kind != kindAvgM {
			v = make([]float64, n)
			tau2 := float64(s.p.tau * s.p.tau)
			for i := range v {
				v[i] = tau2
			}
		}
	}
	newM := make([]float64, n)
	var newV []float64
	if s.kind != kindAvgM {
		newV = make([]float64, n)
	}
	out := make([]float32, n)
	p := s.p
	c1, c2 := 1-p.beta1, 1-p.beta2
	for i, x := range w {
		wi := float64(x)
		var next, mi, vi float64
		switch s.kind {
		case kindAvgM:
			mi = float64(p.momentum*m[i]) + (wi - mean[i])
			next = wi - float64(p.lr*mi)
		default:
			delta := mean[i] - wi
			d2 := float64(delta * delta)
			mi = float64(p.beta1*m[i]) + float64(c1*delta)
			switch s.kind {
			case kindAdam:
				vi = float64(p.beta2*v[i]) + float64(c2*d2)
			case kindYogi:
				switch diff := v[i] - d2; {
				case diff > 0:
					vi = v[i] - float64(c2*d2)
				case diff < 0:
					vi = v[i] + float64(c2*d2)
				default:
					vi = v[i]
				}
			case kindAdagrad:
				vi = v[i] + d2
			}
			newV[i] = vi
			next = wi + float64(p.lr*mi)/(math.Sqrt(vi)+p.tau)
		}
		newM[i] = mi
		out[i] = float32(next)
		if isInf32(out[i]) || !isFinite(mi) || !isFinite(vi) {
			return nil, fmt.Errorf("%w: server step overflows at coordinate %d (w %g, mean %g)", ErrNonFinite, i, wi, mean[i])
		}
	}
	s.st = optState{step: s.st.step + 1, sizes: slices.Clone(sizes), m: newM, v: newV}
	s.gen++
	return out, nil
}

func isFinite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func isInf32(x float32) bool { return math.IsInf(float64(x), 0) || math.IsNaN(float64(x)) }

// stateVersion is the first byte of every state State writes. Layout,
// little-endian:
//
//	u8   version
//	u8   len(name), then the strategy name
//	u64  rounds committed
//	u32  number of tensors T, then T × u64 tensor sizes
//	u8   number of vectors K (0 before the first round), then
//	     K × Σsizes × f64: the momentum / first moment, then the second moment
//
// The name guards against restoring, say, FedAdam moments into FedYogi.
const stateVersion = 1

func (s *fedOpt) State() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	total, k := sum(st.sizes), 0
	if st.sizes != nil {
		k = s.vectors()
	}
	buf := make([]byte, 0, 2+len(s.name)+8+4+8*len(st.sizes)+1+8*k*total)
	buf = append(buf, stateVersion, byte(len(s.name)))
	buf = append(buf, s.name...)
	buf = binary.LittleEndian.AppendUint64(buf, st.step)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(st.sizes)))
	for _, n := range st.sizes {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(n))
	}
	buf = append(buf, byte(k))
	for _, vec := range [][]float64{st.m, st.v}[:k] {
		for _, x := range vec {
			buf = binary.LittleEndian.AppendUint64(buf, math.Float64bits(x))
		}
	}
	return buf, nil
}

func (s *fedOpt) Restore(state []byte) error {
	st, err := decodeState(state, s.name, s.vectors())
	if err != nil {
		return fmt.Errorf("strategy %s: restore: %w", s.name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	s.gen++
	return nil
}

// decodeState parses a State of strategy name with k vectors. It checks
// every length against the bytes present before allocating, so garbage
// yields an error, never a panic or a huge allocation.
func decodeState(b []byte, name string, k int) (optState, error) {
	if len(b) == 0 {
		return optState{}, fmt.Errorf("%w: empty", ErrBadState)
	}
	d := binstate.NewDecoder(b, ErrBadState)
	if v := d.U8(); d.Err() == nil && v != stateVersion {
		return optState{}, fmt.Errorf("%w: version %d, want %d", ErrBadState, v, stateVersion)
	}
	got := string(d.Bytes(int(d.U8())))
	if d.Err() == nil && got != name {
		return optState{}, fmt.Errorf("%w: written by strategy %q", ErrBadState, got)
	}
	var st optState
	st.step = d.U64()
	nt := d.U32()
	if d.Err() == nil && uint64(nt) > uint64(d.Len())/8 {
		return optState{}, fmt.Errorf("%w: %d tensor sizes in %d bytes", ErrBadState, nt, d.Len())
	}
	raw := make([]uint64, 0, nt)
	for range nt {
		raw = append(raw, d.U64())
	}
	nk := int(d.U8())
	if d.Err() != nil {
		return optState{}, d.Err()
	}
	if nk == 0 || nt == 0 {
		if nk != 0 || nt != 0 || st.step != 0 || d.Len() != 0 {
			return optState{}, fmt.Errorf("%w: %d vectors over %d tensors after %d rounds and %d more bytes", ErrBadState, nk, nt, st.step, d.Len())
		}
		return st, nil // no round committed yet
	}
	if nk != k {
		return optState{}, fmt.Errorf("%w: %d vectors, want %d", ErrBadState, nk, k)
	}
	// Σsizes × k × 8 must be exactly the bytes left; bound the running sum
	// by them so that it cannot overflow.
	limit := uint64(d.Len()) / uint64(8*k)
	var total uint64
	st.sizes = make([]int, nt)
	for i, n := range raw {
		if n > limit-total {
			return optState{}, fmt.Errorf("%w: tensor sizes exceed the %d bytes of values", ErrBadState, d.Len())
		}
		total += n
		st.sizes[i] = int(n)
	}
	if total*uint64(8*k) != uint64(d.Len()) {
		return optState{}, fmt.Errorf("%w: %d values per vector need %d bytes, have %d", ErrBadState, total, total*uint64(8*k), d.Len())
	}
	vecs := make([][]float64, k)
	for j := range vecs {
		vecs[j] = make([]float64, total)
		for i := range vecs[j] {
			x := math.Float64frombits(d.U64())
			if !isFinite(x) || (j == 1 && x < 0) {
				return optState{}, fmt.Errorf("%w: vector %d value %d is %v", ErrBadState, j, i, x)
			}
			vecs[j][i] = x
		}
	}
	st.m = vecs[0]
	if k > 1 {
		st.v = vecs[1]
	}
	return st, nil
}
