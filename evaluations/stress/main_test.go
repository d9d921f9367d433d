package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/evaluations/harness"
)

func TestDefaultsAreThePoCEvaluation(t *testing.T) {
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.Clients != 100 || c.Rounds != 5 || c.HTTPShare != 0.5 || c.Dataset != "mnist" || c.Model != "logreg" ||
		c.Invocation != harness.PerJob || c.Broker != "" || strings.Join(c.Channels, ",") != "kafka,grpc,grpc-durable" {
		t.Errorf("defaults %+v: want the PoC's 100 clients, 5 rounds, half functions, both channels (and durable gRPC), embedded broker", c)
	}
	if want := filepath.Join("evaluations", "results", "stress.json"); o.jsonPath != want {
		t.Errorf("JSON path %q, want %q", o.jsonPath, want)
	}
}

func TestSweepDefaultsYieldToFlags(t *testing.T) {
	o, err := parseFlags([]string{"-sweep", "10,100", "-rounds", "3", "-plots", "/tmp/x"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.Rounds != 3 {
		t.Errorf("rounds %d: the command line's 3 must win over the sweep default", c.Rounds)
	}
	if c.Dataset != "synthetic" || c.MaxExamples != 20 || c.Invocation != harness.PerRound || c.MaxInFlight != 64 || c.EvalExamples != 500 {
		t.Errorf("sweep config %+v: want lightweight defaults", c)
	}
	if o.jsonPath != filepath.Join("/tmp/x", "sweep.json") {
		t.Errorf("JSON path %q", o.jsonPath)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-clients", "x"}, {"extra"}, {"-sweep", "10,zero"}, {"-channels", "mqtt"}, {"-log-level", "loud"}} {
		var stderr bytes.Buffer
		if err := run(context.Background(), args, &bytes.Buffer{}, &stderr); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// TestRunWritesOutputs runs a tiny evaluation through the command.
func TestRunWritesOutputs(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"-clients", "2", "-rounds", "1", "-dataset", "synthetic", "-max-examples", "20", "-eval-examples", "100", "-channels", "grpc", "-overhead", "2", "-plots", dir}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "| grpc |") || !strings.Contains(stdout.String(), "Lightweight clients") {
		t.Errorf("stdout lacks the table or the lightweight note:\n%s", stdout.String())
	}
	for _, want := range []string{"| channel | round | ratio to grpc |", "Invocation overhead", "| kafka | 1 | 2 |"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	for _, f := range []string{"stress.json", harness.PlotRoundTime, harness.PlotPropagation, harness.PlotAccuracy} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}
