package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"100m": 100e6, "1g": 1e9, "10G": 10e9, "500k": 500e3, "2.5gbit": 2.5e9, "1000": 1000} {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
		if in == "1000" {
			continue
		}
		if back, _ := parseRate(rateName(got)); back != got {
			t.Errorf("rateName(%d) = %q does not parse back", got, rateName(got))
		}
	}
	for _, bad := range []string{"", "fast", "-1g", "0", "g"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) succeeded", bad)
		}
	}
}

// result builds a successful run of a cell with the given time to reach
// all devices and aggregator egress.
func result(ch string, n int, propMs float64, aggEgress int64) *Result {
	return &Result{Cell: cell{Model: "synthetic:10", Clients: n, LinkBps: 1e9, Channel: ch, Mode: modeLong},
		ModelBytes: 10e6, ModelsSent: 3, PropagationMs: propMs, AggEgressBytes: aggEgress,
		AggEgressPerModel: float64(aggEgress) / 30e6, Messages: 100, Command: "go run ./evaluations/netbench run -x"}
}

func TestRowsTakeMediansAndSkipFailedRuns(t *testing.T) {
	rs := []*Result{
		result(chGRPC, 100, 9000, 3e9), result(chGRPC, 100, 8000, 3e9), result(chGRPC, 100, 20000, 3e9),
		result(chKafka3, 100, 3000, 31e6), result(chKafka3, 100, 5000, 31e6), result(chKafka3, 100, 1, 31e6),
	}
	rs[5].Error = "aggregator: exit status 1"
	rws := rows(rs)
	if len(rws) != 2 {
		t.Fatalf("%d rows, want 2", len(rws))
	}
	g, k := rws[0], rws[1]
	if g.Channel != chGRPC || g.PropMs != 9000 || g.Runs != 3 {
		t.Errorf("grpc row: %+v, want median 9000 over 3 runs", g)
	}
	if k.Channel != chKafka3 || k.PropMs != 4000 || k.Runs != 2 || k.Failed != 1 {
		t.Errorf("kafka3 row: %+v, want median 4000 over 2 runs, 1 failed", k)
	}
	if math.Abs(k.VsGRPC-4000.0/9000) > 1e-12 {
		t.Errorf("kafka3 ÷ gRPC = %v, want %v", k.VsGRPC, 4000.0/9000)
	}
	if got := goals(rws); !strings.Contains(got, "0.44× (goal ≤ 0.5×): **met**") {
		t.Errorf("goals do not report the 10 MB / 100-client goal as met at 0.44×:\n%s", got)
	}
	rs[3].PropagationMs, rs[4].PropagationMs = 6000, 7000
	if got := goals(rows(rs)); !strings.Contains(got, "**not met**") {
		t.Errorf("goals report a 0.72× cell as met:\n%s", got)
	}
}

func TestRenderWritesTablesFromJSON(t *testing.T) {
	dir := t.TempDir()
	readme := filepath.Join(dir, "README.md")
	rs := []*Result{result(chGRPC, 10, 900, 3e8), result(chGRPC, 100, 9000, 3e9),
		result(chKafka1, 10, 1500, 31e6), result(chKafka1, 100, 6000, 31e6)}
	if err := writeResults(dir, readme, rs, false); err != nil {
		t.Fatal(err)
	}
	back, err := readResults(dir)
	if err != nil || len(back) != len(rs) {
		t.Fatalf("readResults: %d results, %v", len(back), err)
	}
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"sudo go run ./evaluations/netbench run -x",
		"| synthetic:10 (10 MB) | 100 | 1 Gbit/s | long | kafka1 |",
		"gRPC first at N = [10], Kafka first at N = [100]",
		"reach_synthetic10_1g_long.png",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("README lacks %q", want)
		}
	}
	if strings.Contains(md, "{{") {
		t.Errorf("README has an unfilled placeholder")
	}
	if _, err := os.Stat(filepath.Join(dir, "reach_synthetic10_1g_long.png")); err != nil {
		t.Errorf("no plot: %v", err)
	}
}
