package strategy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"sync"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
	"github.com/fdxkafka/fdxkafka/aggregator/binstate"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy/privacy"
)

// Defaults of the DP strategies. Flower requires the clip norm and the noise
// multiplier; the adaptive ones are Flower's and Andrew et al.'s.
const (
	defaultDPClipNorm           = 1.0
	defaultDPAdaptiveClip       = 0.1 // Andrew et al.'s and Flower's initial clip norm
	defaultNoiseMultiplier      = 1.0
	defaultTargetQuantile       = 0.5
	defaultClipLR               = 0.2
	defaultSamplingRate         = 1.0
	defaultDelta                = 1e-5
	countStddevPerClient        = 1.0 / 20 // σ_b = n/20 by default
	maxClipNorm                 = 1 << 64
	minClipNorm                 = 0x1p-100 // adaptive clipping never shrinks S below this
	dpStateVersion         byte = 1
)

// dpParams are a DP strategy's parameters, defaults applied.
type dpParams struct {
	seed        uint64
	clip        float64 // fixed S, or adaptive clipping's initial one
	z           float64 // noise multiplier of the mechanism, as accounted
	quantile    float64 // γ
	clipLR      float64 // η_C
	countStddev float64 // σ_b; 0 means n/20
	q, delta    float64
}

// dpFedAvg is DP-FedAvg with server-side clipping (McMahan, Ramage, Talwar,
// Zhang 2018, "Learning Differentially Private Recurrent Language Models";
// Flower's DifferentialPrivacyServerSideFixedClipping and
// ...AdaptiveClipping). For a round from global model w with updates w_k:
//
//	Δ_k  = w_k − w, scaled by min(1, S/‖Δ_k‖₂)          (clipping)
//	w'   = w + (Σ_k Δ_k + N(0, (z_Δ·S)² I)) / n          (noised mean)
//
// The mean is unweighted: every client counts once whatever NumExamples
// says, which is what makes S/n the sensitivity the noise is calibrated to.
// (Flower wraps another strategy, usually example-weighted FedAvg, while
// calibrating its noise as if unweighted; we do not copy that.) The clipped
// deltas are summed exactly with an accumulator.Accumulator, so the mean does not depend
// on arrival order, and the noise is drawn per coordinate index from a
// stream fixed by (Seed, round), so neither does the noise.
//
// Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021,
// "Differentially Private Learning with Adaptive Clipping") also counts the
// updates with ‖Δ_k‖ ≤ S, noises that count with N(0, σ_b²) and moves S
// geometrically toward the γ quantile of the norms:
//
//	S ← S·exp(−η_C·(b̃ − γ)),   b̃ = (#unclipped + N(0, σ_b²))/n.
//
// Releasing the count costs privacy too; Andrew et al.'s Theorem 1 splits
// the requested multiplier z between the two so that the pair is as private
// as one Gaussian mechanism with multiplier z:
// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), which needs σ_b > z/2. The noise on the
// sum is calibrated to the S used for clipping in that round (Flower adds
// noise for the already updated S, which under-noises when S shrinks).
//
// Reproducibility versus privacy: the noise comes from ChaCha8 keyed by
// SHA-256(Seed, round), so a run, and a run resumed from its checkpoint,
// repeats bit for bit; that is what a research system comparing strategies
// needs. The price is that whoever knows Seed can regenerate and subtract
// the noise, so the (ε, δ) reported holds only against parties who do not.
// A production deployment would draw the noise from crypto/rand, keep no
// seed, and use a sampler without floating-point artifacts, such as the
// discrete Gaussian of Canonne, Kamath, Steinke 2020 (Mironov 2012 showed
// that textbook floating-point noise leaks through its low bits, and Box–
// Muller here also truncates the tails at about 8.6σ); it would give up
// bit-identical reruns.
//
// State carries the round counter and the current clip norm, so a restarted
// aggregator continues with the same S and the same noise stream.
type dpFedAvg struct {
	Default
	name     string
	adaptive bool
	p        dpParams

	mu     sync.Mutex
	gen    uint64 // changes whenever step or clip does
	step   uint64 // rounds committed
	clip   float64
	report map[string]float64
}

