package nbresult

import (
	"math"
	"slices"
	"testing"
)

func run(ch string, n int, propMs float64, rounds ...float64) *Result {
	r := &Result{Cell: Cell{Model: "synthetic:10", Clients: n, LinkBps: 1e9, Channel: ch, Mode: ModeLong},
		ModelBytes: 10e6, ModelsSent: 3, PropagationMs: propMs}
	for i, d := range rounds {
		r.PerRound = append(r.PerRound, RoundFig{Round: int64(i + 1), DurationMs: d})
	}
	return r
}

func TestRowsTotalIsTheMedianOfRoundSums(t *testing.T) {
	failed := run(GRPC, 10, 1)
	failed.Error = "boom"
	rws := Rows([]*Result{run(GRPC, 10, 5, 1, 2, 3), run(GRPC, 10, 5, 10, 10, 10), run(GRPC, 10, 5, 4, 4, 4), failed})
	if len(rws) != 1 || rws[0].TotalMs != 12 || rws[0].Runs != 3 || rws[0].Failed != 1 {
		t.Fatalf("rows %+v: want one row, total 12 ms (median of 6, 30, 12), 3 runs, 1 failed", rws[0])
	}
	if got := Rows([]*Result{run(GRPC, 10, 5)})[0].TotalMs; !math.IsNaN(got) {
		t.Errorf("a run without rounds: total %v, want NaN", got)
	}
}

func TestCrossoversCompareAtCommonN(t *testing.T) {
	rws := Rows([]*Result{
		run(GRPC, 10, 100), run(GRPC, 30, 300), run(GRPC, 100, 1000),
		run(Kafka3, 10, 200), run(Kafka3, 30, 250), run(Kafka3, 100, 1500), run(Kafka3, 300, 1),
	})
	cs := Crossovers(rws)
	if len(cs) != 1 || cs[0].Channel != Kafka3 {
		t.Fatalf("crossovers %+v: want one, for kafka3 (kafka1 was not measured)", cs)
	}
	if c := cs[0]; !slices.Equal(c.KafkaFirst, []int{30}) || !slices.Equal(c.GRPCFirst, []int{10, 100}) {
		t.Errorf("kafka first at %v, gRPC at %v; want [30] and [10 100] (N = 300 has no gRPC)", c.KafkaFirst, c.GRPCFirst)
	}
}
