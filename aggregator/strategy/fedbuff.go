package strategy

import (
	"errors"
	"fmt"
	"math"

	"github.com/fdxkafka/fdxkafka/aggregator/accumulator"
)

// ErrTooStale: an asynchronous update's base version lags the current one
// by more than the buffer's maximum staleness.
var ErrTooStale = errors.New("update too stale")

// StalenessWeight returns FedBuff's s(τ) = 1/(1 + τ)^a for staleness τ
// (current version − the version the client trained on) and exponent a ≥ 0.
// a = 0.5 is Nguyen et al.'s 1/√(1 + τ).
func StalenessWeight(staleness uint64, exponent float64) float64 {
	return math.Pow(1+float64(staleness), -exponent)
}

// BufferConfig parameterizes a Buffer. Zero fields take the defaults.
type BufferConfig struct {
	// Exponent is a in s(τ) = 1/(1 + τ)^a, ≥ 0; 0 means 0.5 (FedBuff's).
	// A negative value asks for a = 0, no staleness discount.
	Exponent float64
	// MaxStaleness is the largest τ accepted; 0 means no limit.
	MaxStaleness uint64
	// ServerLR is η_g, the server step applied to the buffer's mean; 0
	// means 1.
	ServerLR float64
	// Weighted weighs each delta by its example count as well; false
	// averages over the K updates as FedBuff does.
	Weighted bool
}

// Buffer is the aggregation step of FedBuff (Nguyen et al. 2022,
// "Federated Learning with Buffered Asynchronous Aggregation"): it folds
// client deltas as they arrive, each scaled by s(τ), and Apply steps the
// model by their mean,
//
//	w ← w + η_g · Σ_k c_k·s(τ_k)·Δ_k / Σ_k c_k,
//
// with c_k = 1 (FedBuff) or the example count (Weighted). Each scaled delta
// s(τ_k)·Δ_k is rounded to float32 once, from that update alone, and the
// sum is exact (accumulator.Accumulator), so the result depends only on the set of
// (delta, τ, count) folded, never on their order: the same updates give the
// same version bit for bit whichever channel delivered them first.
//
// Δ_k is relative to the model version the client trained on, which the
// caller knows (it keeps the recent versions, or clients send deltas). A
// Buffer is not safe for concurrent use.
type Buffer struct {
	cfg BufferConfig
	acc *accumulator.Accumulator
}

// NewBuffer returns an empty buffer for tensors of the given sizes.
func NewBuffer(sizes []int, cfg BufferConfig) (*Buffer, error) {
	switch {
	case cfg.Exponent == 0:
		cfg.Exponent = 0.5
	case cfg.Exponent < 0:
		cfg.Exponent = 0
	case math.IsNaN(cfg.Exponent) || math.IsInf(cfg.Exponent, 0):
		return nil, fmt.Errorf("fedbuff: staleness exponent %v must be finite", cfg.Exponent)
	}
	lr, err := positive("ServerLR", cfg.ServerLR, 1)
	if err != nil {
		return nil, fmt.Errorf("fedbuff: %w", err)
	}
	cfg.ServerLR = lr
	acc, err := accumulator.New(sizes)
	if err != nil {
		return nil, fmt.Errorf("fedbuff: %w", err)
	}
	return &Buffer{cfg: cfg, acc: acc}, nil
}

// Len returns the number of deltas folded since the last Apply.
func (b *Buffer) Len() int { return b.acc.Count() }

// Add folds one client's delta with staleness τ. It rejects τ above
// MaxStaleness (ErrTooStale), an example count outside [1, accumulator.MaxWeight],
// wrong shapes and non-finite values; a rejected delta leaves the buffer
// unchanged. delta is read, not retained.
func (b *Buffer) Add(numExamples int64, staleness uint64, delta [][]float32) error {
	if b.cfg.MaxStaleness > 0 && staleness > b.cfg.MaxStaleness {
		return fmt.Errorf("%w: staleness %d above %d", ErrTooStale, staleness, b.cfg.MaxStaleness)
	}
	if numExamples < 1 || numExamples > accumulator.MaxWeight {
		return fmt.Errorf("%w: %d outside [1, %d]", ErrNumExamples, numExamples, accumulator.MaxWeight)
	}
	if err := checkTerms(numExamples, delta); err != nil {
		return err
	}
	s := StalenessWeight(staleness, b.cfg.Exponent)
	scaled := make([][]float32, len(delta))
	for i, t := range delta {
		o := make([]float32, len(t))
		for j, x := range t {
			o[j] = float32(float64(float64(x) * s))
		}
		scaled[i] = o
	}
	w := int64(1)
	if b.cfg.Weighted {
		w = numExamples
	}
	return b.acc.Add(w, scaled)
}

// Apply returns global stepped by η_g times the mean of the folded deltas,
// and empties the buffer. It fails with ErrNoUpdates on an empty buffer
// and ErrShape if global's shapes differ; the buffer is then unchanged.
func (b *Buffer) Apply(global [][]float32) ([][]float32, error) {
	mean, err := b.acc.Mean64()
	if err != nil {
		return nil, fmt.Errorf("fedbuff: %w", err)
	}
	if len(global) != len(mean) {
		return nil, fmt.Errorf("fedbuff: %w: global has %d tensors, buffer %d", ErrShape, len(global), len(mean))
	}
	out := make([][]float32, len(global))
	for i, g := range global {
		if len(g) != len(mean[i]) {
			return nil, fmt.Errorf("fedbuff: %w: global tensor %d has %d elements, buffer %d", ErrShape, i, len(g), len(mean[i]))
		}
		o := make([]float32, len(g))
		for j, x := range g {
			o[j] = float32(float64(x) + float64(b.cfg.ServerLR*mean[i][j]))
			if math.IsInf(float64(o[j]), 0) {
				return nil, fmt.Errorf("fedbuff: %w: step overflows at tensor %d element %d", ErrNonFinite, i, j)
			}
		}
		out[i] = o
	}
	b.acc.Reset()
	return out, nil
}
