// Package privacy accounts for the privacy loss of differentially private
// federated averaging (DP-FedAvg): the Rényi differential privacy (RDP) of
// the sampled Gaussian mechanism, composed over rounds and converted to an
// (ε, δ) guarantee.
//
// One round of DP-FedAvg samples each client with probability q, clips
// every sampled client's update to L2 norm S and adds N(0, (z·S)²) noise to
// their sum: the sampled Gaussian mechanism with noise multiplier z, whose
// RDP does not depend on S. The guarantee is per client (user-level), since
// a client's whole update is what the clipping bounds.
//
// References:
//   - Mironov, "Rényi Differential Privacy", CSF 2017: RDP, its composition
//     (orders add up over rounds) and the conversion to (ε, δ) used here,
//     ε = RDP(α) + log(1/δ)/(α − 1), minimized over the orders α.
//   - Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled
//     Gaussian Mechanism", 2019, §3.3: the exact RDP at integer orders.
//   - Abadi et al., "Deep Learning with Differential Privacy", CCS 2016: the
//     moments accountant this generalizes.
//
// The conversion is the standard one (as in TF Privacy's and Opacus's
// original RDP accountants); Balle et al. 2020 give a slightly tighter one.
// Both treat sampling as Poisson sampling of each client independently with
// probability q; a fixed-size sample without replacement is a different
// mechanism whose bound this does not claim.
package privacy

import (
	"errors"
	"fmt"
	"math"
)

// ErrParams is wrapped by every error a bad argument causes.
var ErrParams = errors.New("invalid privacy parameters")

// DefaultOrders are the RDP orders Epsilon searches when q < 1: every
// integer from 2 to 64, then sparser up to 1024, enough for noise
// multipliers from about 0.5 (large orders) to 50 (small ones).
func DefaultOrders() []float64 {
	orders := make([]float64, 0, 72)
	for a := 2; a <= 64; a++ {
		orders = append(orders, float64(a))
	}
	return append(orders, 80, 96, 128, 160, 192, 256, 384, 512, 1024)
}

// maxOrder bounds the integer orders the binomial expansion is evaluated
// at: it costs O(α) terms per order.
const maxOrder = 1 << 16

func checkMechanism(q, z float64) error {
	if !(q > 0 && q <= 1) {
		return fmt.Errorf("%w: sampling rate %v outside (0, 1]", ErrParams, q)
	}
	if !(z > 0) || math.IsInf(z, 0) {
		return fmt.Errorf("%w: noise multiplier %v must be positive and finite", ErrParams, z)
	}
	return nil
}

// SampledGaussianRDP returns the RDP at order alpha of one application of
// the sampled Gaussian mechanism with sampling rate q and noise multiplier
// z (noise standard deviation over L2 sensitivity).
//
// For q = 1 it is the Gaussian mechanism's α/(2z²), for every real α > 1.
// For q < 1, alpha must be an integer ≥ 2, where the RDP is exactly
// log(A_α)/(α − 1) with (Mironov et al. 2019, §3.3)
//
//	A_α = Σ_{k=0..α} C(α,k) (1−q)^(α−k) q^k exp((k² − k)/(2z²)),
//
// summed in log space so that large orders and small z do not overflow.
func SampledGaussianRDP(q, z, alpha float64) (float64, error) {
	if err := checkMechanism(q, z); err != nil {
		return 0, err
	}
	if !(alpha > 1) || math.IsInf(alpha, 0) {
		return 0, fmt.Errorf("%w: order %v must be finite and above 1", ErrParams, alpha)
	}
	if q == 1 {
		return alpha / (2 * z * z), nil
	}
	if alpha != math.Trunc(alpha) || alpha > maxOrder {
		return 0, fmt.Errorf("%w: order %v: for q < 1 only integer orders up to %d are supported", ErrParams, alpha, maxOrder)
	}
	return logA(q, z, int(alpha)) / (alpha - 1), nil
}

// logA returns log(A_α) for integer α ≥ 2 and q in (0, 1).
func logA(q, z float64, alpha int) float64 {
	lq, l1q := math.Log(q), math.Log1p(-q)
	a := float64(alpha)
	lgA, _ := math.Lgamma(a + 1)
	terms := make([]float64, alpha+1)
	hi := math.Inf(-1)
	for k := range terms {
		kf := float64(k)
		lgK, _ := math.Lgamma(kf + 1)
		lgR, _ := math.Lgamma(a - kf + 1)
		t := lgA - lgK - lgR + (a-kf)*l1q + kf*lq + (kf*kf-kf)/(2*z*z)
		terms[k] = t
		hi = max(hi, t)
	}
	var s float64
	for _, t := range terms {
		s += math.Exp(t - hi)
	}
	return hi + math.Log(s)
}

