package dataset

import (
	"math"
	"math/bits"
	"math/rand/v2"
)

// Streams select independent PCG sequences for the different consumers of a
// seed, so that, say, the IID and the Dirichlet partition of the same seed do
// not start from the same random numbers.
const (
	streamSynthetic uint64 = 0x5d1f_0a3e_57a7_1c01
	streamIID       uint64 = 0x5d1f_0a3e_57a7_1c02
	streamShards    uint64 = 0x5d1f_0a3e_57a7_1c03
	streamDirichlet uint64 = 0x5d1f_0a3e_57a7_1c04
)

// rng is the package's only source of randomness. Every client of a
// federation recomputes the same partition independently, possibly from
// binaries built by different Go releases on different architectures, so the
// sequence must be a pure function of the seed. PCG-DXSM is a specified
// algorithm, but the derived *rand.Rand helpers (IntN, Shuffle, NormFloat64)
// carry no such promise, so the few derived draws needed here are implemented
// on top of the raw 64-bit outputs.
type rng struct {
	src *rand.PCG
}

func newRNG(seed, stream uint64) *rng {
	return &rng{src: rand.NewPCG(seed, stream)}
}

func (r *rng) uint64() uint64 { return r.src.Uint64() }

// intN returns a uniform integer in [0, n) without modulo bias (Lemire,
// "Fast random integer generation in an interval", 2019). n must be positive.
func (r *rng) intN(n int) int {
	bound := uint64(n)
	hi, lo := bits.Mul64(r.src.Uint64(), bound)
	if lo < bound {
		threshold := -bound % bound
		for lo < threshold {
			hi, lo = bits.Mul64(r.src.Uint64(), bound)
		}
	}
	return int(hi)
}

// shuffle permutes s uniformly at random (Fisher-Yates).
func shuffle[T any](r *rng, s []T) {
	for i := len(s) - 1; i > 0; i-- {
		j := r.intN(i + 1)
		s[i], s[j] = s[j], s[i]
	}
}

// float64Open returns a uniform float64 in the open interval (0, 1), so that
// its logarithm is always finite.
func (r *rng) float64Open() float64 {
	return (float64(r.src.Uint64()>>11) + 0.5) * 0x1p-53
}

// normal returns a standard normal variate (Marsaglia's polar method).
//
// The explicit float64 conversions here and in logGamma forbid the compiler
// from fusing a multiply and an add into one FMA instruction, which it may do
// on arm64 but not on amd64; without them the two would round differently.
func (r *rng) normal() float64 {
	for {
		u := 2*r.float64Open() - 1 // Scaling by 2 is exact, fused or not.
		v := 2*r.float64Open() - 1
		s := float64(u*u) + float64(v*v)
		if s > 0 && s < 1 {
			return u * math.Sqrt(-2*math.Log(s)/s)
		}
	}
}

// logGamma returns log X for X ~ Gamma(shape, 1), shape >= 1, by the method
// of Marsaglia and Tsang ("A simple method for generating gamma variables",
// 2000). It returns the logarithm because callers normalise in log space; see
// dirichletWeights for shapes below 1.
func (r *rng) logGamma(shape float64) float64 {
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := r.normal()
		v := 1 + float64(c*x)
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := r.float64Open()
		x2 := float64(x * x)
		if u < 1-float64(0.0331*float64(x2*x2)) {
			return math.Log(d) + math.Log(v)
		}
		if math.Log(u) < float64(0.5*x2)+float64(d*(1-v+math.Log(v))) {
			return math.Log(d) + math.Log(v)
		}
	}
}
