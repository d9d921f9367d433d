package strategy

import (
	"math/rand/v2"
	"testing"
	"time"
)

// sizes2NN are the tensors of the FedAvg paper's MNIST 2NN (784-200-200-10):
// 199,210 parameters.
var sizes2NN = []int{784 * 200, 200, 200 * 200, 200, 200 * 10, 10}

const benchClients = 100

func benchSetup(b *testing.B, clients int) ([][]float32, []Update) {
	b.Helper()
	rng := rand.New(rand.NewPCG(99, 100))
	return randomParams(rng, sizes2NN, 0, 0.05), randomUpdates(rng, clients, sizes2NN)
}

// BenchmarkFedAvgAdd measures one Add of a 2NN update into a round that
// receives 100 clients in all.
func BenchmarkFedAvgAdd(b *testing.B) {
	global, ups := benchSetup(b, benchClients)
	s := mustNew(b, Config{Name: "fedavg"})
	params := sum(sizes2NN)
	b.SetBytes(int64(4 * params))
	b.ReportAllocs()
	var r Round
	for i := 0; i < b.N; i++ {
		if i%benchClients == 0 {
			b.StopTimer()
			var err error
			if r, err = s.Begin(global); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if err := r.Add(ups[i%benchClients]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(params), "ns/param")
}

// BenchmarkRound measures a whole round of each strategy on the 2NN: Begin,
// the Adds, Finish. FedAvg and FedAdam take 100 clients; the robust rules,
// which hold every update (and Krum, O(n² × model)), take 20.
func BenchmarkRound(b *testing.B) {
	for _, bc := range []struct {
		cfg     Config
		clients int
	}{
		{Config{Name: "fedavg"}, benchClients},
		{Config{Name: "fedadam"}, benchClients},
		{Config{Name: "median"}, 20},
		{Config{Name: "trimmedmean"}, 20},
		{Config{Name: "krum", ByzantineF: 4}, 20},
	} {
		b.Run(bc.cfg.Name, func(b *testing.B) {
			global, ups := benchSetup(b, bc.clients)
			s := mustNew(b, bc.cfg)
			b.ReportAllocs()
			for b.Loop() {
				r, err := s.Begin(global)
				if err != nil {
					b.Fatal(err)
				}
				for _, u := range ups {
					if err := r.Add(u); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := r.Finish(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAccumulatorMean measures the final division and rounding of a
// 2NN-sized accumulator.
func BenchmarkAccumulatorMean(b *testing.B) {
	_, ups := benchSetup(b, 10)
	a := mustAccumulator(b, sizes2NN)
	for _, u := range ups {
		if err := a.Add(u.NumExamples, u.Params); err != nil {
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
// with the two yardsticks of issue 14, over the same update in the same run:
// a plain inexact float64 axpy (y[i] += w·x[i]) and a copy. SetBytes counts
// the float32 input, so MB/s compare directly; bytes/param is the memory the
// sum keeps per coordinate.
func BenchmarkFold(b *testing.B) {
	_, ups := benchSetup(b, 1)
	u := ups[0]
	params := sum(sizes2NN)
	flat := make([]float32, 0, params)
	for _, xs := range u.Params {
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
			if err := a.Add(u.NumExamples, u.Params); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(params), "ns/param")
		b.ReportMetric(float64(a.memBytes())/float64(params), "bytes/param")
	})
	b.Run("axpy", func(b *testing.B) {
		y := make([]float64, params)
		w := float64(u.NumExamples)
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
		w := float64(u.NumExamples)
		var fold, plain time.Duration
		for i := 0; b.Loop(); i++ {
			if i%benchClients == 0 {
				a.Reset()
			}
			t0 := time.Now()
			if err := a.Add(u.NumExamples, u.Params); err != nil {
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
