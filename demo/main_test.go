package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

// The command lines the demo's clients could not finish are usage errors,
// refused before anything starts.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--model", "cnn", "--clients", "3", "--minclients", "3"}, "Go clients do not train it"},
		{[]string{"--clients", "2", "--minclients", "3"}, "below --minclients"},
		{[]string{"--clients", "2", "--minclients", "2", "--mode", "async", "--buffer-size", "3"}, "below --buffer-size"},
		{[]string{"--clients", "-1"}, "want 1 or more"},
		{[]string{"--role", "leader"}, "run the aggregator binary"},
		{[]string{"--grpc", "--embedded"}, "does not go with --grpc"},
		{[]string{"--minclients", "0"}, "min clients 0"},
	} {
		err := run(t.Context(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("demo %q = %v, want an error containing %q", tc.args, err, tc.want)
		}
		if code := cli.Code("demo", err, t.Context(), io.Discard); code != cli.ExitUsage {
			t.Errorf("demo %q: exit code %d, want %d", tc.args, code, cli.ExitUsage)
		}
	}
}

// The clients default to as many as a round or a buffer needs, and are the
// population rounds sample from unless the flags name one.
func TestClientsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		clients              int
		rounds               job.RoundsSpec
		population           int
		wantClients, wantPop int
	}{
		{"minclients", 0, job.RoundsSpec{MinClients: 3}, 0, 3, 3},
		{"buffer size", 0, job.RoundsSpec{MinClients: 3, BufferSize: 5}, 0, 5, 5},
		{"given", 8, job.RoundsSpec{MinClients: 3}, 0, 8, 8},
		{"population given", 8, job.RoundsSpec{MinClients: 3}, 20, 8, 20},
	} {
		d := &demo{clients: tc.clients}
		spec := job.Spec{Rounds: tc.rounds, Sampling: job.SamplingSpec{MinAvailableClients: tc.population}}
		if err := d.check(&spec, ""); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d.clients != tc.wantClients || spec.Sampling.MinAvailableClients != tc.wantPop {
			t.Errorf("%s: %d clients, population %d; want %d, %d", tc.name, d.clients, spec.Sampling.MinAvailableClients, tc.wantClients, tc.wantPop)
		}
	}
}

// TestGRPC runs the demo over the gRPC channel: its clients dial gRPC and
// finish the job.
func TestGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	err := run(ctx, []string{"--grpc", "--broker", "127.0.0.1:0", "--clients", "2", "--minclients", "2", "--numrounds", "2",
		"--dataset", "synthetic", "--max-examples", "50", "--eval-examples", "100", "--log-level", "error"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, `FDxKafka job "mnist" over grpc: 2 rounds`) || !strings.Contains(s, "rejected: none") {
		t.Errorf("summary:\n%s", s)
	}
}