func newDPFedAvg(name string, cfg Config) (*dpFedAvg, error) {
	adaptive := name == "dpfedavg-adaptive"
	p := dpParams{seed: cfg.Seed}
	var err error
	clip := defaultDPClipNorm
	if adaptive {
		clip = defaultDPAdaptiveClip
	}
	if p.clip, err = positive("ClipNorm", cfg.ClipNorm, clip); err != nil {
		return nil, wrapConfig(name, err)
	}
	if p.clip > maxClipNorm {
		return nil, wrapConfig(name, fmt.Errorf("ClipNorm %v above 2^64", p.clip))
	}
	if p.z, err = positive("NoiseMultiplier", cfg.NoiseMultiplier, defaultNoiseMultiplier); err != nil {
		return nil, wrapConfig(name, err)
	}
	if p.q, err = positive("SamplingRate", cfg.SamplingRate, defaultSamplingRate); err != nil {
		return nil, wrapConfig(name, err)
	}
	if p.q > 1 {
		return nil, wrapConfig(name, fmt.Errorf("SamplingRate %v above 1", p.q))
	}
	if p.delta, err = unitInterval("Delta", cfg.Delta, defaultDelta); err != nil {
		return nil, wrapConfig(name, err)
	}
	if adaptive {
		if p.quantile, err = unitInterval("TargetQuantile", cfg.TargetQuantile, defaultTargetQuantile); err != nil {
			return nil, wrapConfig(name, err)
		}
		if p.clipLR, err = positive("ClipLR", cfg.ClipLR, defaultClipLR); err != nil {
			return nil, wrapConfig(name, err)
		}
		if cfg.ClippedCountStddev != 0 {
			if p.countStddev, err = positive("ClippedCountStddev", cfg.ClippedCountStddev, 0); err != nil {
				return nil, wrapConfig(name, err)
			}
			if _, err := splitNoise(p.z, p.countStddev); err != nil {
				return nil, wrapConfig(name, err)
			}
		}
	}
	return &dpFedAvg{name: name, adaptive: adaptive, p: p, clip: p.clip}, nil
}

// splitNoise returns the noise multiplier z_Δ for the deltas that, with
// count noise σ_b, makes adaptive clipping as private as multiplier z.
func splitNoise(z, countStddev float64) (float64, error) {
	if !(2*countStddev > z) {
		return 0, fmt.Errorf("ClippedCountStddev %v must exceed NoiseMultiplier/2 = %v (Andrew et al.'s noise split)", countStddev, z/2)
	}
	return 1 / math.Sqrt(1/(z*z)-1/(4*countStddev*countStddev)), nil
}

func (s *dpFedAvg) Name() string { return s.name }

func (s *dpFedAvg) Begin(global [][]float32) (Round, error) {
	sizes, err := checkGlobal(s.name, global)
	if err != nil {
		return nil, err
	}
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, fmt.Errorf("strategy %s: begin: %w", s.name, err)
	}
	s.mu.Lock()
	gen, clip := s.gen, s.clip
	s.mu.Unlock()
	g := make([][]float32, len(global))
	for i, t := range global {
		g[i] = append([]float32(nil), t...)
	}
	return newRound(s.name, sizes, &dpRound{s: s, gen: gen, clip: clip, global: g, acc: acc}), nil
}

// dpRound clips each update's delta as it arrives and streams it into an
// accumulator.Accumulator with weight 1.
type dpRound struct {
	s         *dpFedAvg
	gen       uint64
	clip      float64
	global    [][]float32
	acc       *accumulator.Accumulator
	unclipped int
}

func (r *dpRound) add(u Update) error {
	// Accept exactly what the other strategies accept (finite values with
	// |NumExamples × x| < 2^accumulator.MaxTermLog2), so that an update is never taken
	// by one strategy and refused by another.
	params := u.params()
	if err := checkTerms(u.NumExamples, params); err != nil {
		return err
	}
	clipped, unclipped, err := clipDelta(params, r.global, r.clip)
	if err != nil {
		return err
	}
	if err := r.acc.Add(1, clipped); err != nil {
		return err
	}
	if unclipped {
		r.unclipped++
	}
	return nil
}

// checkTerms reports ErrNonFinite for a NaN or infinite value and
// ErrOverflow if |n × x| ≥ 2^accumulator.MaxTermLog2 for some x.
func checkTerms(n int64, params [][]float32) error {
	for t, xs := range params {
		for i, x := range xs {
			b := math.Float32bits(x) & 0x7fffffff
			if b >= 0x7f800000 {
				return fmt.Errorf("%w: tensor %d element %d is %v", ErrNonFinite, t, i, x)
			}
			// |x| = m × 2^(e−150) with the implicit bit in m (e ≥ 1), or
			// m × 2^−149 for a subnormal; n × m < 2^55 is exact.
			e, m := int(b>>23), uint64(b&(1<<23-1))
			if e == 0 {
				e = 1
			} else {
				m |= 1 << 23
			}
			if m != 0 && bits.Len64(uint64(n)*m)+e-150 > accumulator.MaxTermLog2 {
				return fmt.Errorf("%w: |%d × %g| is not below 2^%d", ErrOverflow, n, x, accumulator.MaxTermLog2)
			}
		}
	}
	return nil
}

