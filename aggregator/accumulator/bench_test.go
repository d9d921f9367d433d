package accumulator

import (
	"math/rand/v2"
	"testing"
	"time"
)

// sizes2NN are the tensors of the FedAvg paper's MNIST 2NN (784-200-200-10):
// 199,210 parameters.
var sizes2NN = []int{784 * 200, 200, 200 * 200, 200, 200 * 10, 10}

// benchClients is how many updates a round of the benchmarks folds before
// the accumulator starts afresh.
const benchClients = 100

type benchUpdate struct {
	weight int64
	params [][]float32
}

// benchUpdates returns n seeded 2NN-sized updates of 1 to 600 examples.
func benchUpdates(n int) []benchUpdate {
	rng := rand.New(rand.NewPCG(99, 100))
	ups := make([]benchUpdate, n)
	for i := range ups {
		p := make([][]float32, len(sizes2NN))
		for t, size := range sizes2NN {
			p[t] = make([]float32, size)
			for j := range p[t] {
				p[t][j] = float32(rng.NormFloat64() * 0.1)
			}
		}
		ups[i] = benchUpdate{weight: 1 + rng.Int64N(600), params: p}
	}
	return ups
}

// BenchmarkAccumulatorMean measures the final division and rounding of a
// 2NN-sized accumulator.
func BenchmarkAccumulatorMean(b *testing.B) {
	a := mustAccumulator(b, sizes2NN)
	for _, u := range benchUpdates(10) {
		if err := a.Add(u.weight, u.params); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Mean(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFold compares folding one 2NN update into the exact accumulator
// with two yardsticks, over the same update in the same run:
// a plain inexact float64 axpy (y[i] += w·x[i]) and a copy. SetBytes counts
// the float32 input, so MB/s compare directly; bytes/param is the memory the
// sum keeps per coordinate.
func BenchmarkFold(b *testing.B) {
	u := benchUpdates(1)[0]
	params := 0
	for _, n := range sizes2NN {
		params += n
	}
	flat := make([]float32, 0, params)
	for _, xs := range u.params {
		flat = append(flat, xs...)
	}
	b.Run("exact", func(b *testing.B) {
		a := mustAccumulator(b, sizes2NN)
		b.SetBytes(int64(4 * params))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if i%benchClients == 0 {
				b.StopTimer()
				a.Reset()
				b.StartTimer()
			}
			if err := a.Add(u.weight, u.params); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(params), "ns/param")
		b.ReportMetric(float64(a.memBytes())/float64(params), "bytes/param")
	})
	b.Run("axpy", func(b *testing.B) {
		y := make([]float64, params)
		w := float64(u.weight)
		b.SetBytes(int64(4 * params))
		for b.Loop() {
			axpy(y, w, flat)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(params), "ns/param")
		b.ReportMetric(8, "bytes/param")
	})
	// interleaved times one exact fold and one axpy alternately, so that
	// both see the same load on a shared machine: speed-vs-axpy is the
	// exact fold's speed as a fraction of the axpy's.
	b.Run("interleaved", func(b *testing.B) {
		a := mustAccumulator(b, sizes2NN)
		y := make([]float64, params)
		w := float64(u.weight)
		var fold, plain time.Duration
		for i := 0; b.Loop(); i++ {
			if i%benchClients == 0 {
				a.Reset()
			}
			t0 := time.Now()
			if err := a.Add(u.weight, u.params); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			axpy(y, w, flat)
			fold, plain = fold+t1.Sub(t0), plain+time.Since(t1)
		}
		b.ReportMetric(float64(plain)/float64(fold), "speed-vs-axpy")
	})
	b.Run("copy", func(b *testing.B) {
		y := make([]float32, params)
		b.SetBytes(int64(4 * params))
		for b.Loop() {
			copy(y, flat)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(params), "ns/param")
		b.ReportMetric(4, "bytes/param")
	})
}

// axpy is the inexact, order-dependent fold the exact one is measured
// against.
func axpy(y []float64, w float64, x []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += w * float64(v)
	}
}
