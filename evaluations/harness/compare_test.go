package harness

import (
	"strings"
	"testing"
)

func sweepOf(clients int, kafkaRound, grpcRound, kafkaThreads float64) *SweepReport {
	return &SweepReport{Runs: []*Report{{
		Setup: Setup{Clients: clients},
		Channels: []*ChannelReport{
			{Channel: "kafka", RoundMeanMs: kafkaRound, ThreadsPerClient: kafkaThreads, FinalModel: "k"},
			{Channel: "grpc", RoundMeanMs: grpcRound, FinalModel: "g"},
		},
	}}}
}

func TestCompareSweepsMedians(t *testing.T) {
	sizes, err := CompareSweeps(map[string][]*SweepReport{
		// The ratios of the old runs are 2, 3 and 10: median 3.
		"old": {sweepOf(10, 20, 10, 9), sweepOf(10, 30, 10, 11), sweepOf(10, 100, 10, 10)},
		"new": {sweepOf(10, 9, 10, 0.1), sweepOf(10, 10, 10, 0.2), sweepOf(10, 8, 10, 0.3)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 1 || sizes[0].Clients != 10 {
		t.Fatalf("sizes %+v, want one of 10 clients", sizes)
	}
	s := sizes[0]
	if s.Ratio["old"] != 3 || s.Ratio["new"] != 0.9 {
		t.Errorf("ratios %v, want old 3 and new 0.9", s.Ratio)
	}
	if k := s.Builds["old"]["kafka"]; k.RoundMs != 30 || k.ThreadsPerClient != 10 || len(k.FinalModelSHA256s) != 3 {
		t.Errorf("old kafka figures %+v, want the medians 30 ms and 10 threads of 3 runs", k)
	}
	var b strings.Builder
	WriteComparisonMarkdown(&b, &Comparison{Runs: 3, Rounds: 5, Broker: "embedded", Builds: map[string]string{"old": "A", "new": "B"}, Sizes: sizes})
	if !strings.Contains(b.String(), "| 10 | A | 3.00 |") || !strings.Contains(b.String(), "| 10 | B | 0.90 |") {
		t.Errorf("table lacks the ratios:\n%s", b.String())
	}
}

func TestCompareSweepsNeedsBothBuilds(t *testing.T) {
	_, err := CompareSweeps(map[string][]*SweepReport{
		"old": {sweepOf(10, 1, 1, 1), sweepOf(100, 1, 1, 1)},
		"new": {sweepOf(10, 1, 1, 1)},
	})
	if err == nil || !strings.Contains(err.Error(), "100 clients") {
		t.Errorf("a client count only one build measured: %v, want an error naming it", err)
	}
}