// clipDelta returns params − global scaled to L2 norm at most bound, as
// float32, and whether it was within the bound already. The norm is summed
// in float64 in coordinate order. Rounding the scaled delta to float32 can
// raise its norm by a relative 2^-24; the scale is then lowered until the
// rounded delta is within the bound, so the bound holds exactly for what is
// summed.
func clipDelta(params, global [][]float32, bound float64) ([][]float32, bool, error) {
	delta := make([][]float64, len(params))
	var ss float64
	for i, xs := range params {
		d := make([]float64, len(xs))
		for j, x := range xs {
			v := float64(x) - float64(global[i][j])
			d[j] = v
			ss += float64(v * v)
		}
		delta[i] = d
	}
	norm := math.Sqrt(ss)
	scale := 1.0
	if norm > bound {
		scale = bound / norm
	}
	out := make([][]float32, len(params))
	for i := range out {
		out[i] = make([]float32, len(delta[i]))
	}
	for range 64 {
		var got float64
		for i, d := range delta {
			for j, v := range d {
				c := float32(float64(v * scale))
				if math.IsInf(float64(c), 0) {
					return nil, false, fmt.Errorf("%w: delta %g of tensor %d element %d is outside float32", ErrOverflow, v, i, j)
				}
				out[i][j] = c
				got += float64(float64(c) * float64(c))
			}
		}
		if math.Sqrt(got) <= bound {
			return out, norm <= bound, nil
		}
		scale *= 1 - 0x1p-20
	}
	return nil, false, fmt.Errorf("%w: cannot clip a delta of norm %g to %g", ErrOverflow, norm, bound)
}

func (r *dpRound) finish() ([][]float32, error) {
	n := r.acc.Count()
	mean, err := r.acc.Mean64()
	if err != nil {
		return nil, err
	}
	return r.s.commit(r, n, mean)
}

// commit adds the noise to the mean of the clipped deltas, advances the
// clip norm (adaptive) and the round counter, and records the report;
// unless the state moved on since the round began.
func (s *dpFedAvg) commit(r *dpRound, n int, mean [][]float64) ([][]float32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.gen != s.gen {
		return nil, ErrStaleRound
	}
	zDelta, countStddev := s.p.z, 0.0
	if s.adaptive {
		countStddev = s.p.countStddev
		if countStddev == 0 {
			countStddev = countStddevPerClient * float64(n)
		}
		var err error
		if zDelta, err = splitNoise(s.p.z, countStddev); err != nil {
			return nil, fmt.Errorf("%w: with the default σ_b = n/20, %d updates are too few for NoiseMultiplier %v: %v", ErrTooFewUpdates, n, s.p.z, err)
		}
	}
	round := s.step + 1
	stddev := zDelta * r.clip / float64(n)
	noise := newGaussian(s.p.seed, round, "delta")
	out := make([][]float32, len(mean))
	for i, m := range mean {
		o := make([]float32, len(m))
		for j, v := range m {
			// float64(·) on each product keeps FMA out: bit-identical on
			// every platform that has the same math.Log.
			x := float64(r.global[i][j]) + (v + float64(stddev*noise.next()))
			o[j] = float32(x)
			if math.IsInf(float64(o[j]), 0) || math.IsNaN(x) {
				return nil, fmt.Errorf("%w: noised model overflows at tensor %d element %d", ErrNonFinite, i, j)
			}
		}
		out[i] = o
	}
	rep := map[string]float64{
		"dp_round":                   float64(round),
		"dp_noise_multiplier":        s.p.z,
		"dp_update_noise_multiplier": zDelta,
		"dp_noise_stddev":            stddev,
		"dp_clip_norm":               r.clip,
		"dp_sampling_rate":           s.p.q,
		"dp_clients":                 float64(n),
	}
	next := r.clip
	if s.adaptive {
		b := (float64(r.unclipped) + float64(countStddev*newGaussian(s.p.seed, round, "count").next())) / float64(n)
		next = min(max(r.clip*math.Exp(-float64(s.p.clipLR*(b-s.p.quantile))), minClipNorm), maxClipNorm)
		rep["dp_noised_unclipped_fraction"] = b
		rep["dp_clipped_count_stddev"] = countStddev
	}
	rep["dp_next_clip_norm"] = next
	eps, _, err := privacy.Epsilon(s.p.q, s.p.z, int(min(round, math.MaxInt32)), s.p.delta)
	if err != nil {
		return nil, fmt.Errorf("privacy accounting: %w", err)
	}
	rep["dp_epsilon"], rep["dp_delta"] = eps, s.p.delta
	s.step, s.clip, s.report = round, next, rep
	s.gen++
	return out, nil
}

