package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// The committed evaluations/README.md must be exactly what the generator
// makes of the committed results: a table edited by hand, or a result
// refreshed without regenerating, fails here.
func TestCommittedREADMEIsGenerated(t *testing.T) {
	old, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Generate(old, os.DirFS(".."))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, got) {
		ol, gl := strings.Split(string(old), "\n"), strings.Split(string(got), "\n")
		for i := 0; i < min(len(ol), len(gl)); i++ {
			if ol[i] != gl[i] {
				t.Fatalf("evaluations/README.md is out of date (run go run ./evaluations/report); first difference at line %d:\ncommitted: %q\ngenerated: %q", i+1, ol[i], gl[i])
			}
		}
		t.Fatalf("evaluations/README.md is out of date (run go run ./evaluations/report): %d lines committed, %d generated", len(ol), len(gl))
	}
}

const stressJSON = `{"setup": {"clients": 2, "http_clients": 1, "local_clients": 1, "rounds": 2, "minclients": 2,
 "invocation": "job", "model": "logreg", "dataset": "mnist", "partition": "iid", "partitions": 2, "broker": "embedded"},
 "started_at": "2026-01-02T03:04:05Z", "wall_ms": 1500,
 "channels": [
  {"channel": "kafka", "messages": 15, "model_downloads": 4, "aggregator": {"bytes_sent": 1000, "bytes_received": 5000},
   "rounds_ms": 700, "final_accuracy": 0.5, "rounds": [{"round": 1, "duration_ms": 400, "accuracy": 0.4}, {"round": 2, "duration_ms": 300, "accuracy": 0.5}]},
  {"channel": "grpc", "messages": 20, "model_downloads": 4, "aggregator": {"bytes_sent": 4000, "bytes_received": 5000},
   "rounds_ms": 200, "final_accuracy": 0.5, "rounds": [{"round": 1, "duration_ms": 100, "accuracy": 0.4}, {"round": 2, "duration_ms": 100, "accuracy": 0.5}]}]}`

const byzantineJSON = `{"command": "go run ./evaluations/strategies -experiment byzantine", "options": {"clients": 5},
 "runs": [{"name": "clean", "accuracy": [0.5, 0.9], "final_accuracy": 0.9},
          {"name": "attacked", "accuracy": [0.1, 0.2], "final_accuracy": 0.2, "rejected": {"norm_bound": 3}}]}`

func TestRegionsAreReplacedFromTheirJSON(t *testing.T) {
	fsys := fstest.MapFS{
		"results/stress.json":       {Data: []byte(stressJSON)},
		"results/strat/byzan.json":  {Data: []byte(byzantineJSON)},
		"results/other/thing.json":  {Data: []byte(`{"command": "go run ./evaluations/thing", "x": 1}`)},
		"results/other/notes.md":    {Data: []byte("not a result")},
		"results/other/picture.png": {Data: []byte{0x89}},
	}
	readme := "# Title\n\nProse stays.\n\n<!-- report: results/stress.json -->\n| stale | table |\n<!-- end report -->\n\nMore prose.\n\n" +
		"<!-- report: results/strat/byzan.json -->\n<!-- end report -->\n\n<!-- report: unlisted -->\nold\n<!-- end report -->\n"
	got, err := Generate([]byte(readme), fsys)
	if err != nil {
		t.Fatal(err)
	}
	s := string(got)
	for _, want := range []string{
		"# Title\n\nProse stays.\n\n<!-- report: results/stress.json -->\n",
		"| kafka | 15 | 4 | 1.0 kB | 5.0 kB |",
		"| grpc | 20 | 4 | 4.0 kB | 5.0 kB |",
		"Aggregator egress as a multiple of Kafka's: grpc 4.0×.",
		"Run started 2026-01-02 03:04 UTC, 1.5 s wall time.",
		"Source: [results/stress.json](results/stress.json).",
		"\nMore prose.\n",
		"| attacked | 2 | 0.2000 | -70.00 pt | norm_bound 3 |",
		"#### results/other/thing.json\n\nNo table is defined for this kind of result.\nProduced by `go run ./evaluations/thing`.",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	for _, gone := range []string{"| stale | table |", "\nold\n", "notes.md", "picture.png"} {
		if strings.Contains(s, gone) {
			t.Errorf("output still has %q:\n%s", gone, s)
		}
	}
	// Reports older than the round-time breakdown have no timing table
	// rather than one of zeros.
	if strings.Contains(s, "ratio to grpc") {
		t.Errorf("a timing table from a report without round_mean_ms:\n%s", s)
	}
	again, err := Generate(got, fsys)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, got) {
		t.Errorf("a second pass changed the output:\n%s", again)
	}
}

