package strategy

import (
	"math/rand/v2"
	"testing"
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