// Report returns the noise multiplier, the clip norm, the noise standard
// deviation and the (ε, δ) spent after the last round, plus the adaptive
// clipping figures; before the first round, the clip norm and ε = 0.
func (s *dpFedAvg) Report() map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.report != nil && uint64(s.report["dp_round"]) == s.step {
		out := make(map[string]float64, len(s.report))
		for k, v := range s.report {
			out[k] = v
		}
		return out
	}
	// No round finished since start or restore: report the state.
	eps, _, err := privacy.Epsilon(s.p.q, s.p.z, int(min(s.step, math.MaxInt32)), s.p.delta)
	if err != nil {
		eps = math.NaN()
	}
	return map[string]float64{
		"dp_round":            float64(s.step),
		"dp_noise_multiplier": s.p.z,
		"dp_clip_norm":        s.clip,
		"dp_next_clip_norm":   s.clip,
		"dp_sampling_rate":    s.p.q,
		"dp_epsilon":          eps,
		"dp_delta":            s.p.delta,
	}
}

// State layout, little-endian: u8 version, u8 len(name), name, u64 rounds
// committed, f64 clip norm. The name keeps a fixed-clipping state out of
// an adaptive strategy and vice versa.
func (s *dpFedAvg) State() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := make([]byte, 0, 2+len(s.name)+16)
	buf = append(buf, dpStateVersion, byte(len(s.name)))
	buf = append(buf, s.name...)
	buf = binary.LittleEndian.AppendUint64(buf, s.step)
	return binary.LittleEndian.AppendUint64(buf, math.Float64bits(s.clip)), nil
}

func (s *dpFedAvg) Restore(state []byte) error {
	if len(state) == 0 {
		return fmt.Errorf("strategy %s: restore: %w: empty", s.name, ErrBadState)
	}
	d := binstate.NewDecoder(state, ErrBadState)
	v := d.U8()
	name := string(d.Bytes(int(d.U8())))
	step := d.U64()
	clip := math.Float64frombits(d.U64())
	switch {
	case d.Err() != nil:
		return fmt.Errorf("strategy %s: restore: %w", s.name, d.Err())
	case v != dpStateVersion:
		return fmt.Errorf("strategy %s: restore: %w: version %d, want %d", s.name, ErrBadState, v, dpStateVersion)
	case name != s.name:
		return fmt.Errorf("strategy %s: restore: %w: written by strategy %q", s.name, ErrBadState, name)
	case d.Len() != 0:
		return fmt.Errorf("strategy %s: restore: %w: %d trailing bytes", s.name, ErrBadState, d.Len())
	case !(clip >= minClipNorm && clip <= maxClipNorm):
		return fmt.Errorf("strategy %s: restore: %w: clip norm %v", s.name, ErrBadState, clip)
	case !s.adaptive && clip != s.p.clip:
		return fmt.Errorf("strategy %s: restore: %w: clip norm %v, configured %v", s.name, ErrBadState, clip, s.p.clip)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.step, s.clip, s.report = step, clip, nil
	s.gen++
	return nil
}

// gaussian draws standard normal values from ChaCha8 keyed by
// SHA-256(domain, seed, round, purpose): the same key gives the same
// values on every run, different rounds and purposes independent ones.
// It uses the Box–Muller transform on 53-bit uniforms, written out here
// rather than rand.NormFloat64 so that the values do not depend on the
// standard library's choice of algorithm. They do depend on math.Log,
// math.Sqrt and math.Sincos, which are pure Go except for math.Log on
// amd64 and s390x: bit-identical across machines of one architecture.
type gaussian struct {
	src   *rand.ChaCha8
	spare float64
	have  bool
}

func newGaussian(seed, round uint64, purpose string) *gaussian {
	h := sha256.New()
	h.Write([]byte("fdxkafka/dpfedavg/noise/v1\x00"))
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	binary.LittleEndian.PutUint64(b[8:], round)
	h.Write(b[:])
	h.Write([]byte(purpose))
	var key [32]byte
	copy(key[:], h.Sum(nil))
	return &gaussian{src: rand.NewChaCha8(key)}
}

func (g *gaussian) next() float64 {
	if g.have {
		g.have = false
		return g.spare
	}
	u1 := float64(g.src.Uint64()>>11+1) * 0x1p-53 // (0, 1]: log is finite
	u2 := float64(g.src.Uint64()>>11) * 0x1p-53   // [0, 1)
	r := math.Sqrt(-2 * math.Log(u1))
	sin, cos := math.Sincos(2 * math.Pi * u2)
	g.spare, g.have = float64(r*sin), true
	return float64(r * cos)
}