func TestEveryResultNeedsARegion(t *testing.T) {
	fsys := fstest.MapFS{
		"results/stress.json": {Data: []byte(stressJSON)},
		"results/new.json":    {Data: []byte(byzantineJSON)},
	}
	_, err := Generate([]byte("<!-- report: results/stress.json -->\n<!-- end report -->\n"), fsys)
	if err == nil || !strings.Contains(err.Error(), "results/new.json") {
		t.Fatalf("err = %v, want one naming results/new.json", err)
	}
}

func TestBadInputIsAnError(t *testing.T) {
	for _, c := range []struct {
		name, readme, file, data, want string
	}{
		{"malformed JSON", "<!-- report: results/a.json -->\n<!-- end report -->\n", "results/a.json", `{"setup": `, "results/a.json"},
		{"wrong shape", "<!-- report: results/a.json -->\n<!-- end report -->\n", "results/a.json", `{"setup": {}, "channels": "no"}`, "results/a.json"},
		{"no channels", "<!-- report: results/a.json -->\n<!-- end report -->\n", "results/a.json", `{"setup": {}, "channels": []}`, "no channels"},
		{"run without accuracy", "<!-- report: results/a.json -->\n<!-- end report -->\n", "results/a.json",
			`{"command": "go run ./evaluations/strategies -experiment dp", "runs": [{"name": "x"}]}`, `"x"`},
		{"missing file", "<!-- report: results/b.json -->\n<!-- end report -->\n<!-- report: unlisted -->\n<!-- end report -->\n", "results/a.json", byzantineJSON, "results/b.json"},
		{"unclosed region", "<!-- report: results/a.json -->\ntext\n", "results/a.json", byzantineJSON, "no \"<!-- end report -->\""},
		{"nested region", "<!-- report: results/a.json -->\n<!-- report: unlisted -->\n<!-- end report -->\n", "results/a.json", byzantineJSON, "not closed"},
		{"two regions for one file", "<!-- report: results/a.json -->\n<!-- end report -->\n<!-- report: results/a.json -->\n<!-- end report -->\n", "results/a.json", byzantineJSON, "second region"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Generate([]byte(c.readme), fstest.MapFS{c.file: {Data: []byte(c.data)}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}

// The command rewrites a stale README and then reports it up to date;
// -check fails on a stale one without writing.
func TestCommandWritesAndChecks(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "results"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results", "s.json"), []byte(stressJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	readme := filepath.Join(dir, "README.md")
	stale := []byte("<!-- report: results/s.json -->\nstale\n<!-- end report -->\n")
	if err := os.WriteFile(readme, stale, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-readme", readme, "-check"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "out of date") {
		t.Fatalf("-check on a stale README: err = %v", err)
	}
	if b, _ := os.ReadFile(readme); !bytes.Equal(b, stale) {
		t.Fatalf("-check wrote the README:\n%s", b)
	}
	if err := run(context.Background(), []string{"-readme", readme}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-readme", readme, "-check"}, &out, &errOut); err != nil {
		t.Fatalf("-check after regenerating: %v", err)
	}
	if b, _ := os.ReadFile(readme); !strings.Contains(string(b), "| kafka | 15 |") {
		t.Fatalf("README not regenerated:\n%s", b)
	}
}
