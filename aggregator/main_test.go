package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--minclients", "0"}, "min clients 0"},
		{[]string{"--numrounds", "0"}, "rounds 0"},
		{[]string{"--model", "resnet"}, "model \"resnet\""},
		{[]string{"--model", "cnn", "--clients", "3", "--minclients", "3"}, "Go clients do not train it"},
		{[]string{"--partition", "weird"}, "partition:"},
		{[]string{"--strategy", "fedfoo"}, "strategy:"},
		{[]string{"--job", "a b"}, "job:"},
		{[]string{"--grpc", "--embedded"}, "does not go with --grpc"},
		{[]string{"--on-short", "maybe"}, "--on-short"},
		{[]string{"--clients", "2", "--minclients", "3"}, "below --minclients"},
		{[]string{"--kafka-config", "/nonexistent/file"}, "kafka properties"},
		{[]string{"--lr", "-1"}, "training options"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--broker", ""}, "no brokers"},
		{[]string{"--client-list", "/nonexistent"}, "--client-list"},
		{[]string{"--tls-cert", "x"}, "go together"},
		{[]string{"--tls-client-ca", "x"}, "add --grpc"},
		{[]string{"--model-key", "/nonexistent"}, "--model-key"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
		// A bad command line exits 2, as Go's flag package does; a file
		// that cannot be read is a failure (1).
		wantCode := cli.ExitUsage
		if strings.Contains(tc.want, "kafka properties") || tc.want == "--client-list" || tc.want == "--model-key" {
			wantCode = cli.ExitFailure
		}
		if code := cli.Code("aggregator", err, t.Context(), io.Discard); code != wantCode {
			t.Errorf("parseFlags(%q): exit code %d, want %d", tc.args, code, wantCode)
		}
	}
	c, err := parseFlags([]string{"--broker", "b:1", "--minclients", "4", "--numrounds", "2", "--grpc"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	spec := c.job.Spec()
	if c.channel.Listen != "b:1" || c.channel.Transport != job.GRPC || spec.Rounds.MinClients != 4 || spec.Rounds.NumRounds != 2 || spec.Data.Partition.NumPartitions != 4 {
		t.Errorf("parsed %+v %+v", spec, c.channel)
	}
	list := filepath.Join(t.TempDir(), "clients")
	if err := os.WriteFile(list, []byte("# ids\n0\n 1 \n\nalice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = parseFlags([]string{"--client-list", list}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if allowed := c.job.Spec().Security.Allowed; len(allowed) != 3 || !allowed["0"] || !allowed["1"] || !allowed["alice"] {
		t.Errorf("client list parsed as %v", allowed)
	}
}

// -h prints the grouped synopsis and is not an error (exit 0).
func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := parseFlags([]string{"-h"}, &out)
	if code := cli.Code("aggregator", err, t.Context(), io.Discard); code != cli.ExitOK {
		t.Errorf("-h: exit code %d (err %v), want 0", code, err)
	}
	for _, want := range []string{"usage: aggregator", "Channel:", "Rounds:", "--minclients", "--grpc"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, out.String())
		}
	}
}

// The rejected: summary lists reasons in one fixed order.
func TestSummaryOrder(t *testing.T) {
	res := &job.Result{Result: &coordinator.Result{Rejected: map[string]int64{"wrong_shape": 2, "undecodable": 1, "duplicate": 3}}}
	var a, b strings.Builder
	printSummary(&a, res)
	printSummary(&b, res)
	if !strings.Contains(a.String(), "rejected: undecodable=1 duplicate=3 wrong_shape=2") || a.String() != b.String() {
		t.Errorf("summary:\n%s", a.String())
	}
}