// EpsilonFromRDP converts the composed RDP values rdp[i] at orders[i] to
// the smallest ε for which they imply (ε, δ)-DP by Mironov's conversion
// ε = rdp + log(1/δ)/(α − 1), and returns the order that achieves it.
func EpsilonFromRDP(orders, rdp []float64, delta float64) (eps, order float64, err error) {
	if len(orders) == 0 || len(orders) != len(rdp) {
		return 0, 0, fmt.Errorf("%w: %d orders for %d RDP values", ErrParams, len(orders), len(rdp))
	}
	if !(delta > 0 && delta < 1) {
		return 0, 0, fmt.Errorf("%w: delta %v outside (0, 1)", ErrParams, delta)
	}
	l := -math.Log(delta)
	eps = math.Inf(1)
	for i, a := range orders {
		if !(a > 1) || math.IsNaN(rdp[i]) || rdp[i] < 0 {
			return 0, 0, fmt.Errorf("%w: order %v with RDP %v", ErrParams, a, rdp[i])
		}
		if e := rdp[i] + l/(a-1); e < eps {
			eps, order = e, a
		}
	}
	return eps, order, nil
}

// EpsilonFromRDPTight is EpsilonFromRDP with the tighter conversion of
// Balle et al., "Hypothesis Testing Interpretations and Renyi Differential
// Privacy", AISTATS 2020, Theorem 21 (used by current Opacus and TF Privacy):
//
//	ε = rdp + log((α − 1)/α) − (log δ + log α)/(α − 1).
//
// It is here to compare with those tools' published figures; the strategies
// report the standard conversion, which is never smaller.
func EpsilonFromRDPTight(orders, rdp []float64, delta float64) (eps, order float64, err error) {
	if len(orders) == 0 || len(orders) != len(rdp) {
		return 0, 0, fmt.Errorf("%w: %d orders for %d RDP values", ErrParams, len(orders), len(rdp))
	}
	if !(delta > 0 && delta < 1) {
		return 0, 0, fmt.Errorf("%w: delta %v outside (0, 1)", ErrParams, delta)
	}
	eps = math.Inf(1)
	for i, a := range orders {
		if !(a > 1) || math.IsNaN(rdp[i]) || rdp[i] < 0 {
			return 0, 0, fmt.Errorf("%w: order %v with RDP %v", ErrParams, a, rdp[i])
		}
		e := rdp[i] + math.Log((a-1)/a) - (math.Log(delta)+math.Log(a))/(a-1)
		if e < eps {
			eps, order = max(e, 0), a
		}
	}
	return eps, order, nil
}

// Epsilon returns the ε for which steps rounds of the sampled Gaussian
// mechanism (rate q, noise multiplier z) are (ε, δ)-DP, and the RDP order
// achieving it. Zero steps cost nothing: ε = 0.
//
// For q = 1 the order is optimized over all reals in closed form: with
// c = steps/(2z²) and L = log(1/δ), ε(α) = cα + L/(α − 1) is smallest at
// α = 1 + √(L/c), where ε = c + 2√(cL). For q < 1 it searches
// DefaultOrders.
func Epsilon(q, z float64, steps int, delta float64) (eps, order float64, err error) {
	if err := checkMechanism(q, z); err != nil {
		return 0, 0, err
	}
	if steps < 0 {
		return 0, 0, fmt.Errorf("%w: %d steps", ErrParams, steps)
	}
	if !(delta > 0 && delta < 1) {
		return 0, 0, fmt.Errorf("%w: delta %v outside (0, 1)", ErrParams, delta)
	}
	if steps == 0 {
		return 0, math.Inf(1), nil
	}
	if q == 1 {
		c := float64(steps) / (2 * z * z)
		l := -math.Log(delta)
		return c + 2*math.Sqrt(c*l), 1 + math.Sqrt(l/c), nil
	}
	return EpsilonAtOrders(q, z, steps, delta, DefaultOrders())
}

// EpsilonAtOrders is Epsilon with the orders searched given (integers ≥ 2
// unless q = 1), for comparison with accountants that use other orders.
func EpsilonAtOrders(q, z float64, steps int, delta float64, orders []float64) (eps, order float64, err error) {
	if steps < 0 {
		return 0, 0, fmt.Errorf("%w: %d steps", ErrParams, steps)
	}
	rdp := make([]float64, len(orders))
	for i, a := range orders {
		r, err := SampledGaussianRDP(q, z, a)
		if err != nil {
			return 0, 0, err
		}
		rdp[i] = float64(steps) * r
	}
	return EpsilonFromRDP(orders, rdp, delta)
}
